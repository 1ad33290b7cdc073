"""How many torch threads a command runs on: picked from the cores this process may use.

torch starts with one intra-op thread per physical core of the machine. On a machine shared
with other jobs, in a container limited to fewer cores, or beside DataLoader workers that want
cores of their own, that oversubscribes: on a loaded 2-core machine a small head's training
epoch took 30 s with torch's default against 0.8 s with one thread. Results also differ
slightly with the thread count (float sums in another order), so a command records the count
it ran with (``run.json``, metrics.json, the summary line).

The default (:func:`default_threads`): the cores this process may run on (its CPU affinity,
``os.sched_getaffinity``, and a cgroup CPU quota, ``/sys/fs/cgroup/cpu.max``), shared among
the processes of this node (``LOCAL_WORLD_SIZE`` under torchrun), less one core per DataLoader
worker; at least 1, and never more than torch's current setting (which ``OMP_NUM_THREADS`` or
an earlier ``torch.set_num_threads`` fixes). The machine's load is not subtracted by default:
the default must not depend on the moment a command starts, since results differ in the last
bits with the thread count. On a machine shared with other jobs, pass ``--threads N`` (or
``busy=busy_fraction()`` from Python).
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Iterator

CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def available_cores() -> int:
    """The cores this process may use: its affinity set, capped by a cgroup v2 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = CPU_MAX.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def busy_fraction() -> float:
    """The share of the machine's CPUs that other work keeps busy: the 1-minute load average
    over the CPU count, in [0, 1] (0 where the OS gives no load average)."""
    try:
        return min(1.0, max(0.0, os.getloadavg()[0] / (os.cpu_count() or 1)))
    except (AttributeError, OSError):
        return 0.0


def default_threads(num_workers: int = 0, *, cores: int | None = None, busy: float | None = None,
                    local_processes: int | None = None, current: int | None = None) -> int:
    """torch intra-op threads for one process: ``round(cores * (1 - busy)) // local_processes -
    num_workers``, at least 1, at most ``current`` (torch's setting now). Arguments left None are
    read from the machine (:func:`available_cores`, ``LOCAL_WORLD_SIZE``, ``torch.get_num_threads()``);
    ``busy`` (the share of the CPUs other work keeps busy, e.g. :func:`busy_fraction`) is 0 unless
    given, so the default does not depend on the machine's load at the moment."""
    import torch

    cores = available_cores() if cores is None else cores
    busy = 0.0 if busy is None else busy
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if local_processes is None else local_processes
    current = torch.get_num_threads() if current is None else current
    free = int(cores * (1.0 - busy) + 0.5)
    return max(1, min(current, free // max(local, 1) - max(num_workers, 0)))


def resolve_threads(threads: int | None, num_workers: int = 0) -> int:
    """``threads`` when given (> 0), else :func:`default_threads` for ``num_workers``."""
    return int(threads) if threads else default_threads(num_workers)


@contextlib.contextmanager
def torch_threads(threads: int | None, num_workers: int = 0) -> Iterator[int]:
    """Run the block with :func:`resolve_threads` torch threads (yielded), then restore the count."""
    import torch

    before = torch.get_num_threads()
    n = resolve_threads(threads, num_workers)
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
