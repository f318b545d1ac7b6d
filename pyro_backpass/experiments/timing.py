"""Timing helpers of the benchmark: clocks, medians after warm-up, interleaved runs, the machine.

On a shared CPU the wall clock also measures the other jobs: a process that gets a third of a core
takes three times as long. With one intra-op thread the process's CPU time is what the run would take
on an idle machine, so :func:`clock` offers it (``"cpu"``); multi-threaded and CUDA runs need the wall
clock (``"wall"``), since their point is the time saved by running in parallel. Memory-bandwidth and
cache contention from other jobs still slow both clocks; numbers compared in a ratio are therefore
timed interleaved (:func:`interleaved_ms`), one run of each per round, so that load slows them alike.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time

import torch

__all__ = ["clock", "time_ms", "interleaved_ms", "peak_mb", "machine", "load_average"]


def clock(kind: str):
    """A ``() -> seconds`` function: ``"wall"`` (``time.perf_counter``) or ``"cpu"`` (CPU time of the
    whole process, ``time.process_time``)."""
    if kind == "wall":
        return time.perf_counter
    if kind == "cpu":
        return time.process_time
    raise ValueError(f"clock: expected 'wall' or 'cpu', got {kind!r}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, repeats: int, warmup: int, device: torch.device, kind: str = "wall") -> float:
    """Median time of ``fn()`` in ms over ``repeats`` runs after ``warmup`` untimed runs."""
    return interleaved_ms({"fn": fn}, repeats, warmup, device, kind)["fn"]


def interleaved_ms(fns: dict, repeats: int, warmup: int, device: torch.device, kind: str = "wall") -> dict:
    """Median times of several callables run in turn, one of each per round, so that a busy machine
    slows them alike; ``{name: median ms}`` (CUDA is synchronised around each run)."""
    now = clock(kind)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            _sync(device)
            t0 = now()
            fn()
            _sync(device)
            times[k].append(1000.0 * (now() - t0))
    return {k: statistics.median(v) for k, v in times.items()}


def peak_mb(device: torch.device) -> float:
    """Peak memory of the run so far: CUDA's allocator peak, or this process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (how busy the machine was), where the OS reports them."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine(device: torch.device) -> str:
    """One line naming the device, the torch build and the thread count."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}; torch {torch.__version__}"
    return (f"CPU; {platform.platform()}; {platform.processor() or platform.machine()}; {os.cpu_count()} logical "
            f"CPUs; torch {torch.__version__} with {torch.get_num_threads()} threads")
