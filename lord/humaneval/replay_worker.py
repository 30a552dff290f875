"""The trusted side of a verdict: ``python -I -S replay_worker.py``, one per evaluation (see replay.py).

It never runs generated code. Requests arrive as JSON lines on stdin, answers leave as JSON lines on stdout
(the first line says whether this process made itself non-dumpable); each request is served in a fresh child
forked from this clean process (so no test leaves state for the next), under a CPU limit and a wall-clock
timeout — decoding hostile values (plain.decode) happens there too, so it cannot hold the evaluator.

``record``  For each task, run its ``check`` on the *canonical* solution through a recording wrapper — bound
            both as ``candidate`` and under the entry point's own name, since a test may call either — and
            keep the arguments of every call the tests make (recursive calls inside the solution are not
            test calls and are not recorded). ``random`` is seeded before the tests load, so tests that draw
            random inputs draw the same ones in every process. Then replay the canonical outputs (below):
            a task whose replay does not pass cannot be judged by replay and is reported with the reason.
``replay``  Load the prompt and canonical solution (the dataset's code, never the completion) and the tests,
            seed ``random`` the same way, and run ``check`` with a stub candidate that, call by call, checks the
            arguments equal the recorded ones and returns the recorded value (decoded by plain.decode: builtins
            only), or raises the recorded exception, or applies the recorded change to mutable arguments. The
            verdict is whether ``check`` finishes.
"""

import builtins
import json
import os
import random
import resource
import select
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import plain  # noqa: E402

SEED = 0


class ArgumentsDiverged(Exception):
    """The tests called the candidate with arguments other than the recorded ones."""


class CandidateRaised(Exception):
    """The candidate raised an exception that is not a builtin one."""


def _load(task: dict, solution: str) -> dict:
    namespace = {"__name__": "__lord_task__"}
    exec(compile(task["prompt"] + solution, "prompt.py", "exec"), namespace)
    random.seed(SEED)
    exec(compile(task["test"], "test.py", "exec"), namespace)
    return namespace


def _run_check(namespace: dict, entry_point: str, candidate) -> None:
    namespace[entry_point] = candidate
    namespace["check"](candidate)


def _record(task: dict) -> dict:
    namespace = _load(task, task["canonical_solution"])
    solution = namespace[task["entry_point"]]
    calls, outputs, depth = [], [], [0]

    def recorder(*args, **kwargs):
        if depth[0]:  # the solution calling itself by name
            return solution(*args, **kwargs)
        call = plain.encode([list(args), kwargs])
        depth[0] += 1
        try:
            value = solution(*args, **kwargs)
        finally:
            depth[0] -= 1
        record = {"ok": plain.encode(value)}
        after = plain.encode([list(args), kwargs])
        if after != call:
            record["args_after"] = after
        calls.append(call)
        outputs.append(record)
        return value

    try:
        _run_check(namespace, task["entry_point"], recorder)
    except plain.NotPlainData as e:
        return {"error": f"an argument or a result is not plain data ({e})"}
    except BaseException as e:
        return {"error": f"the canonical solution fails its own tests ({type(e).__name__}: {e})"[:300]}
    return {"calls": calls, "outputs": outputs}


def _apply_args_after(args: list, kwargs: dict, after) -> None:
    new_args, new_kwargs = plain.decode(after)
    for old, new in list(zip(args, new_args)) + [(kwargs[k], new_kwargs[k]) for k in kwargs]:
        if old == new:
            continue
        if type(old) is list and type(new) is list:
            old[:] = new
        elif type(old) is dict and type(new) is dict:
            old.clear()
            old.update(new)
        elif type(old) is set and type(new) is set:
            old.clear()
            old.update(new)
        else:
            raise ValueError(f"cannot replay a change of a {type(old).__name__} argument")


class NoAnswer(Exception):
    """The sandbox gave no answer to this call (it timed out or died before it)."""


def _replay(task: dict, calls: list, outputs: list) -> dict:
    """The verdict of the tests on recorded answers. ``outputs`` may answer only a prefix of ``calls``
    (the execution ended early): a call past it fails the tests as the execution would have. When the tests
    make a call other than the next recorded one (their arguments depend on earlier answers, or a failing
    assertion's message calls the candidate again), the answer says where and which call, so the evaluator
    can have the sandbox answer exactly that sequence."""
    namespace = _load(task, task["canonical_solution"])  # the prompt's helpers; the entry point becomes the stub
    position, diverged, missing = [0], [], []

    def stub(*args, **kwargs):
        i = position[0]
        try:
            call = plain.encode([list(args), kwargs])
        except plain.NotPlainData as e:
            call = None
            why = f"call {i} has an argument that is not plain data ({e})"
        if call is not None and (i >= len(calls) or call != calls[i]):
            why = f"call {i} is not the recorded one"
        if call is None or i >= len(calls) or call != calls[i]:
            diverged.append({"diverged": why, "at": i, "call": call})  # kept even if a test swallows the raise
            raise ArgumentsDiverged(why)
        if i >= len(outputs):
            missing.append(i)
            raise NoAnswer(f"call {i} was not answered")
        position[0] += 1
        record = outputs[i]
        if "args_after" in record:
            try:
                _apply_args_after(list(args), kwargs, record["args_after"])
            except (ValueError, KeyError) as e:
                diverged.append({"diverged": str(e), "at": i, "call": None})
                raise ArgumentsDiverged(str(e)) from None
        if "raised" in record:
            kind = getattr(builtins, record["raised"], None)
            if not (isinstance(kind, type) and issubclass(kind, BaseException)) or issubclass(
                    kind, (SystemExit, KeyboardInterrupt, GeneratorExit)):
                kind = CandidateRaised
            raise kind(f"{record['raised']}: {record.get('message', '')}")
        return plain.decode(record["ok"])

    try:
        _run_check(namespace, task["entry_point"], stub)
    except BaseException as e:
        if not (diverged or missing):
            return {"passed": False, "reason": f"{type(e).__name__}: {e}"[:300]}
    if diverged:
        return {"passed": False, **diverged[0]}
    if missing:
        return {"passed": False, "missing": missing[0]}
    return {"passed": True, "calls_used": position[0]}


def _serve(request: dict) -> dict:
    if request["op"] == "record":
        out = _record(request["task"])
        if "calls" in out:
            check = _replay(request["task"], out["calls"], out["outputs"])
            if not check["passed"] or check["calls_used"] != len(out["calls"]):
                out = {"error": "replaying the canonical outputs does not pass: "
                                + str(check.get("diverged", check.get("reason", "")))}
        return out
    if request["op"] == "replay":
        return _replay(request["task"], request["calls"], request["outputs"])
    raise ValueError(f"unknown op {request['op']!r}")


MEMORY_MB = 4096  # address space of one replay (the tests on recorded answers; hostile values are decoded here)
MAX_ANSWER = 64 << 20  # bytes of one replay's answer (a diverging call can carry values computed from answers)


def _in_child(request: dict, timeout_s: float, cpu_s: int) -> dict:
    """Serve ``request`` in a forked child (CPU, memory and wall clock limited); its answer comes back through a
    pipe, at most ``MAX_ANSWER`` bytes."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 0
        try:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
            resource.setrlimit(resource.RLIMIT_AS, (MEMORY_MB << 20, MEMORY_MB << 20))
            sys.setrecursionlimit(10_000)
            answer = json.dumps(_serve(request)).encode()
        except BaseException as e:
            answer = json.dumps({"error": f"{type(e).__name__}: {e}"[:300]}).encode()
            code = 1
        with os.fdopen(w, "wb") as f:
            f.write(answer)
        os._exit(code)
    os.close(w)
    chunks, size, deadline = [], 0, time.monotonic() + timeout_s
    with os.fdopen(r, "rb") as f:
        while True:
            left = deadline - time.monotonic()
            too_long = size > MAX_ANSWER
            if too_long or left <= 0 or not select.select([f], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return {"passed": False, "error": f"the replay's answer is longer than {MAX_ANSWER} bytes"
                        if too_long else f"timed out after {timeout_s:g} s"}
            chunk = os.read(f.fileno(), 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    _, status = os.waitpid(pid, 0)
    if not chunks:
        return {"passed": False, "error": f"the replay process died (wait status {status})"}
    return json.loads(b"".join(chunks))


def _nondumpable() -> bool:
    """PR_SET_DUMPABLE 0: no other process of this user can open /proc/<this>/fd (the answer pipe) or /mem. A
    guard-only execution as the evaluator's user could otherwise write a verdict into this worker's stdout."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) == 0  # PR_SET_DUMPABLE
    except (OSError, AttributeError):  # not Linux
        return False


def main() -> int:
    sys.stdout.write(json.dumps({"nondumpable": _nondumpable()}) + "\n")  # the first line, before any request
    sys.stdout.flush()
    for line in sys.stdin:
        request = json.loads(line)
        answer = _in_child(request, request.get("timeout_s", 30.0), int(request.get("cpu_s", 30)))
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
