"""Inference runtimes behind one small interface: compile a network for a device, time it.

A runtime turns an ``nn.Module`` (exported to ONNX on the way) or an ONNX file into a
:class:`Compiled` network with a fixed input shape; :mod:`hwdnal.runtimes.measure` times any
``Compiled`` the same way (warm-up, many iterations, median and p90, interleaving). Runtimes
know nothing of gates, LUTs or search. Each runtime module imports its heavy library lazily,
so listing targets never needs CUDA, TensorRT or even torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from hwdnal.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

#: runtime name (as written in target files) -> module implementing it
RUNTIMES: dict[str, str] = {
    "onnxruntime": "hwdnal.runtimes.ort",
    "tensorrt": "hwdnal.runtimes.trt",
    "torch-cuda": "hwdnal.runtimes.torch_cuda",
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

    def compile(
        self, network: nn.Module | bytes | str | Path, input_shape: Sequence[int]
    ) -> Compiled: ...

    def version(self) -> str: ...

    def device_name(self) -> str: ...


def runtime_names() -> list[str]:
    return sorted(RUNTIMES)


def check(name: str) -> tuple[bool, str]:
    """Whether runtime ``name`` can run here, and if not why (cheap: no heavy imports)."""
    return _module(name).check()


def create(name: str, *, precision: str = "fp32", threads: int = 1) -> Runtime:
    """A runtime by its target-file name; its library is imported now."""
    return _module(name).create(precision=precision, threads=threads)


def installed_version(name: str) -> str:
    """Version of the runtime's library, or ``"not installed"``, without importing it."""
    return _module(name).installed_version()


def _module(name: str):
    if name not in RUNTIMES:
        raise UserError(f"unknown runtime '{name}': use one of {', '.join(runtime_names())}")
    return importlib.import_module(RUNTIMES[name])
