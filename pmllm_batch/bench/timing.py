"""Timing helpers: interleaved arms, median statistics, intra-op thread choice and FLOP counting."""

from __future__ import annotations

import contextlib
import functools
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass


@dataclass
class TimingStats:
    """Median, min, max and count of timed repeats (seconds); JSON keys ``median_s``, ``min_s``, ``max_s``,
    ``repeats``. Section figures that are a timing plus a rate subclass it, so their JSON stays flat."""

    median_s: float
    min_s: float
    max_s: float
    repeats: int

    def parts(self) -> tuple[float, float, float, int]:
        """The four figures in field order, for a subclass: ``Rate(*stats(ts).parts(), rate=...)``."""
        return self.median_s, self.min_s, self.max_s, self.repeats


def stats(times: Sequence[float]) -> TimingStats:
    """Median, min, max and count of timed repeats (seconds)."""
    return TimingStats(statistics.median(times), min(times), max(times), len(times))


@dataclass
class ThreadProbe:
    """:func:`probe_threads`: median seconds of the work at each thread count, and the fastest count."""

    candidates: dict[int, float]
    best: int


def interleaved(
    arms: Mapping[str, Callable[[], object]], repeats: int | Mapping[str, int], warmup: bool = True
) -> dict[str, list[float]]:
    """Time several arms round-robin, so that a change of machine load hits every arm alike.

    Args:
        arms: name -> zero-argument callable (one unit of work).
        repeats: timed calls per arm (one number, or per arm; arms with fewer drop out of later rounds).
        warmup: run each arm once, untimed, first (lazy init, allocator, thread pools).

    Returns:
        name -> list of wall-clock seconds, one per timed call.
    """
    counts = {k: (repeats if isinstance(repeats, int) else repeats[k]) for k in arms}
    if warmup:
        for fn in arms.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in arms}
    for r in range(max(counts.values())):
        # Alternate the order: an arm that always ran right after another would inherit its cache/thread state.
        order = list(arms) if r % 2 == 0 else list(reversed(list(arms)))
        for name in order:
            if len(times[name]) >= counts[name]:
                continue
            t0 = time.perf_counter()
            arms[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call, counted by torch's dispatcher (matmuls, convolutions, attention)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    # nn.MultiheadAttention's fused inference kernel is invisible to the counter; the unfused path runs the same
    # matmuls through countable ops.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            fn()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return int(counter.get_total_flops())


def set_threads(threads: int) -> None:
    """Use ``threads`` intra-op threads in torch (ONNX Runtime sessions get the same number explicitly)."""
    import torch

    torch.set_num_threads(threads)


def probe_threads(work: Callable[[], object], max_threads: int, repeats: int = 2) -> ThreadProbe:
    """Time ``work`` (the model's own LLM stage) at 1 … ``max_threads`` torch threads; the fastest count wins.

    More threads only help when the cores really run in parallel. On a shared or virtualised machine waking an
    idle thread for each op can cost more than the GEMMs gain: on the 2-vCPU VM of docs/PERFORMANCE.md a small
    elementwise op took ~45 µs on 1 thread and 2–8 ms on 2, while one large GEMM was about as fast either way.
    A synthetic GEMM-heavy probe picked 2 threads there and made the LLM stage 2x slower, so the probe runs the
    real workload. The bench uses the winner unless ``--threads`` is given.

    Returns:
        median seconds per thread count, and the fastest count
    """
    import torch

    candidates = sorted({1, max_threads, *[2**k for k in range(1, 8) if 2**k < max_threads]})
    previous = torch.get_num_threads()

    def run(n: int) -> None:
        torch.set_num_threads(n)
        work()

    try:
        times = interleaved({str(n): functools.partial(run, n) for n in candidates}, repeats)
    finally:
        torch.set_num_threads(previous)
    medians = {int(k): statistics.median(v) for k, v in times.items()}
    return ThreadProbe(candidates=medians, best=min(medians, key=lambda n: medians[n]))


def default_threads() -> int:
    """CPUs this process may run on (cgroup/affinity aware), the default for both runtimes."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """Record the wall-clock seconds of the ``with`` block as ``timings[key]`` (only when it finishes)."""
    t = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - t
