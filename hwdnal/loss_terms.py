"""Terms added to the cross-entropy in the architecture stage.

A term has a ``name``, a ``weight`` (read at every step, so it may adapt) and a ``value()``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from hwdnal.gating.model import GatedModel


@dataclass
class SparsityTerm:
    """DNAL's λa term, read on sigmoid(s) so that it stays alive as δ grows."""

    gated: GatedModel
    weight: float
    name: str = "sparsity"

    def value(self) -> torch.Tensor:
        return self.gated.sparsity()


@dataclass
class GateLossTerm:
    """An extra term computed from the gated model, e.g. the predicted latency."""

    name: str
    weight: float | torch.Tensor
    compute: Callable[[GatedModel], torch.Tensor]
    gated: GatedModel | None = None
    #: called after every step with the term's value (on the device), e.g. to adapt
    #: ``weight`` without reading it back
    after_step: Callable[[GateLossTerm, torch.Tensor], None] | None = None
    #: called once when the stage ends; it may set the gates (e.g. to the best architecture
    #: the term saw) and returns a line for the user, or None
    at_end: Callable[[GatedModel], str | None] | None = None
    #: what a resumed stage needs back besides ``weight`` (tensors on the CPU), and its loader
    state: Callable[[], dict[str, Any]] | None = None
    load_state: Callable[[dict[str, Any]], None] | None = None

    def value(self) -> torch.Tensor:
        assert self.gated is not None, "the term is bound to the gated model by the engine"
        return self.compute(self.gated)
