"""What every result records about where it was produced: package versions, git commit, hardware."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = ("torch", "transformers", "datasets", "hydra-core", "wandb", "safetensors", "gguf", "numpy", "pandas")


REPO = Path(__file__).resolve().parents[1]
# what a result's numbers can depend on in a checkout: the code, the configs and the pins (not results/, docs/, tests/)
CODE_PATHS = ("lord", "experiments", "analysis", "conf", "hydra_plugins", "requirements.txt",
              "requirements-extras.txt", "pyproject.toml")
MAX_STORED_DIFF = 100_000  # characters of the uncommitted change kept in a result (always hashed)


def _git(repo: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state(repo: Path | None = None) -> dict | None:
    """The commit of the checkout lord runs from and what differs from it in the code (``CODE_PATHS``):
    ``dirty``, the changed and untracked files, the sha256 of the change (the diff against HEAD plus every
    untracked file's name and bytes) and the change itself when it is small. None outside a git checkout."""
    repo = repo or REPO
    commit = _git(repo, "rev-parse", "HEAD")
    if commit is None:
        return None
    status = _git(repo, "status", "--porcelain", "--untracked-files=all", "--", *CODE_PATHS) or ""
    files = sorted(line[3:] for line in status.splitlines() if line.strip())
    state = {"commit": commit.strip(), "dirty": bool(files), "changed_files": files, "diff_sha256": None,
             "diff": None}
    if files:
        diff = _git(repo, "diff", "HEAD", "--binary", "--", *CODE_PATHS) or ""
        untracked = (_git(repo, "ls-files", "--others", "--exclude-standard", "--", *CODE_PATHS) or "").split()
        h = hashlib.sha256(diff.encode())
        for name in sorted(untracked):
            try:
                h.update(b"\0untracked\0" + name.encode() + b"\0" + (repo / name).read_bytes())
            except OSError:
                h.update(b"\0unreadable\0" + name.encode())
        state["diff_sha256"] = h.hexdigest()
        state["diff"] = diff if len(diff) <= MAX_STORED_DIFF else None
    return state


def git_commit(repo: Path | None = None) -> str | None:
    """HEAD's commit, with ``-dirty`` when the code differs from it (``git_state``)."""
    state = git_state(repo)
    return None if state is None else state["commit"] + ("-dirty" if state["dirty"] else "")


def lord_version() -> str | None:
    """lord's version: the installed distribution's, else (a source checkout) pyproject.toml's."""
    try:
        return metadata.version("lord")
    except metadata.PackageNotFoundError:
        pass
    try:
        import tomllib

        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        return tomllib.loads(pyproject.read_text())["project"]["version"]
    except (ImportError, OSError, KeyError, ValueError):
        return None


def versions() -> dict:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def cpu_model() -> str | None:
    """The CPU's model name (Linux ``/proc/cpuinfo``; else what ``platform`` says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def hardware() -> dict:
    """Where a result was computed. The CPU model and the vector instructions torch's kernels use are recorded
    because float32 results can depend on them: the published 0.5B dense perplexity is 5.763826 in some
    sessions' results and 5.763958 in others, same weights and windows (docs/reproduce.md)."""
    hw = {"machine": platform.machine(), "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
          "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        hw["gpu"] = torch.cuda.get_device_name(0)
        hw["gpu_count"] = torch.cuda.device_count()
    return hw


def environment(git: dict | None = None) -> dict:
    """Versions, hardware and the code's provenance (``git``: a ``git_state`` already taken, else taken now)."""
    git = git if git is not None else git_state()
    commit = None if git is None else git["commit"] + ("-dirty" if git["dirty"] else "")
    return {"versions": versions(), "git_commit": commit, "git": git, "hardware": hardware()}


def pick_device(device: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
