"""Inference runtimes behind one small interface: compile a network for the device, time it.

A runtime turns ONNX bytes (or, for torch-cuda, a module) into a :class:`Compiled` network
with a fixed input shape; :mod:`hwdnal_agent.timing` times any ``Compiled`` the same way.
Runtimes that build a deployable file (TensorRT engines) also ``build`` and ``load`` it.
Each runtime module imports its heavy library lazily, so listing them never needs CUDA,
TensorRT or torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Sequence

from hwdnal_agent.errors import DeviceError

if TYPE_CHECKING:
    import numpy as np

try:
    from typing import Protocol, runtime_checkable
except ImportError:  # pragma: no cover - Python 3.7
    Protocol = object  # type: ignore[assignment,misc]

    def runtime_checkable(cls):  # type: ignore[no-redef]
        return cls

#: runtime name (as written in target files) -> module implementing it
RUNTIMES: dict[str, str] = {
    "onnxruntime": "hwdnal_agent.runtimes.ort",
    "tensorrt": "hwdnal_agent.runtimes.trt",
    "torch-cuda": "hwdnal_agent.runtimes.torch_cuda",
}


@runtime_checkable
class Compiled(Protocol):
    """A network ready to run on the device with one fixed input shape."""

    input_shape: tuple[int, ...]

    def run(self, x: np.ndarray | None = None) -> np.ndarray:
        """Outputs for ``x`` (float32, ``input_shape``); random input when ``None``."""
        ...

    def timings(self, n: int) -> list[float]:
        """Milliseconds of each of ``n`` back-to-back runs, each synchronised with the device."""
        ...


class Runtime(Protocol):
    """Compiles networks for one device with fixed precision and thread count."""

    name: str
    precision: str
    threads: int
    #: what ``build`` makes: "onnx" (the ONNX file is what deploys) or "engine"
    deployable_format: str

    def compile(self, network: Any, input_shape: Sequence[int]) -> Compiled: ...

    def build(self, onnx_data: bytes, input_shape: Sequence[int]) -> bytes: ...

    def load(self, deployable: bytes, input_shape: Sequence[int] | None) -> Compiled: ...

    def version(self) -> str: ...

    def device_name(self) -> str: ...


def runtime_names() -> list[str]:
    return sorted(RUNTIMES)


def check(name: str) -> tuple[bool, str]:
    """Whether runtime ``name`` can run here, and if not why (cheap: no heavy imports)."""
    return _module(name).check()


def create(name: str, precision: str = "fp32", threads: int = 1) -> Runtime:
    """A runtime by its target-file name; its library is imported now."""
    module = _module(name)
    ok, why = module.check()
    if not ok:
        raise DeviceError(f"the {name} runtime cannot run here: {why}")
    return module.create(precision=precision, threads=threads)


def installed_version(name: str) -> str:
    """Version of the runtime's library, or ``"not installed"``, without importing it."""
    return _module(name).installed_version()


def _module(name: str) -> Any:
    if name not in RUNTIMES:
        raise DeviceError(
            "unknown runtime '{}': use one of {}".format(name, ", ".join(runtime_names())))
    return importlib.import_module(RUNTIMES[name])
