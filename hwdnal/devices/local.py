"""The device is this machine: the runtimes of :mod:`hwdnal_agent.runtimes`, in process."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hwdnal_agent import runtimes
from hwdnal_agent.errors import DeviceError
from hwdnal_agent.timing import Measurement, TimingSettings, measure_with

from hwdnal import __version__
from hwdnal.devices.measurer import Deployable, Network
from hwdnal.devices.precision import onnx_for_target
from hwdnal.errors import UserError

if TYPE_CHECKING:
    import numpy as np

    from hwdnal.targets import Target


def usable_here(target: Target) -> tuple[bool, str]:
    """Whether this machine can measure ``target``, and if not why (a remote target's device
    answers through :func:`hwdnal.devices.open_measurer`)."""
    from hwdnal_agent.device_info import is_jetson

    ok, why = target.suits(platform.machine().lower(), is_jetson())
    return runtimes.check(target.runtime) if ok else (ok, why)


def fingerprint_here(target: Target) -> dict[str, Any]:
    """What identifies measurements taken for ``target`` on this machine (computed without
    starting the runtime, so listing and checking LUTs stays cheap)."""
    from hwdnal_agent.device_info import fingerprint

    found = fingerprint(target.runtime, target.device, target.precision, target.threads,
                        target.batch)
    return {"target": target.name, **found, "hwdnal_version": __version__}


class LocalMeasurer:
    where = "this machine"

    def __init__(self, target: Target) -> None:
        ok, why = usable_here(target)
        if not ok:
            raise UserError(
                f"target '{target.name}' cannot be measured on this machine: {why}; to measure "
                "on the device, start hwdnal-agent there and pass --remote URL "
                "(docs/devices.md)"
            )
        self.target = target
        self._runtime: Any = None
        self._fingerprint = fingerprint_here(target)

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def runtime(self) -> Any:
        if self._runtime is None:
            self._runtime = _device_call(lambda: runtimes.create(
                self.target.runtime, precision=self.target.precision,
                threads=self.target.threads))
        return self._runtime

    def fingerprint(self) -> dict[str, Any]:
        return dict(self._fingerprint)

    def _compiled(self, network: Network, input_shape: Sequence[int] | None) -> Any:
        shape = tuple(int(d) for d in input_shape) if input_shape else None
        if isinstance(network, Deployable):
            if self.target.runtime == "torch-cuda" and network.source is not None:
                return self.runtime.compile(network.source, shape)
            return self.runtime.load(network.data, shape)
        if self.target.runtime == "torch-cuda":
            return self.runtime.compile(network, shape)
        return self.runtime.compile(self._onnx(network, shape), shape)

    def _onnx(self, network: Any, shape: tuple[int, ...] | None) -> bytes:
        """ONNX as the device builds it: exported here, in the target's precision."""
        if not isinstance(network, (bytes, bytearray)):
            from hwdnal.onnx_export import export_onnx

            network = export_onnx(network, shape, check=False)
        return onnx_for_target(bytes(network), self.target)

    def measure(
        self, networks: Sequence[tuple[Network, Sequence[int]]], settings: TimingSettings
    ) -> list[Measurement]:
        def work() -> list[Measurement]:
            compiled = [self._compiled(net, shape) for net, shape in networks]
            return measure_with(compiled, settings)

        return _device_call(work)

    def build(self, network: Network, input_shape: Sequence[int]) -> Deployable:
        shape = tuple(int(d) for d in input_shape)
        source = None
        if isinstance(network, Deployable):
            return network
        if not isinstance(network, (bytes, bytearray)):
            source = network
        onnx_data = self._onnx(network, shape)
        runtime = self.runtime
        data = _device_call(lambda: runtime.build(onnx_data, shape))
        return Deployable(data, runtime.deployable_format, shape, self.fingerprint(), source)

    def run(self, deployable: Deployable, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        def work() -> list[np.ndarray]:
            compiled = self._compiled(deployable, deployable.input_shape)
            return [compiled.run(x) for x in inputs]

        return _device_call(work)

    def close(self) -> None:
        self._runtime = None


def _device_call(work: Any) -> Any:
    """Runtimes raise DeviceError; hwdnal's commands report UserError in one line."""
    try:
        return work()
    except DeviceError as error:
        raise UserError(str(error)) from None
