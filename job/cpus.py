"""How many CPUs this process may really use (the affinity mask, capped by a container's CPU limit), and how a search
shares a cluster's CPUs and GPUs among its trials.

`os.cpu_count()` (and torch's default thread count) is the host's core count: in a container limited to 4 CPUs on
a 64-core node, 64 threads would fight over 4 CPUs' worth of time. cgroup v2 (`cpu.max`) and v1
(`cpu.cfs_quota_us` / `cpu.cfs_period_us`) are read; a fractional limit rounds up, never below 1.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def available(cgroup: Path = CGROUP) -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    limit = quota(cgroup)
    return max(1, min(cpus, math.ceil(limit))) if limit else max(1, cpus)


def quota(cgroup: Path = CGROUP) -> float | None:
    """The CPU limit in CPUs (e.g. 2.5), or None when there is none."""
    try:
        v2 = cgroup / "cpu.max"
        if v2.is_file():
            limit, period = v2.read_text().split()[:2]
            return None if limit == "max" else int(limit) / int(period)
        limit = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
        return None if limit <= 0 or period <= 0 else limit / period
    except (OSError, ValueError):
        return None


def for_compute(threads: int | None = None) -> None:
    """Set up this process to run models on the CPU: torch's threads to `threads` (a trial's CPUs, given by Ray:
    whatever OMP_NUM_THREADS says, trials must not oversubscribe), else (a command) to the CPUs it may use unless
    the user chose with OMP_NUM_THREADS; and freed memory kept for the next batch."""
    if threads is not None or "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(threads or available())
    keep_freed_memory()


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
KEEP = 1 << 30  # freed memory glibc keeps before it returns any to the kernel


def _malloc_is_ours() -> bool:
    """glibc's malloc (Linux), and no MALLOC_* variable of the user's (theirs win)."""
    return sys.platform.startswith("linux") and not any(k.startswith("MALLOC_") for k in os.environ)


def keep_freed_memory() -> None:
    """Large tensors come from the heap and freed memory stays there for the next one. glibc otherwise maps every
    block above 32 MB (its mmap ceiling) afresh and unmaps it when freed, and the kernel zeroes each 4 kB page again
    on its first touch: at 224 px every activation of a batch is such a block. Measured on 2 cores, EfficientNet-
    Lite0 at 224 px: eval 21.5 -> 47.9 img/s (batch 64; the page faults took as much CPU time as the model),
    training 9.4 -> 14.3 img/s (batch 32; peak memory 3.5 -> 4.0 GB), and 62 -> 76 img/s training at 64 px.
    glibc only (elsewhere nothing changes); a user's own MALLOC_* variables win (in a search's workers they are
    job's own, `threaded_training_environment`, which set the same at the process's start)."""
    if not _malloc_is_ours():
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    mallopt(M_MMAP_MAX, 0)
    mallopt(M_TRIM_THRESHOLD, KEEP)


def threaded_training_environment() -> dict[str, str]:
    """Environment variables for the processes that train in a thread other than their main one (Ray Tune runs a
    trial's function in a thread of its own): what `keep_freed_memory` does, set when the process starts, plus one
    malloc arena. glibc gives a second thread an arena of its own, made of heaps of at most 64 MB that are unmapped
    as soon as they empty (mallopt's settings do not keep them) and blocks above 64 MB mapped afresh every time, so
    every batch's memory was faulted in again. Measured on 2 cores, EfficientNet-Lite0 training at 224 px (batch 32)
    in a second thread: 2.8 s a batch and 300,000 page faults, with one arena 2.05 s and 30,000, as in the main
    thread (2.14 s); in a 3-epoch `job tune` trial at 96 px the page faults fell from 570,000-1,760,000 to 350,000
    and its system time from 3-6 s to 2 s. Empty when the user set any MALLOC_* variable (theirs win) or not on
    Linux."""
    if not _malloc_is_ours():
        return {}
    return {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(KEEP)}


def share(cpu_count: int, gpus: float, search, device: str) -> tuple[dict, int]:
    """({"cpu": per trial, "gpu": per trial}, concurrent trials) for a search on a cluster of `cpu_count` CPUs and
    `gpus` GPUs: every GPU used (one trial each unless gpus_per_trial says otherwise), CPUs shared out, never
    oversubscribed."""
    from job.errors import BadInput

    use_gpu = gpus > 0 and device != "cpu"
    per_gpu = search.gpus_per_trial if search.gpus_per_trial is not None else (1.0 if use_gpu else 0.0)
    if per_gpu > gpus:
        raise BadInput(f"gpus_per_trial = {per_gpu:g} but the Ray cluster has {gpus:g} GPU(s): lower --gpus-per-trial")
    slots = int(gpus / per_gpu) if per_gpu > 0 else (
        search.max_concurrent or min(search.num_samples, max(2, cpu_count // 4), cpu_count))
    concurrent = min(search.max_concurrent or slots, slots, search.num_samples)
    per_cpu = search.cpus_per_trial or max(1, cpu_count // max(1, concurrent))
    if per_cpu > cpu_count:
        raise BadInput(f"cpus_per_trial = {per_cpu} but the Ray cluster has {cpu_count} CPU(s): lower --cpus-per-trial")
    return {"cpu": per_cpu, "gpu": per_gpu}, concurrent
