"""Blocks a search may remove whole: what a model family declares so that the gating core
can trade depth for width without knowing the family.

- a residual branch (:class:`RemovableBranch`, declared by ``removable_branches()``);
- a supernet layer's candidates (:class:`CandidateLayer`: parallel blocks, summed).

Channel pruning alone meets a floor on a CPU: every layer carries a fixed per-op cost, so a
ResNet-20 with every group at one channel step still measures about a third of the dense
network. A residual block whose branch is gone costs nothing; where the block with its
branch at zero computes exactly its input, it can be replaced by the identity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import nn


@dataclass(frozen=True)
class RemovableBranch:
    """A block whose residual branch the search may close.

    The model promises: with ``output``'s output multiplied by 0, ``block`` returns its
    input unchanged (an identity shortcut, and an input that the block's final activation
    leaves as it is, such as the output of a ReLU).
    """

    block: str  # qualified module name: replaced by nn.Identity when the branch is removed
    output: str  # qualified name of the module whose output is the branch's


@runtime_checkable
class HasRemovableBranches(Protocol):
    def removable_branches(self) -> list[RemovableBranch]: ...


def removable_branches(model: nn.Module) -> list[RemovableBranch]:
    """The model's declared branches; none for a family that declares nothing."""
    if isinstance(model, HasRemovableBranches):
        return list(model.removable_branches())
    return []


@runtime_checkable
class CandidateLayer(Protocol):
    """Parallel candidate blocks whose outputs are summed, plus the input where
    ``residual``. Each candidate's ``expanded`` module holds the channels whose gates decide
    whether it stays; a layer without a residual path must keep one candidate. A module
    opts in by defining ``candidate_ops`` (a module that merely has candidates does not)."""

    residual: bool

    def candidate_ops(self) -> Mapping[str, nn.Module]: ...

    def keep_only(self, names: Sequence[str]) -> None: ...


def candidate_layers(model: nn.Module) -> dict[str, CandidateLayer]:
    """The model's candidate layers by qualified name, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, CandidateLayer)}


__all__ = ["CandidateLayer", "HasRemovableBranches", "RemovableBranch", "candidate_layers",
           "removable_branches"]
