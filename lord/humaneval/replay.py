"""The evaluator's side of the trusted replay: one ``replay_worker.py`` process, asked in JSON lines.

``Recorder.record(problem)`` records the tests' calls on the canonical solution (cached per task content);
``Recorder.replay(problem, calls, outputs)`` asks a fresh process whether the tests pass on the recorded
outputs. The worker never sees generated code, only the dataset's code and plain data.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from pathlib import Path

from lord.errors import LordError

WORKER = Path(__file__).with_name("replay_worker.py")
TASK_KEYS = ("prompt", "canonical_solution", "test", "entry_point")


def _task(problem: dict) -> dict:
    return {k: problem[k] for k in TASK_KEYS if k in problem}


class Recorder:
    def __init__(self):
        self._proc = subprocess.Popen([sys.executable, "-I", "-S", str(WORKER)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, encoding="utf-8", bufsize=1)
        self._lock = threading.Lock()
        self._recordings: dict[str, dict] = {}
        hello = self._proc.stdout.readline()
        if not hello:
            raise LordError(f"the replay worker ({WORKER.name}) did not start; run it by hand to see why: "
                            f"{sys.executable} -I -S {WORKER}")
        self.nondumpable = json.loads(hello).get("nondumpable") is True

    def _ask(self, request: dict) -> dict:
        with self._lock:
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        if not line:
            raise LordError(f"the replay worker ({WORKER.name}) died; rerun, the evaluation resumes")
        return json.loads(line)

    def record(self, problem: dict) -> dict:
        """{"calls": [...], "outputs": [...]} for a task the replay serves, else {"error": why}."""
        key = hashlib.sha256(json.dumps(_task(problem), sort_keys=True).encode()).hexdigest()
        if key not in self._recordings:
            if "canonical_solution" not in problem:
                self._recordings[key] = {"error": "the task has no canonical solution to record"}
            else:
                self._recordings[key] = self._ask({"op": "record", "task": _task(problem), "timeout_s": 60,
                                                   "cpu_s": 60})
        return self._recordings[key]

    def replay(self, problem: dict, calls: list, outputs: list, limits) -> dict:
        return self._ask({"op": "replay", "task": _task(problem), "calls": calls, "outputs": outputs,
                          "timeout_s": limits.timeout_s, "cpu_s": limits.cpu_s})

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def replay_coverage(problems: dict) -> dict:
    """For every task: "replay", or why it falls back to in-sandbox execution."""
    recorder = Recorder()
    try:
        return {t: "replay" if "calls" in (r := recorder.record(p)) else r["error"] for t, p in problems.items()}
    finally:
        recorder.close()
