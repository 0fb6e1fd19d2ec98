"""The device is elsewhere: `hwdnal-agent` reached over ssh://, tcp:// or exec:.

Modules are exported to ONNX here, on the workstation; only ONNX bytes, engine bytes and
numpy arrays cross the link. A profile's grid travels many models per request, so the
link's round trip is paid per batch, not per point.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hwdnal_agent import client as agent_client
from hwdnal_agent.timing import Measurement, TimingSettings

from hwdnal import __version__
from hwdnal.devices.measurer import Deployable, Network
from hwdnal.devices.precision import onnx_for_target
from hwdnal.errors import UserError

if TYPE_CHECKING:
    import numpy as np

    from hwdnal.targets import Target

T = TypeVar("T")


def read_token(target: Target) -> str | None:
    """The shared token: ``HWDNAL_AGENT_TOKEN``, else the target's ``token_file``."""
    token = os.environ.get("HWDNAL_AGENT_TOKEN", "").strip()
    if token:
        return token
    if target.token_file:
        path = Path(target.token_file).expanduser()
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise UserError(
                f"target '{target.name}': token_file {path} cannot be read "
                f"({error.strerror}); copy the agent's token file there"
            ) from None
    return None


class RemoteMeasurer:
    def __init__(self, target: Target, url: str) -> None:
        self.target = target
        self.where = url
        self._fingerprint: dict[str, Any] | None = None
        self.client = self._call("connecting", lambda: agent_client.connect(
            url, token=read_token(target), command=target.agent_command or None))
        self.hello = self.client.info  # the agent's answer to hello, taken on connecting
        ok, why = self.usable()
        if not ok:
            self.close()
            raise UserError(f"target '{target.name}' is not usable on the agent at {url}: {why}")

    @property
    def name(self) -> str:
        return self.target.name

    def usable(self) -> tuple[bool, str]:
        """Whether the agent's device can measure the target, and if not why."""
        info = (self.hello.get("runtimes") or {}).get(self.target.runtime)
        if not info:
            return False, f"the agent does not know the runtime {self.target.runtime}"
        if not info.get("usable"):
            return False, str(info.get("why", "runtime not usable"))
        return self.target.suits(str(self.hello.get("arch")), bool(self.hello.get("jetson")))

    def fingerprint(self) -> dict[str, Any]:
        if self._fingerprint is None:
            t = self.target
            found = self._call("fingerprint", lambda: self.client.fingerprint(
                t.runtime, t.device, t.precision, t.threads, t.batch))
            self._fingerprint = {"target": t.name, **found, "hwdnal_version": __version__,
                                 "remote": self.where}
        return self._fingerprint

    def _item(self, network: Network, input_shape: Sequence[int] | None
              ) -> tuple[bytes, str, tuple | None]:
        shape = tuple(int(d) for d in input_shape) if input_shape else None
        if isinstance(network, Deployable):
            return network.data, network.format, shape
        if not isinstance(network, (bytes, bytearray)):
            from hwdnal.onnx_export import export_onnx

            network = export_onnx(network, shape, check=False)
        return onnx_for_target(bytes(network), self.target), "onnx", shape

    def measure(
        self, networks: Sequence[tuple[Network, Sequence[int]]], settings: TimingSettings
    ) -> list[Measurement]:
        t = self.target
        items = [self._item(net, shape) for net, shape in networks]
        return self._call("a measurement", lambda: self.client.measure(
            items, t.runtime, t.precision, t.threads, settings))

    def build(self, network: Network, input_shape: Sequence[int]) -> Deployable:
        if isinstance(network, Deployable):
            return network
        data, _, shape = self._item(network, input_shape)
        t = self.target
        deployable, fmt, fingerprint = self._call("the build", lambda: self.client.build(
            data, shape, t.runtime, t.precision, t.threads))
        return Deployable(deployable, fmt, shape,
                          {"target": t.name, **fingerprint, "hwdnal_version": __version__,
                           "remote": self.where})

    def run(self, deployable: Deployable, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        t = self.target
        return self._call("running the deployed file", lambda: self.client.run(
            deployable.data, deployable.format, deployable.input_shape, list(inputs),
            t.runtime, t.precision, t.threads))

    def stats(self) -> dict[str, Any]:
        return self._call("stats", self.client.stats)

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()

    def _call(self, what: str, work: Callable[[], T]) -> T:
        """Agent errors become one line that names the agent and what to do."""
        try:
            return work()
        except agent_client.ConnectionLost as error:
            raise UserError(
                f"lost the connection to the agent at {self.where} during {what} ({error}); "
                "what was measured is kept: re-run the same command to resume"
            ) from None
        except agent_client.RemoteError as error:
            raise UserError(f"the agent at {self.where} refused {what}: {error}") from None
        except agent_client.AgentError as error:
            raise UserError(str(error)) from None
