"""The seccomp filter every execution runs under: the system calls that reach kernel state an execution must
neither keep nor share, and large kernel attack surface it has no use for.

    program = seccomp.program()      # bytes of ``struct sock_filter``, or None on an architecture not listed

Denied with ``EPERM``: ``add_key``, ``request_key``, ``keyctl`` (keyrings outlive a process and are shared by
a uid: a completion could leave itself notes across executions), ``unshare`` and ``setns``, ``clone`` with any
namespace flag (a nested user namespace has every capability inside it: netfilter, mounts, ...), ``ptrace``,
``bpf``, ``perf_event_open``, ``userfaultfd``. ``clone3`` is answered with ``ENOSYS``: its flags sit in memory a
filter cannot read, and ``ENOSYS`` (not ``EPERM``) makes glibc fall back to ``clone``, whose flags it can read.
A system call of another architecture (``int 0x80`` on x86-64, or the x32 ABI) kills the process.

The program is written here as a dozen BPF instructions rather than built by libseccomp (``pyseccomp``): it needs
no system library (libseccomp is absent from many containers and manylinux images), its bytes are the same
everywhere, and what it does is read off in ``program()``. Where the architecture is not listed, ``program()``
returns None and the evaluation records that no filter was active (isolation.py logs it once). bwrap loads the
program from a file descriptor (``--seccomp FD``); the guard-only runner installs it itself (sandbox_runner.py).
This module imports only the standard library.
"""

from __future__ import annotations

import platform
import struct

# linux/audit.h, linux/seccomp.h, linux/filter.h
_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_X32_SYSCALL_BIT = 0x40000000
RET_KILL_PROCESS, RET_ERRNO, RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
EPERM, ENOSYS = 1, 38
_LD_W_ABS, _JEQ_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
_OFFSET_NR, _OFFSET_ARCH, _OFFSET_ARG0 = 0, 4, 16  # struct seccomp_data; arg0's low 32 bits (little-endian)

# CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
CLONE_NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000

DENIED = ("add_key", "request_key", "keyctl", "unshare", "setns", "ptrace", "bpf", "perf_event_open", "userfaultfd")
_NUMBERS = {
    "x86_64": {"add_key": 248, "request_key": 249, "keyctl": 250, "unshare": 272, "setns": 308, "ptrace": 101,
               "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "clone": 56, "clone3": 435},
    "aarch64": {"add_key": 217, "request_key": 218, "keyctl": 219, "unshare": 97, "setns": 268, "ptrace": 117,
                "bpf": 280, "perf_event_open": 241, "userfaultfd": 282, "clone": 220, "clone3": 435},
}


def machine() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def program(arch: str | None = None) -> bytes | None:
    """The filter for ``arch`` (default: this machine), as the bytes of a ``struct sock_filter`` array."""
    arch = arch or machine()
    if arch not in _NUMBERS:
        return None
    nr = _NUMBERS[arch]
    out = [_insn(_LD_W_ABS, _OFFSET_ARCH),
           _insn(_JEQ_K, _ARCH[arch], jt=1),            # this architecture: go on
           _insn(_RET_K, RET_KILL_PROCESS),
           _insn(_LD_W_ABS, _OFFSET_NR)]
    if arch == "x86_64":  # the x32 ABI shares the architecture value: its numbers carry this bit
        out += [_insn(_JGE_K, _X32_SYSCALL_BIT, jf=1), _insn(_RET_K, RET_KILL_PROCESS)]
    out += [_insn(_JEQ_K, nr["clone3"], jf=1), _insn(_RET_K, RET_ERRNO | ENOSYS)]
    for name in DENIED:
        out += [_insn(_JEQ_K, nr[name], jf=1), _insn(_RET_K, RET_ERRNO | EPERM)]
    out += [_insn(_JEQ_K, nr["clone"], jf=3),           # not clone: skip to allow
            _insn(_LD_W_ABS, _OFFSET_ARG0),
            _insn(_JSET_K, CLONE_NAMESPACE_FLAGS, jf=1),
            _insn(_RET_K, RET_ERRNO | EPERM),
            _insn(_RET_K, RET_ALLOW)]
    return b"".join(out)
