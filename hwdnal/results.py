"""What result.json says, for the code that writes it (the search) and the code that reads
it (report, compile, bench). Torch-free, so reading a run stays instant."""

from __future__ import annotations

import math
from typing import Any, TypedDict

#: a pruned network's predicted latency this far off its measurement is flagged
LATENCY_ERROR_FLAG = 0.10


def is_number(value: Any) -> bool:
    """A finite int or float (bools, None, NaN and strings are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def latency_error(pruned: dict[str, Any]) -> float | None:
    """(predicted - measured) / measured of the pruned network, from result.json's
    ``pruned`` (older runs stored only the two latencies)."""
    if is_number(pruned.get("latency_error")):
        return float(pruned["latency_error"])
    predicted, measured = pruned.get("predicted_latency_ms"), pruned.get("latency_ms")
    if is_number(predicted) and is_number(measured) and measured > 0:
        return (float(predicted) - float(measured)) / float(measured)
    return None


class NetworkFacts(TypedDict, total=False):
    """``dense`` and ``pruned``: top-1 on the held-out split (0..1), size, and once
    measured the target's latency (median, p90, each call's median)."""

    accuracy: float | None
    params: int
    macs: int
    latency_ms: float
    latency_p90_ms: float
    latency_calls_ms: list[float]
    #: pruned only: the LUT's prediction, and (predicted - measured) / measured
    predicted_latency_ms: float
    latency_error: float


class TargetFacts(TypedDict):
    name: str
    fingerprint: dict[str, Any]


class Result(TypedDict, total=False):
    """RUN/result.json: written by the search (stages/result.py) and by `hwdnal compile`
    (``compiled``, ``artifacts``), read by `hwdnal report`, `hwdnal compile` and the bench.
    Keys may be added; the ones in :data:`CONTRACT_KEYS` are relied on by users' scripts."""

    hwdnal: str
    model: str
    data: str
    input_shape: list[int]
    dense: NetworkFacts
    pruned: NetworkFacts
    budget: str | None
    budget_ms: float | None
    budget_met: bool
    budget_met_at_start_speed: bool
    device_drift: float
    speedup: float
    latency_flag: bool
    target: TargetFacts
    #: per gate group: {name, kept, total}
    groups: list[dict[str, Any]]
    #: per conv/linear layer: channels before and after, LUT latency when known
    layers: list[dict[str, Any]]
    #: per stage: {name, epochs, seconds, world_size}
    stages: list[dict[str, Any]]
    arch_history: list[dict[str, float]]
    arch_curve: list[dict[str, float]]
    arch_mask: dict[str, Any]
    fit_rounds: list[dict[str, float]]
    distributed: dict[str, Any]
    #: relative paths of the run's files
    artifacts: dict[str, str]
    #: per target compiled: the artifact's summary (hwdnal.compile.CompiledArtifact)
    compiled: dict[str, dict[str, Any]]
    #: supernets: per searchable layer, the candidates kept
    blocks: list[dict[str, Any]]
    #: CNNs: the residual blocks the search removed whole
    removed_blocks: list[str]
    lut: str
    lut_check: dict[str, Any]


#: the keys DESIGN.md promises in every result.json
CONTRACT_KEYS = ("dense", "pruned", "budget_ms", "target", "groups", "stages", "artifacts")


def missing_keys(result: dict[str, Any], wanted: tuple[str, ...] = CONTRACT_KEYS) -> list[str]:
    """The promised keys a result.json lacks (a file from elsewhere, or damaged)."""
    return [key for key in wanted if key not in result]
