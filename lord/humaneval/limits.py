"""What both the isolation (isolation.py) and the verdict (sandbox.py) need: the limits of one execution and
what one execution gave back. Standard library only; imports nothing from lord, so imports go one way:
sandbox -> isolation -> limits."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0
    memory_mb: int = 2048
    cpu_s: int = 10
    max_processes: int = 32
    max_file_mb: int = 16  # also the most the evaluator reads of one execution's result stream


@dataclass
class RunResult:
    records: list = field(default_factory=list)  # one per answered call, checked by wire.read_results
    done: bool = False  # every call answered (calls mode) / the program reached its end (program mode)
    returncode: int | None = None
    timed_out: bool = False
    malformed: str | None = None  # why the result stream could not be read (the sample fails with it)
    stderr: str = ""
