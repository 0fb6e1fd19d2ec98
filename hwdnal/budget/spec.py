"""Latency budgets: absolute (``20ms``, ``800us``) or relative to the dense network (``50%``).

A relative budget (``50%`` or ``0.5x``) is a fraction of the dense network's latency as
measured on the target at the start of the search.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from hwdnal.errors import UserError

_PATTERN = re.compile(
    r"^\s*(?P<value>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?P<unit>ms|us|µs|s|%|x)\s*$"
)
_MS_PER_UNIT = {"s": 1000.0, "ms": 1.0, "us": 1e-3, "µs": 1e-3}


@dataclass(frozen=True)
class Budget:
    """A parsed budget: milliseconds, or a fraction of the dense model's measured latency."""

    text: str
    milliseconds: float | None = None
    fraction: float | None = None

    @property
    def relative(self) -> bool:
        return self.fraction is not None

    def resolve(self, dense_ms: float) -> float:
        """The budget in milliseconds, given the dense network's measured median."""
        if self.fraction is not None:
            return self.fraction * dense_ms
        assert self.milliseconds is not None
        return self.milliseconds


def parse_budget(text: str) -> Budget:
    """Parse ``--budget``; anything else is one clear error."""
    match = _PATTERN.match(text or "")
    hint = "use e.g. 20ms, 800us, 50% or 0.5x (a fraction of the dense model's latency)"
    if match is None:
        raise UserError(f"malformed --budget '{text}': {hint}")
    value, unit = float(match["value"]), match["unit"]
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"--budget '{text}' must be positive: {hint}")
    if unit in _MS_PER_UNIT:
        return Budget(text=text.strip(), milliseconds=value * _MS_PER_UNIT[unit])
    fraction = value / 100 if unit == "%" else value
    if fraction >= 1:
        raise UserError(
            f"--budget '{text}' asks for at least the dense model's latency: nothing to prune; "
            "give a fraction below 100% (e.g. 50%) or an absolute budget (e.g. 20ms)"
        )
    return Budget(text=text.strip(), fraction=fraction)
