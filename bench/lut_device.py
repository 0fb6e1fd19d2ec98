"""A device whose latency is a LUT's own prediction, for ablations of the search.

On a real device every run measures its dense network anew, and the ±6% of that measurement
sets the budget: two variants of the architecture stage then follow different trajectories,
and their difference mixes what they change with where the budget fell. Timed by a LUT,
every run gets the same budget and the same fit, so two variants differ only by what they
change. Building and running deployables still go to the real device behind it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from hwdnal.devices.measurer import Deployable, Measurement, Measurer, Network, TimingSettings
from hwdnal.latency.lut import load_lut
from hwdnal.latency.predictor import LatencyModel


class LutDevice:
    """The target of ``inner``, every network timed by the LUT at ``lut_path``."""

    def __init__(self, lut_path: str | Path, inner: Measurer) -> None:
        self.inner = inner
        self.model = LatencyModel(load_lut(lut_path))
        self.target = inner.target
        self.where = f"the LUT {Path(lut_path).name}, as a device"

    @property
    def name(self) -> str:
        return self.inner.name

    def fingerprint(self) -> dict[str, Any]:
        return self.inner.fingerprint()

    def measure(self, networks: Sequence[tuple[Network, Sequence[int]]],
                settings: TimingSettings) -> list[Measurement]:
        results = []
        for network, _shape in networks:
            if not isinstance(network, nn.Module):
                raise TypeError("a LUT times modules only: compile with --no-compile")
            ms = self.model.predict_module(network)
            results.append(Measurement(ms, ms, 1))
        return results

    def build(self, network: Network, input_shape: Sequence[int]) -> Deployable:
        return self.inner.build(network, input_shape)

    def run(self, deployable: Deployable, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.inner.run(deployable, inputs)

    def close(self) -> None:
        self.inner.close()
