"""What result.json says, for the code that writes it (the search) and the code that reads
it (report, compile, bench). Torch-free, so reading a run stays instant."""

from __future__ import annotations

import math
from typing import Any

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
