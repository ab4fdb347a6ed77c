"""What a stage of training or evaluation costs: wall time and peak resident memory (`measure`)."""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Iterator


def _reset_peak_rss() -> bool:
    """Reset Linux's peak resident memory of this process (``VmHWM``) to the current one; False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextlib.contextmanager
def measure() -> Iterator[dict[str, float]]:
    """Measure the block: yields a dict that gets ``"seconds"`` (wall) and ``"peak_memory_mb"`` (peak
    resident memory of the process during the block; where the peak cannot be reset (not Linux), the
    process's peak so far, marked by ``"peak_memory_since_start"``)."""
    record: dict[str, float] = {}
    reset = _reset_peak_rss()
    start = time.perf_counter()
    try:
        yield record
    finally:
        record["seconds"] = time.perf_counter() - start
        record["peak_memory_mb"] = _peak_rss_bytes() / 2**20
        if not reset:
            record["peak_memory_since_start"] = True


__all__ = ["measure"]
