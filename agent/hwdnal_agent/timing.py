"""How every latency in hwdnal is taken, on a device or locally: warm-up, many timed runs,
median and p90.

Comparing several networks on a shared machine is only fair when they see the same noise,
so :func:`measure_interleaved` runs them round-robin in short bursts and takes each one's
median over all its bursts: a noisy second hurts all of them alike instead of one. A burst
must be long enough to amortise the switch, though: two sub-millisecond ONNX Runtime
sessions alternating every 5 runs both measured 7-24% slower than alone (each evicts the
other's weights from the caches), while bursts of at least 20 ms measured them as alone
(docs/design.md, *Measurement noise*).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from hwdnal_agent.runtimes import Compiled


@dataclass(frozen=True)
class Measurement:
    median_ms: float
    p90_ms: float
    samples: int

    def to_dict(self) -> dict[str, float | int]:
        return {"median_ms": self.median_ms, "p90_ms": self.p90_ms, "samples": self.samples}

    @classmethod
    def from_dict(cls, data: dict) -> Measurement:
        return cls(float(data["median_ms"]), float(data["p90_ms"]), int(data["samples"]))


@dataclass(frozen=True)
class TimingSettings:
    """How long and how often each network runs (a target's warm-up/iterations/min-seconds).

    ``pre_seconds`` > 0 first runs one discarded interleaved pass of that length: cold
    caches, thread pools and clock ramps inflate whatever is measured first in a process.
    ``burst_seconds`` > 0 lengthens a network's bursts to at least that long (its typical
    run from the warm-up tells how many runs that is).
    """

    warmup: int = 10
    iterations: int = 50
    min_seconds: float = 0.0
    burst: int = 5
    max_iterations: int = 5000
    pre_seconds: float = 0.0
    burst_seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"warmup": self.warmup, "iterations": self.iterations,
                "min_seconds": self.min_seconds, "burst": self.burst,
                "max_iterations": self.max_iterations, "pre_seconds": self.pre_seconds,
                "burst_seconds": self.burst_seconds}

    @classmethod
    def from_dict(cls, data: dict) -> TimingSettings:
        """Settings from a request; unknown keys and nonsense values are refused."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError("unknown timing settings: " + ", ".join(sorted(unknown)))
        settings = cls(**{k: (float(v) if k.endswith("seconds") else int(v))
                          for k, v in data.items()})
        if settings.iterations < 1 or settings.warmup < 0 or settings.burst < 1:
            raise ValueError("iterations and burst must be >= 1, warmup >= 0")
        if not (0 <= settings.min_seconds <= 600 and 0 <= settings.pre_seconds <= 600):
            raise ValueError("min_seconds and pre_seconds must lie in [0, 600]")
        if not 0 <= settings.burst_seconds <= 10:
            raise ValueError("burst_seconds must lie in [0, 10]")
        return settings


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


def measure(
    compiled: Compiled, warmup: int = 10, iterations: int = 50, min_seconds: float = 0.0
) -> Measurement:
    """Latency of one compiled network."""
    return measure_interleaved(
        [compiled], warmup=warmup, iterations=iterations, min_seconds=min_seconds
    )[0]


def measure_with(compiled: Sequence[Compiled], settings: TimingSettings) -> list[Measurement]:
    """:func:`measure_interleaved` with a :class:`TimingSettings` (after its discarded pass)."""
    if settings.pre_seconds > 0:
        measure_interleaved(compiled, settings.warmup, settings.iterations, settings.burst,
                            settings.pre_seconds, settings.max_iterations,
                            settings.burst_seconds)
    return measure_interleaved(compiled, settings.warmup, settings.iterations, settings.burst,
                               settings.min_seconds, settings.max_iterations,
                               settings.burst_seconds)


def measure_interleaved(
    compiled: Sequence[Compiled],
    warmup: int = 10,
    iterations: int = 50,
    burst: int = 5,
    min_seconds: float = 0.0,
    max_iterations: int = 5000,
    burst_seconds: float = 0.0,
) -> list[Measurement]:
    """Latency of several networks, timed round-robin in bursts of ``burst`` runs (more
    where ``burst_seconds`` asks for longer bursts).

    Each network runs at least ``iterations`` times and, when ``min_seconds`` is given, at
    least that long in total (up to ``max_iterations``): a 30 µs layer needs thousands of
    runs before its median stops moving, a 40 ms network needs fifty.
    """
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    wanted, bursts = [], []
    for item in compiled:
        runs = max(warmup, 1 if min_seconds > 0 or burst_seconds > 0 else 0)
        first = item.timings(runs) if runs else []
        typical = sorted(first)[len(first) // 2] if first else 0.0
        need = iterations
        if min_seconds > 0 and typical > 0:
            need = max(need, math.ceil(min_seconds * 1e3 / typical))
        wanted.append(min(max(need, iterations), max(max_iterations, iterations)))
        long_enough = math.ceil(burst_seconds * 1e3 / typical) if typical > 0 else 0
        bursts.append(max(burst, min(long_enough, max_iterations)))
    times: list[list[float]] = [[] for _ in compiled]
    while True:
        pending = [i for i, n in enumerate(wanted) if len(times[i]) < n]
        if not pending:
            break
        for index in pending:
            chunk = min(bursts[index], wanted[index] - len(times[index]))
            times[index].extend(compiled[index].timings(chunk))
    return [summarize(t) for t in times]
