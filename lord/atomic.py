"""Atomic writes (a reader never sees half a file), tolerant reads, and clean-up of what killed writers leave.

Every temporary file or folder lord writes is named ``.tmp-<host>-<pid>-<random>[suffix]`` (a zoo fetch:
``.fetch-<host>-<pid>-...``, a conversion: ``.model-<host>-<pid>-...``) next to its destination and renamed
into place when complete. ``clean_leftovers`` removes those whose process is gone (same host, pid not
running), and any older than ``STALE_S`` (another host, or the names of earlier versions: ``*.tmp``), so a
``kill -9`` at any moment leaves nothing that a later run trips over -- and never a live writer's file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

STALE_S = 6 * 3600
_KINDS = (".tmp-", ".fetch-", ".model-")


def _tag(kind: str) -> str:
    return f"{kind}{socket.gethostname().replace('-', '_')}-{os.getpid()}-"


def current_umask() -> int:
    """The process's umask (Linux: read from /proc, which leaves it untouched; elsewhere set and reset)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def as_if_created(path: str | os.PathLike) -> None:
    """Give ``path`` the mode an ordinary ``open``/``mkdir`` would have given it under the umask (``tempfile``
    creates files 0600 and folders 0700, and some writers, e.g. safetensors', do the same): folders
    ``0777 & ~umask``, files ``0666 & ~umask`` (plus the execute bits, where the owner's was set)."""
    path, mask = Path(path), current_umask()
    mode = path.stat().st_mode
    if path.is_dir():
        path.chmod(0o777 & ~mask)
    else:
        path.chmod((0o777 if mode & 0o100 else 0o666) & ~mask)


def temp_file(folder: str | os.PathLike, suffix: str = "") -> str:
    """A new empty temporary file in ``folder`` (created), named for ``clean_leftovers``, with the mode the umask
    gives a new file (it is renamed into place: its mode is the final file's)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=_tag(".tmp-"), suffix=suffix)
    os.close(fd)
    as_if_created(tmp)
    return tmp


def temp_dir(folder: str | os.PathLike, kind: str = ".tmp-") -> Path:
    """A new empty temporary folder in ``folder``, named for ``clean_leftovers``, with the mode the umask gives."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=_tag(kind)))
    as_if_created(tmp)
    return tmp


@contextmanager
def replaced_directory(path: str | os.PathLike, kind: str = ".tmp-"):
    """Yields an empty temporary folder beside ``path``; when the block ends without error, that folder replaces
    ``path`` (a reader sees the old folder, for a moment none, or the new one, never a mix of both); on error it
    is removed and ``path`` is left as it was. Everything in it gets the mode the umask gives a new file or
    folder, whatever the writers inside the block chose."""
    path = Path(path)
    tmp = temp_dir(path.parent, kind)
    try:
        yield tmp
        for p in [tmp, *tmp.rglob("*")]:
            if not p.is_symlink():
                as_if_created(p)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    path = Path(path)
    tmp = temp_file(path.parent, ".json")
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=str)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_json(path: str | os.PathLike) -> dict | None:
    """The parsed file, or None when it is missing or not valid JSON (e.g. cut short by a kill)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _is_leftover(p: Path, now: float) -> bool:
    name = p.name
    if name.endswith(".tmp") and not name.startswith(_KINDS):  # earlier versions' temporary files
        return now - p.stat().st_mtime > 600
    if not name.startswith(_KINDS):
        return False
    try:
        host, pid = name.split("-")[1:3]
        if host == socket.gethostname().replace("-", "_"):
            os.kill(int(pid), 0)  # raises if that process is gone
        return now - p.stat().st_mtime > STALE_S
    except (ProcessLookupError, ValueError):
        return True
    except PermissionError:  # the pid exists (another user's process)
        return False


def clean_leftovers(root: str | os.PathLike) -> list[Path]:
    """Remove temporary files and folders of killed writers anywhere under ``root``; returns what went."""
    root, now, removed = Path(root), time.time(), []
    if not root.is_dir():
        return removed
    for p in sorted(root.rglob("*"), key=lambda q: len(q.parts)):
        try:
            if p.exists() and _is_leftover(p, now):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
                removed.append(p)
        except OSError as e:
            log.warning("could not remove leftover %s (%s)", p, e)
    if removed:
        log.info("removed %d leftover temporary file(s) of killed runs under %s", len(removed), root)
    return removed
