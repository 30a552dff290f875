"""What every result records about where it was produced: package versions, git commit, hardware."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = ("torch", "transformers", "datasets", "hydra-core", "wandb", "safetensors", "gguf", "numpy", "pandas")


def git_commit(repo: Path | None = None) -> str | None:
    repo = repo or Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


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
    sessions' results and 5.763958 in others, same weights and windows (README, Reproduction)."""
    hw = {"machine": platform.machine(), "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
          "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        hw["gpu"] = torch.cuda.get_device_name(0)
        hw["gpu_count"] = torch.cuda.device_count()
    return hw


def environment() -> dict:
    return {"versions": versions(), "git_commit": git_commit(), "hardware": hardware()}


def pick_device(device: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
