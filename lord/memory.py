"""Peak memory of a step: resident memory sampled by a thread (CPU), and the allocator's peak (CUDA).

``with PeakMemory() as m: ...`` then ``m.record()``: ``{"rss_start_mib", "rss_peak_mib", "cuda_peak_mib"}``.
RSS is read from ``/proc/self/statm`` every ``interval`` seconds, so a spike shorter than that can be missed
(the peak is a lower bound); where ``/proc`` does not exist (not Linux) only the process's lifetime peak
(``ru_maxrss``) is known, and it is recorded as such.
"""

from __future__ import annotations

import os
import threading

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MIB = 1 << 20


def rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return None


class PeakMemory:
    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.start = self.peak = None
        self._stop = threading.Event()
        self._thread = None

    def _sample(self):
        while not self._stop.wait(self.interval):
            now = rss_bytes()
            if now is not None and now > self.peak:
                self.peak = now

    def __enter__(self):
        self.start = self.peak = rss_bytes()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        if self.start is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            now = rss_bytes()
            self.peak = max(self.peak, now) if now is not None else self.peak

    def record(self) -> dict:
        out: dict = {}
        if self.start is not None:
            out.update(rss_start_mib=self.start / MIB, rss_peak_mib=self.peak / MIB)
        else:
            import resource

            out["process_max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        if torch.cuda.is_available():
            out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / MIB
        return out
