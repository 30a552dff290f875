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
and its row says ``"undecided": true``). Every call a round asks again must get the answer an earlier round
gave (``changed_answer``): otherwise the rounds would be an oracle, and the sample fails. A task the replay
cannot serve at all (its canonical solution cannot be recorded: ``replay.replay_coverage``; none of
HumanEval's 164) runs as a whole program in the sandbox instead, and its rows say ``"verdict_by":
"in-sandbox"``. Every row says which isolation ran and which protections were active. What a sandbox wrote
is read by wire.py (bounded in size, depth, count and time); nothing a completion does can end the
evaluation, only fail its own sample.

Limits per execution: wall clock (the whole sandbox is killed), CPU seconds, address space, file size,
process count (per execution: its own uid as root, its own user namespace otherwise).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing

from lord.errors import LordError
from lord.humaneval import isolation as iso
from lord.humaneval import leases
from lord.humaneval.limits import Limits, RunResult  # noqa: F401 - Limits is imported from here by callers

log = logging.getLogger(__name__)

MAX_ROUNDS = 8  # executions per sample when the tests' calls depend on the answers
MAX_OUTCOME = 300  # characters of any text in a result row


def _failure(result: RunResult) -> str:
    if result.timed_out:
        return "timed out"
    last = result.stderr.strip().splitlines()[-1:]
    return f"failed (exit {result.returncode} before the end{': ' + last[0][:200] if last else ''})"


def run_program(problem: dict, completion: str, limits: Limits, isolation: iso.Isolation) -> tuple[bool, str]:
    """The fallback: prompt + completion + tests in the sandbox; passed when the program reached its end."""
    program = (problem["prompt"] + completion + "\n\n" + problem["test"] + "\n"
               + f"check({problem['entry_point']})\n")
    result = iso.run_request({"program": program, "entry_point": problem["entry_point"], "calls": [],
                              "mode": "program"}, limits, isolation)
    return (True, "passed") if result.done and not result.timed_out else (False, _failure(result))


def run_calls(problem: dict, completion: str, calls: list, limits: Limits, isolation: iso.Isolation):
    """Step 2: the completion's answers to ``calls``, as read and checked by wire.read_results.

    Returns (answers, failure): ``answers`` covers a prefix of ``calls`` — all of them when ``failure`` is
    None; otherwise ``failure`` says why the execution stopped answering (timed out, died, unreadable, ...)."""
    result = iso.run_request({"program": problem["prompt"] + completion, "entry_point": problem["entry_point"],
                              "calls": calls, "mode": "calls"}, limits, isolation)
    answers = []
    for record in result.records[:len(calls)]:
        if "unserialisable" in record:
            return answers, f"unserialisable output ({record['unserialisable']})"
        answers.append(record)
    if result.malformed:
        return answers, f"failed ({result.malformed})"
    if len(answers) < len(calls) or not result.done:
        return answers, _failure(result)
    return answers, None


def changed_answer(ledger: list, calls: list, answers: list) -> int | None:
    """The first call that this round answered otherwise than an earlier round did, or None; ``ledger``
    (the [call, answer] pairs answered so far, in the order the tests make them) is updated in place.

    A round re-asks the calls before the one where the tests changed course, in the same order, in a fresh
    sandbox: a completion that does not depend on the round answers them as before. One that does has learned
    something from the round itself — which calls the tests ask next tells it which answer failed — and is
    failed (docs/sandbox.md, "Rounds are not an oracle")."""
    for i, (call, answer) in enumerate(zip(calls, answers)):
        if i < len(ledger) and ledger[i][0] != call:
            del ledger[i:]  # the tests changed course here: what follows is another sequence
        if i == len(ledger):
            ledger.append((call, answer))
        elif ledger[i][1] != answer:
            return i
    return None


def _short(row: dict) -> dict:
    return {k: v[:MAX_OUTCOME] if isinstance(v, str) else v for k, v in row.items()}


class Judge:
    """Verdicts for completions: record once per task, execute in the sandbox, replay outside it.

        with Judge(problems, Limits()) as judge:
            verdicts = judge.judge_all([(task_id, completion), ...], workers=2)
    """

    def __init__(self, problems: dict, limits: Limits = Limits(), isolation: str | None = None):
        from lord.humaneval.replay import Recorder

        self.problems, self.limits = problems, limits
        self.isolation = iso.choose(isolation)
        self._stack = ExitStack()
        self._stack.enter_context(leases.evaluator_guard(self.isolation.protections()["evaluator_nondumpable"]))
        self.recorder = self._stack.enter_context(closing(Recorder()))
        self.protections = self.isolation.protections() | {"replay_worker_nondumpable": self.recorder.nondumpable}
        self._active = [name for name, on in self.protections.items() if on]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self._stack.close()

    def judge(self, task_id: str, completion: str) -> dict:
        """The verdict row of one completion. Nothing a completion does ends the evaluation: an exception while
        judging it fails this sample, with the reason (only the evaluator's own faults, LordError, propagate)."""
        row = {"isolation": self.isolation.kind, "protections": self._active}
        try:
            return _short(row | self._judge(self.problems[task_id], completion))
        except LordError:
            raise
        except Exception as e:  # noqa: BLE001 - one sample fails, the evaluation goes on
            log.warning("could not judge a sample of %s: %s: %s", task_id, type(e).__name__, str(e)[:200])
            return _short(row | {"passed": False, "verdict_by": "replay",
                                 "outcome": f"failed (the evaluator could not judge it: {type(e).__name__}: {e})"})

    def _judge(self, problem: dict, completion: str) -> dict:
        recording = self.recorder.record(problem)
        if "calls" not in recording:  # not replayable: the whole program in the sandbox (marked)
            passed, outcome = run_program(problem, completion, self.limits, self.isolation)
            return {"passed": passed, "outcome": outcome, "verdict_by": "in-sandbox",
                    "unreplayable": recording["error"]}
        calls, ledger, row = recording["calls"], [], {}
        for rounds in range(1, MAX_ROUNDS + 1):
            answers, failure = run_calls(problem, completion, calls, self.limits, self.isolation)
            if rounds > 1:
                row["replay_rounds"] = rounds
            changed = changed_answer(ledger, calls, answers)
            if changed is not None:
                return row | {"passed": False, "verdict_by": "replay", "outcome":
                              f"failed (round {rounds} answered call {changed} otherwise than an earlier round: "
                              "answers must not depend on the round)"}
            if failure is not None and failure.startswith("unserialisable"):
                return row | {"passed": False, "outcome": failure, "verdict_by": "replay"}
            verdict = self.recorder.replay(problem, calls, answers, self.limits)
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
        return self.isolation.describe() | {"protections": self.protections} | self.limits.__dict__


def judge_completion(problem: dict, completion: str, limits: Limits = Limits(),
                     isolation: str | None = None) -> dict:
    """One verdict, for tests and notebooks."""
    with Judge({"task": problem}, limits, isolation) as judge:
        return judge.judge("task", completion)
