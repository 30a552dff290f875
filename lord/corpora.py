"""Python code corpora for calibration and validation, and their tokenised windows.

Sources, all yielding records with the-stack-smol's schema (``content``, ``repository_name``, ``path``,
``size``, ``lang``):

* ``stdlib`` (offline default): the ``.py`` files of the CPython standard library of the running
  interpreter (or of the ``Lib`` folder given as ``data.stdlib_root``, to read the same files on another Python
  version), test suites and generated files excluded, split deterministically by hashing each
  file's relative path, so no file is in both splits;
* ``stdlib-tests``: CPython's own test suite (``Lib/test``), a second offline calibration corpus
  (``data.calibration_corpus=stdlib-tests``) that the stdlib validation split never contains;
* ``the-stack-smol`` (the paper's validation set): ``datasets.load_dataset(<source>, data_dir="data/python")``;
* ``the-stack`` (the paper's calibration set, gated): streamed with ``datasets``, minus any file whose
  content also occurs in the validation set;
* a user folder of ``.py`` files, or a ``.jsonl`` / ``.parquet`` file with a ``content`` column.

The paper's filters (§2.1): files shorter than ``min_chars`` (10,240) characters and files with fewer
than ``seq_len`` (1,024) tokens are dropped. By default a file gives one window, its first ``seq_len``
tokens; ``all_windows`` cuts every non-overlapping window instead.
"""

from __future__ import annotations

import hashlib
import logging
import json
import os
import platform
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lord.atomic import temp_file
from lord.errors import LordError
from lord.progress import progress_bar

log = logging.getLogger(__name__)

SPLITS = ("calibration", "validation")
_EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "turtledemo"}
# machine-generated modules: charmap codec tables (gencodec.py), the pydoc topic dump, sysconfig data
_GENERATED_PREFIXES = ("encodings/cp", "encodings/mac_", "encodings/iso8859_", "encodings/koi8_",
                       "encodings/hp_", "encodings/palmos", "encodings/ptcp", "encodings/tis_", "encodings/kz1048",
                       "pydoc_data/topics", "_sysconfigdata")


@dataclass
class Corpus:
    name: str
    split: str
    records: list[dict]
    meta: dict = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        """sha256 over the sorted (path, sha256(content)) pairs: identifies exactly which files are in it."""
        h = hashlib.sha256()
        for path, digest in sorted((r["path"], hashlib.sha256(r["content"].encode()).hexdigest())
                                   for r in self.records):
            h.update(f"{path}\0{digest}\n".encode())
        return h.hexdigest()

    def describe(self) -> dict:
        return {"name": self.name, "split": self.split, "n_files": len(self.records),
                "content_sha256": self.content_hash, **self.meta}


def _record(content: str, repo: str, path: str) -> dict:
    return {"content": content, "repository_name": repo, "path": path, "size": len(content), "lang": "Python"}


def split_of(relpath: str, validation_percent: int) -> str:
    """Deterministic split by hashing the relative path (stable across machines and Python versions)."""
    bucket = int(hashlib.sha256(relpath.encode()).hexdigest(), 16) % 100
    return "validation" if bucket < validation_percent else "calibration"


def _stdlib_base(root: str | None) -> Path:
    """The running interpreter's stdlib folder, or ``root`` (a CPython ``Lib`` folder, the one holding os.py)."""
    if root is None:
        return Path(sysconfig.get_paths()["stdlib"])
    base = Path(root).expanduser()
    if not (base / "os.py").is_file():
        raise LordError(f"data.stdlib_root={root!r} is not a CPython Lib folder (no os.py in it); point it at one, "
                        "e.g. <prefix>/lib/python3.11, or leave it null for the running interpreter's")
    return base


def _stdlib_meta(root: str | None) -> dict:
    """Where the files came from: the running interpreter's version, or the folder given."""
    return {"python_version": platform.python_version()} if root is None else {"stdlib_root": str(root)}


def stdlib_corpus(split: str, validation_percent: int = 50, root: str | None = None) -> Corpus:
    """The running interpreter's standard library (or the one in ``root``), minus test suites and generated
    files."""
    if split not in SPLITS:
        raise LordError(f"unknown split {split!r}; choose from: {', '.join(SPLITS)}")
    base = _stdlib_base(root)
    records = []
    for p in sorted(base.rglob("*.py")):
        rel = p.relative_to(base).as_posix()
        parts = set(rel.split("/")[:-1])
        if parts & _EXCLUDED_DIRS or p.name.startswith("test_") or rel.startswith(_GENERATED_PREFIXES):
            continue
        if split_of(rel, validation_percent) != split:
            continue
        try:
            records.append(_record(p.read_text(encoding="utf-8"), "cpython/Lib", rel))
        except (UnicodeDecodeError, OSError):
            continue
    return Corpus("stdlib", split, records, {**_stdlib_meta(root), "validation_percent": validation_percent})


def stdlib_tests_corpus(root: str | None = None) -> Corpus:
    """CPython's own test suite (``Lib/test``), which ``stdlib_corpus`` leaves out: a second offline corpus for
    calibration whose files the stdlib validation split never contains."""
    base = _stdlib_base(root) / "test"
    records = []
    for p in sorted(base.rglob("*.py")):
        rel = p.relative_to(base.parent).as_posix()
        if "__pycache__" in rel.split("/"):
            continue
        try:
            records.append(_record(p.read_text(encoding="utf-8"), "cpython/Lib", rel))
        except (UnicodeDecodeError, OSError):
            continue
    if not records:
        raise LordError(f"{base} holds no test suite (some Python builds leave Lib/test out); use "
                        "data.calibration_corpus=stdlib or data=folder with data.calibration_path")
    return Corpus("stdlib-tests", "calibration", records, _stdlib_meta(root))


def _jsonl_rows(p: Path) -> list[dict]:
    """Rows of a JSON-lines file, each an object with a string ``content``; a bad line is named."""
    rows = []
    with open(p, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise LordError(f"{p}:{n}: not valid JSON ({e.msg} at column {e.colno}); each line must be one "
                                "object with a 'content' string") from None
            if not isinstance(row, dict) or not isinstance(row.get("content"), str):
                raise LordError(f"{p}:{n}: each line must be an object with a 'content' string, got "
                                f"{type(row).__name__}{' without content' if isinstance(row, dict) else ''}")
            rows.append(row)
    if not rows:
        raise LordError(f"{p} has no rows; it needs one JSON object with a 'content' string per line")
    return rows


def _parquet_records(p: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as e:  # pyarrow raises several types for a damaged or foreign file
        raise LordError(f"{p} is not a readable Parquet file ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if "content" not in table.column_names:
        raise LordError(f"{p} has no 'content' column (columns: {', '.join(table.column_names)})")
    rows = table.to_pylist()
    for n, row in enumerate(rows):
        if not isinstance(row["content"], str):
            raise LordError(f"{p}: row {n}: 'content' must be a string, got {type(row['content']).__name__}")
    return [_record(r["content"], str(r.get("repository_name") or p.stem), str(r.get("path") or n))
            for n, r in enumerate(rows)]


def folder_corpus(path: str | os.PathLike, split: str = "validation") -> Corpus:
    """A user corpus: a folder of ``.py`` files, or a JSONL / Parquet file with a ``content`` column."""
    p = Path(path).expanduser()
    if not p.exists():
        raise LordError(f"corpus path {p} does not exist; point data.path at a folder of .py files or a "
                        ".jsonl/.parquet file with a 'content' column")
    if p.is_dir():
        files = sorted(p.rglob("*.py"))
        if not files:
            raise LordError(f"corpus folder {p} contains no .py files; point data.path at a folder of Python sources")
        records = [_record(f.read_text(encoding="utf-8", errors="replace"), p.name, f.relative_to(p).as_posix())
                   for f in files]
    elif p.is_file() and p.suffix in (".jsonl", ".json"):
        records = [_record(row["content"], str(row.get("repository_name", p.stem)), str(row.get("path", i)))
                   for i, row in enumerate(_jsonl_rows(p))]
    elif p.is_file() and p.suffix == ".parquet":
        records = _parquet_records(p)
    else:
        raise LordError(f"corpus path {p} is neither a folder of .py files nor a .jsonl/.parquet file")
    return Corpus(f"folder:{p}", split, records, {"source": str(p)})


def _hf_records(ds, limit: int | None, exclude: set[str] | None = None, min_chars: int = 0) -> list[dict]:
    out = []
    for row in ds:
        content = row["content"]
        if len(content) < min_chars:
            continue
        if exclude and hashlib.sha256(content.encode()).hexdigest() in exclude:
            continue
        out.append(_record(content, str(row.get("repository_name", "")), str(row.get("path", len(out)))))
        if limit is not None and len(out) >= limit:
            break
    return out


def the_stack_smol(source: str = "bigcode/the-stack-smol") -> Corpus:
    """The paper's validation set: the Python part of the-stack-smol (its only split is ``train``)."""
    import datasets

    try:
        ds = datasets.load_dataset(source, data_dir="data/python", split="train")
    except Exception as e:
        raise LordError(f"cannot load {source} ({type(e).__name__}); without network use data=stdlib "
                        "(the offline default) or a local copy via data.source=<folder>") from None
    return Corpus("the-stack-smol", "validation", _hf_records(ds, None), {"source": source})


def the_stack_calibration(validation: Corpus, n_files: int, min_chars: int = 10240,
                          source: str = "bigcode/the-stack", token: str | None = None) -> Corpus:
    """The paper's calibration set: Python files of the Stack (streamed), minus any validation file."""
    import datasets

    try:
        ds = datasets.load_dataset(source, data_dir="data/python", split="train", streaming=True, token=token)
    except Exception as e:
        raise LordError(f"cannot stream {source} ({type(e).__name__}); it is gated (set HF_TOKEN) and needs a "
                        "network; offline use data=stdlib") from None
    exclude = {hashlib.sha256(r["content"].encode()).hexdigest() for r in validation.records}
    records = _hf_records(ds, n_files, exclude, min_chars)
    return Corpus("the-stack", "calibration", records, {"source": source, "excluded_validation_files": len(exclude)})


def _tokenizer_id(tokenizer) -> str:
    vocab = tokenizer.get_vocab()
    h = hashlib.sha256(json.dumps(sorted(vocab.items())).encode())
    h.update(type(tokenizer).__name__.encode())
    h.update(repr(tokenizer("x\n  y").input_ids).encode())  # catches BOS/normalisation differences
    return h.hexdigest()[:16]


def tokenize_windows(corpus: Corpus, tokenizer, seq_len: int = 1024, min_chars: int = 10240,
                     all_windows: bool = False, cache_dir: str | os.PathLike | None = None) -> torch.Tensor:
    """All windows of a corpus (``n x seq_len`` token ids), in a deterministic order, cached on disk.

    Files are ordered by the hash of their path (a fixed pseudo-random order, so taking the first
    ``n`` windows samples across the corpus rather than one package). No BOS is added unless the
    tokenizer adds one by itself.
    """
    if seq_len < 2:
        raise LordError(f"seq_len must be at least 2 tokens, got {seq_len}")
    key = hashlib.sha256(
        f"{_tokenizer_id(tokenizer)}|{corpus.content_hash}|{seq_len}|{min_chars}|{all_windows}".encode()
    ).hexdigest()[:24]
    cache_file = Path(cache_dir) / f"windows-{key}.pt" if cache_dir else None
    if cache_file is not None and cache_file.is_file():
        try:
            return torch.load(cache_file)
        except Exception as e:  # truncated or foreign file: torch.load raises many types
            log.warning("window cache %s is unreadable (%s: %s); tokenising again", cache_file, type(e).__name__, e)
            cache_file.unlink()
    kept = [r for r in corpus.records if r["size"] >= min_chars]
    kept.sort(key=lambda r: hashlib.sha256(r["path"].encode()).hexdigest())
    windows = []
    for r in progress_bar(kept, desc=f"tokenising {corpus.name}/{corpus.split}", unit="file"):
        ids = tokenizer(r["content"]).input_ids
        n = len(ids) // seq_len if all_windows else min(1, len(ids) // seq_len)
        windows += [ids[i * seq_len:(i + 1) * seq_len] for i in range(n)]
    if not windows:
        raise LordError(
            f"every file of {corpus.name}/{corpus.split} ({len(corpus.records)} files) was filtered out "
            f"(min_chars={min_chars}, seq_len={seq_len}); lower data.min_chars or data.seq_len"
        )
    out = torch.tensor(windows, dtype=torch.long)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_file(cache_file.parent, ".pt")
        torch.save(out, tmp)
        os.replace(tmp, cache_file)
    return out


def take_windows(windows: torch.Tensor, n: int | None, what: str = "windows") -> torch.Tensor:
    if n is None:
        return windows
    if n <= 0:
        raise LordError(f"the number of {what} must be positive, got {n}")
    if n > len(windows):
        raise LordError(f"asked for {n} {what} but the corpus yields only {len(windows)}; lower the count "
                        "or use all_windows=true")
    return windows[:n]


def draw_windows(windows: torch.Tensor, n: int | None, seed: int, what: str = "windows") -> torch.Tensor:
    """``n`` of ``windows`` chosen at random (without replacement) by a generator seeded with ``seed``, in the
    order drawn; the same (windows, n, seed) always gives the same selection."""
    n = len(windows) if n is None else n
    take_windows(windows, n, what)  # the same one-line errors as the fixed selection
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(int(seed)))
    return windows[order[:n]]


def batches(windows: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    if batch_size <= 0:
        raise LordError(f"batch_size must be positive, got {batch_size}")
    return list(windows.split(batch_size))
