"""A uid per execution (when the evaluator is root), and what is cleaned up after each execution.

``leased_uid`` hands out a uid from ``UID_RANGE`` that no other execution holds (an ``flock`` per uid, so leases
hold across threads and processes and vanish with a killed evaluator; a uid with a passwd entry is never used).
When the lease ends, every process of that uid is killed, and the uid's keyrings are emptied and invalidated:
keyrings belong to a uid, not to a process, so a key an execution left in its user or persistent keyring would
be read by the next execution that leases the same uid (the seccomp filter denies the keyring calls; this is
the second line). Leased uids are reused, lowest first.

As a normal user under guard-only, executions share the evaluator's uid, so neither applies. ``evaluator_guard``
then makes the evaluator non-dumpable (no execution can open ``/proc/<evaluator>/fd`` — its pipes to the replay
worker — or ``/proc/<evaluator>/mem``) and a child subreaper: a process an execution leaves behind after killing
the runner's own reaper is re-parented to the evaluator, and ``sweep_orphans`` kills it after the execution.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pwd
import signal
import stat
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from lord.errors import LordError
from lord.humaneval import seccomp

log = logging.getLogger(__name__)

UID_RANGE = range(61000, 62024)
_QUARANTINED: set[int] = set()  # uids whose keyrings could not be cleared: never leased again by this process

# run as the leased uid: empty and invalidate its user, user-session and persistent keyrings
_CLEAR_KEYRINGS = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
nr = int(sys.argv[1])
def keyctl(*args):
    return libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
GET_KEYRING_ID, CLEAR, INVALIDATE, GET_PERSISTENT = 0, 7, 21, 22
USER_KEYRING, USER_SESSION_KEYRING, THREAD_KEYRING = -4, -5, -1
rings = [keyctl(GET_KEYRING_ID, USER_KEYRING, 0), keyctl(GET_KEYRING_ID, USER_SESSION_KEYRING, 0),
         keyctl(GET_PERSISTENT, -1, THREAD_KEYRING)]
failed = [r for r in rings if r > 0 and keyctl(CLEAR, r) != 0]
for r in rings:
    if r > 0:
        keyctl(INVALIDATE, r)
sys.exit(f"keyctl(KEYCTL_CLEAR) failed: errno {ctypes.get_errno()}" if failed else 0)
"""


def as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _lock_dir() -> Path:
    d = Path(tempfile.gettempdir()) / "lord-sandbox-uids"
    d.mkdir(mode=0o700, exist_ok=True)
    st = d.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise LordError(f"{d} must be a folder owned by uid {os.geteuid()} with mode 0700 (another user may have "
                        "made it to take the sandbox's uid leases); remove it")
    return d


@contextmanager
def leased_uid(keyring_helper: str | None = None):
    """A uid no one else uses for the duration (root only; None otherwise). Afterwards its processes are
    killed and, with ``keyring_helper`` (an interpreter the uid can run), its keyrings cleared."""
    if not as_root():
        yield None
        return
    folder = _lock_dir()
    for uid in UID_RANGE:
        if uid in _QUARANTINED:
            continue
        try:
            pwd.getpwuid(uid)
            continue  # a real account
        except KeyError:
            pass
        fd = os.open(folder / f"{uid}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            yield uid
        finally:
            try:
                kill_uid(uid)
                if keyring_helper is not None and not clear_keyrings(uid, keyring_helper):
                    _QUARANTINED.add(uid)
            finally:
                os.close(fd)
        return
    raise LordError(f"all {len(UID_RANGE)} sandbox uids ({UID_RANGE.start}..{UID_RANGE.stop - 1}) are in use")


def processes_of(uid: int) -> list[int]:
    """Live processes whose real uid is ``uid`` (zombies are dead already: they only wait to be reaped)."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/status") as f:
                    fields = dict(line.split(":", 1) for line in f if line.startswith(("State:", "Uid:")))
            except (OSError, ValueError):
                continue  # it ended while we looked
            if "Uid" in fields and int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
                pids.append(int(entry.name))
    return pids


def kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid`` until none is left (a fork bomb may still be spawning)."""
    for _ in range(100):
        pids = processes_of(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)
    log.warning("processes of sandbox uid %d survived 100 rounds of SIGKILL: %s", uid, processes_of(uid))


def keys_of(uid: int) -> int:
    """How many keys (keyrings included) ``uid`` owns, from /proc/key-users (0 when it owns none)."""
    try:
        with open("/proc/key-users") as f:
            for line in f:
                who, _, rest = line.partition(":")
                if who.strip() == str(uid):
                    return int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return 0
    return 0


def clear_keyrings(uid: int, interpreter: str) -> bool:
    """Empty and invalidate ``uid``'s user, user-session and persistent keyrings, acting as ``uid`` (key
    permissions do not yield to root). Skipped when the uid owns no key at all. False if it failed."""
    if not keys_of(uid):
        return True
    nr = seccomp._NUMBERS.get(seccomp.machine(), {}).get("keyctl")
    if nr is None:
        log.warning("cannot clear the keyrings of sandbox uid %d on %s; it is not leased again", uid,
                    seccomp.machine())
        return False
    try:
        done = subprocess.run([interpreter, "-I", "-S", "-c", _CLEAR_KEYRINGS, str(nr)], user=uid, group=uid,
                              extra_groups=[], cwd="/", capture_output=True, text=True, timeout=30,
                              env={"PATH": "/usr/bin:/bin"})
    except (OSError, subprocess.SubprocessError) as e:
        done = subprocess.CompletedProcess([], 1, "", str(e))
    if done.returncode != 0:
        log.warning("could not clear the keyrings of sandbox uid %d (%s); it is not leased again", uid,
                    (done.stderr.strip().splitlines() or ["?"])[-1][:200])
    return done.returncode == 0


def readable_by(uid: int | None, interpreter: str, paths: list[str]) -> list[str]:
    """Which of ``paths`` ``uid`` (None: this process's user) can read, asked of a process running as it."""
    code = "import os, sys; print('\\n'.join(p for p in sys.argv[1:] if os.access(p, os.R_OK)))"
    user = {} if uid is None else dict(user=uid, group=uid, extra_groups=[])
    try:
        done = subprocess.run([interpreter, "-I", "-S", "-c", code, *paths], cwd="/", capture_output=True,
                              text=True, timeout=30, **user)
    except (OSError, subprocess.SubprocessError):
        return list(paths)  # cannot tell: assume the worst
    return [p for p in done.stdout.splitlines() if p] if done.returncode == 0 else list(paths)


# ---------------------------------------------------------------- guard-only as a normal user: the evaluator

PR_SET_CHILD_SUBREAPER, PR_GET_DUMPABLE, PR_SET_DUMPABLE = 36, 3, 4
_GUARD = {"users": 0, "dumpable": None, "since": 0, "lock": threading.Lock(), "runners": set()}


def _prctl(option: int, value: int = 0) -> int:
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl(option, ctypes.c_ulong(value), ctypes.c_ulong(0),
                                                   ctypes.c_ulong(0), ctypes.c_ulong(0))


def _stat(pid: int | str) -> tuple[int, str, int, int] | None:
    """(parent, state, session, start time in clock ticks since boot) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(b")") + 2:].split()  # state, ppid, pgrp, session, ... starttime is field 22
    return int(fields[1]), fields[0].decode(), int(fields[3]), int(fields[19])


def _uptime_ticks() -> int:
    with open("/proc/uptime") as f:
        return int(float(f.read().split()[0]) * os.sysconf("SC_CLK_TCK"))


@contextmanager
def evaluator_guard(active: bool):
    """While ``active``: this process is non-dumpable and a child subreaper (restored when the last user leaves)."""
    if not active:
        yield
        return
    with _GUARD["lock"]:
        if _GUARD["users"] == 0:
            _GUARD["dumpable"] = _prctl(PR_GET_DUMPABLE)
            if _prctl(PR_SET_DUMPABLE, 0) != 0 or _prctl(PR_SET_CHILD_SUBREAPER, 1) != 0:
                raise LordError("prctl(PR_SET_DUMPABLE / PR_SET_CHILD_SUBREAPER) failed: guard-only cannot protect "
                                "the evaluator here; use LORD_SANDBOX=namespaces")
            _GUARD["since"] = _uptime_ticks() - 1
        _GUARD["users"] += 1
    try:
        yield
    finally:
        with _GUARD["lock"]:
            _GUARD["users"] -= 1
            if _GUARD["users"] == 0:
                _prctl(PR_SET_CHILD_SUBREAPER, 0)
                if _GUARD["dumpable"] and _GUARD["dumpable"] > 0:
                    _prctl(PR_SET_DUMPABLE, _GUARD["dumpable"])


def start_runner(start):
    """``start()`` (a Popen), its process marked as an execution in progress, never an orphan, until
    ``runner_done``; under the lock the sweep holds, so no sweep sees it unmarked."""
    with _GUARD["lock"]:
        proc = start()
        _GUARD["runners"].add(proc.pid)
    return proc


def runner_done(pid: int) -> None:
    with _GUARD["lock"]:
        _GUARD["runners"].discard(pid)


def sweep_orphans() -> None:
    """Kill and reap the processes re-parented to this (subreaper) process since ``evaluator_guard`` began: a
    child that is not a runner in progress, not in this process's session (the replay worker and any library's
    helper are) and younger than the guard. Repeated until none is left (a killed one's children come next)."""
    if not _GUARD["users"]:
        return
    me, my_session = os.getpid(), os.getsid(0)
    for _ in range(100):
        with _GUARD["lock"]:
            orphans = []
            for entry in os.scandir("/proc"):
                if entry.name.isdigit() and int(entry.name) not in _GUARD["runners"]:
                    st = _stat(entry.name)
                    if st and st[0] == me and st[2] != my_session and st[3] >= _GUARD["since"]:
                        orphans.append(int(entry.name))
            if not orphans:
                return
            for pid in orphans:
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
    log.warning("orphans of guard-only executions survived 100 rounds of SIGKILL")
