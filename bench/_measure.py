"""How the benchmarks measure: interleaved timing, peak memory in a fresh process, the machine.

Both bench scripts time the kit and the reference in one process, alternating the order every
repeat (A B, B A, ...) so drift on a shared machine hits both sides alike, and report medians.
    >>> interleaved({"a": lambda: 1.0, "b": lambda: 2.0}, repeats=2)
    {'a': [1.0, 1.0], 'b': [2.0, 2.0]}
"""

from __future__ import annotations

import ctypes
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence

import torch

__all__ = ["environment", "interleaved", "median", "peak_rss_mib", "run_memory_case"]

_MIB = 2**20


def environment() -> dict[str, object]:
    """The facts a reader needs to compare two runs: date, machine, torch and its threads."""
    return {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }


def interleaved(
    cases: Mapping[str, Callable[[], float]], *, repeats: int
) -> dict[str, list[float]]:
    """Call every case once per repeat, reversing the order on odd repeats (ABAB..., BA...).

    Each case returns one measurement (seconds, say); the lists keep the repeat order, so
    `results[a][i] / results[b][i]` pairs runs made next to each other.
    """
    names = list(cases)
    results: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            results[name].append(cases[name]())
    return results


def median(values: Sequence[float]) -> float:
    """The median, as a float."""
    return float(statistics.median(values))


def peak_rss_mib(run: Callable[[], object]) -> float:
    """Peak resident memory that `run()` adds over the current resident set, in MiB.

    torch's CPU allocations bypass tracemalloc, so this reads the kernel's counters instead.
    Linux resets the high-water mark (VmHWM) when "5" is written to /proc/self/clear_refs
    (proc(5)); the peak is then VmHWM after the run minus VmRSS before it, measured after freed
    heap memory has been returned to the kernel. Where that file cannot
    be written, it falls back to the growth of `ru_maxrss`, which misses memory freed and reused
    below an earlier peak, so it can only under-report.
    """
    _release_free_memory()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _proc_status_kib("VmRSS")
        run()
        return (_proc_status_kib("VmHWM") - before) / 1024
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        run()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def _release_free_memory() -> None:
    """Hand memory that is free but still mapped back to the kernel (glibc's `malloc_trim`).

    Otherwise a case that freed memory while it was set up (a converted copy of a model, say)
    reuses those resident pages and shows a peak near 0. Without glibc this does nothing.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])  # "VmRSS:   13628 kB"
    raise OSError(f"no {field} in /proc/self/status")


def run_memory_case(script: str, args: Sequence[str]) -> float:
    """Run `script args` in a fresh interpreter; it prints `{"peak_mib": ...}` as its last line."""
    done = subprocess.run(
        [sys.executable, script, *args], check=True, capture_output=True, text=True
    )
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"])
