"""The one seam between hwdnal and a device: a Measurer fingerprints, measures, builds, runs.

Profile, fit, compile and bench talk only to a Measurer; whether ONNX Runtime, TensorRT or
torch-cuda sits behind it, on this machine or on a device reached through `hwdnal-agent`,
is the Measurer's business (:mod:`hwdnal.devices.local`, :mod:`hwdnal.devices.remote`).
Both sides time with the same code (:mod:`hwdnal_agent.timing`), so a latency means the
same thing wherever it was taken.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Union

from hwdnal_agent.timing import Measurement, TimingSettings

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from hwdnal.targets import Target

__all__ = ["Deployable", "Measurement", "Measurer", "Network", "TimingSettings"]


@dataclass(frozen=True)
class Deployable:
    """What a user ships for a target: ONNX bytes (CPU, torch-cuda) or a TensorRT engine,
    with the fingerprint of the device that built it."""

    data: bytes = field(repr=False)
    format: str  # "onnx" or "engine"
    input_shape: tuple[int, ...]
    fingerprint: dict[str, Any] = field(default_factory=dict, compare=False)
    #: the module the ONNX came from, where a local runtime runs modules (torch-cuda)
    source: Any = field(default=None, repr=False, compare=False)


#: a network to time or build: a module (exported to ONNX where the runtime needs it),
#: ONNX bytes, or a deployable file
Network = Union["nn.Module", bytes, Deployable]


class Measurer(Protocol):
    """A target's device, wherever it is."""

    target: Target
    #: where the device is, for messages: "this machine" or the agent's URL
    where: str

    @property
    def name(self) -> str: ...

    def fingerprint(self) -> dict[str, Any]:
        """The LUT fingerprint of measurements taken here (target name, device, runtime…)."""
        ...

    def measure(
        self, networks: Sequence[tuple[Network, Sequence[int]]], settings: TimingSettings
    ) -> list[Measurement]:
        """Each (network, input shape) compiled, then all timed interleaved."""
        ...

    def build(self, network: Network, input_shape: Sequence[int]) -> Deployable:
        """The deployable file for the target, built on its device (INT8 comes as Q/DQ
        nodes in the ONNX graph)."""
        ...

    def run(self, deployable: Deployable, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Outputs of the deployed file on the device, one per input."""
        ...

    def close(self) -> None: ...


#: a whole network's interleaved bursts last at least this long: shorter ones let two small
#: networks evict each other's weights between bursts (7-24% slower than alone, measured)
WHOLE_NETWORK_BURST_SECONDS = 0.02


def target_settings(target: Target, pre_seconds: float = 0.0) -> TimingSettings:
    """Whole-network timing settings of ``target``."""
    return TimingSettings(warmup=target.warmup, iterations=target.iterations,
                          min_seconds=target.min_seconds, pre_seconds=pre_seconds,
                          burst_seconds=WHOLE_NETWORK_BURST_SECONDS)


def layer_settings(target: Target) -> TimingSettings:
    """Timing settings for one grid point of a profile."""
    p = target.profile
    return TimingSettings(warmup=p.layer_warmup, iterations=p.layer_iterations,
                          min_seconds=p.layer_min_seconds)
