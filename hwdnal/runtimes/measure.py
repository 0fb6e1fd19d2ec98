"""How every latency in hwdnal is measured: warm-up, many timed runs, median and p90.

Comparing several networks on a shared machine is only fair when they see the same noise,
so :func:`measure_interleaved` runs them round-robin in short bursts and takes each one's
median over all its bursts: a noisy second hurts all of them alike instead of one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from hwdnal.runtimes import Compiled


@dataclass(frozen=True)
class Measurement:
    median_ms: float
    p90_ms: float
    samples: int

    def to_dict(self) -> dict[str, float | int]:
        return {"median_ms": self.median_ms, "p90_ms": self.p90_ms, "samples": self.samples}


def summarize(times_ms: Sequence[float]) -> Measurement:
    """Median and p90 (nearest rank) of per-run times."""
    if not times_ms:
        raise ValueError("no timings to summarise")
    ordered = sorted(times_ms)
    n = len(ordered)
    middle = n // 2
    median = ordered[middle] if n % 2 else 0.5 * (ordered[middle - 1] + ordered[middle])
    p90 = ordered[min(n - 1, max(0, math.ceil(0.9 * n) - 1))]
    return Measurement(median_ms=float(median), p90_ms=float(p90), samples=n)


def measure(compiled: Compiled, warmup: int = 10, iterations: int = 50) -> Measurement:
    """Latency of one compiled network."""
    return measure_interleaved([compiled], warmup=warmup, iterations=iterations)[0]


def measure_interleaved(
    compiled: Sequence[Compiled], warmup: int = 10, iterations: int = 50, burst: int = 5
) -> list[Measurement]:
    """Latency of several networks, timed round-robin in bursts of ``burst`` runs."""
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    for item in compiled:
        if warmup > 0:
            item.timings(warmup)
    times: list[list[float]] = [[] for _ in compiled]
    remaining = iterations
    while remaining > 0:
        chunk = min(burst, remaining)
        for index, item in enumerate(compiled):
            times[index].extend(item.timings(chunk))
        remaining -= chunk
    return [summarize(t) for t in times]
