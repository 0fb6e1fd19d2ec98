"""Device memory, streams and event timing for TensorRT without torch.

On a Jetson or a GPU server the agent has no torch: buffers come from NVIDIA's
``cuda-python`` (``cuda.bindings.runtime``, or ``cuda.cudart`` before 12.6). Where torch
with CUDA is importable it is used instead, since it is already initialised and tested.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hwdnal_agent.errors import DeviceError


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]  # cuda-python < 12.6
        except ImportError:
            return None
    return cudart


def _torch_cuda() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def available() -> bool:
    return _torch_cuda() is not None or _cudart() is not None


class _CudartBackend:
    def __init__(self) -> None:
        self.rt = _cudart()
        self.stream = self._ok(self.rt.cudaStreamCreate())

    def _ok(self, result: Any) -> Any:
        error, *values = result if isinstance(result, tuple) else (result,)
        if int(error) != 0:
            raise DeviceError(f"CUDA call failed: {error}")
        return values[0] if len(values) == 1 else values

    def alloc(self, nbytes: int) -> int:
        return int(self._ok(self.rt.cudaMalloc(max(nbytes, 1))))

    def free(self, pointer: int) -> None:
        self.rt.cudaFree(pointer)

    def upload(self, pointer: int, host: np.ndarray) -> None:
        host = np.ascontiguousarray(host)
        self._ok(self.rt.cudaMemcpy(pointer, host.ctypes.data, host.nbytes,
                                    self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice))

    def download(self, pointer: int, host: np.ndarray) -> None:
        self._ok(self.rt.cudaMemcpy(host.ctypes.data, pointer, host.nbytes,
                                    self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost))

    def stream_handle(self) -> int:
        return int(self.stream)

    def synchronize(self) -> None:
        self._ok(self.rt.cudaStreamSynchronize(self.stream))

    def time_ms(self, work: Any, n: int) -> list[float]:
        rt, out = self.rt, []
        start, end = self._ok(rt.cudaEventCreate()), self._ok(rt.cudaEventCreate())
        try:
            for _ in range(n):
                self._ok(rt.cudaEventRecord(start, self.stream))
                work()
                self._ok(rt.cudaEventRecord(end, self.stream))
                self._ok(rt.cudaEventSynchronize(end))
                out.append(float(self._ok(rt.cudaEventElapsedTime(start, end))))
        finally:
            rt.cudaEventDestroy(start)
            rt.cudaEventDestroy(end)
        return out


class _TorchBackend:
    def __init__(self, torch: Any) -> None:
        self.torch = torch
        self.stream = torch.cuda.Stream()
        self.tensors: dict = {}

    def alloc(self, nbytes: int) -> int:
        tensor = self.torch.empty(max(nbytes, 1), dtype=self.torch.uint8, device="cuda")
        self.tensors[tensor.data_ptr()] = tensor
        return int(tensor.data_ptr())

    def free(self, pointer: int) -> None:
        self.tensors.pop(pointer, None)

    def upload(self, pointer: int, host: np.ndarray) -> None:
        source = self.torch.from_numpy(np.ascontiguousarray(host).view(np.uint8).reshape(-1))
        self.tensors[pointer][: source.numel()].copy_(source)
        self.torch.cuda.synchronize()

    def download(self, pointer: int, host: np.ndarray) -> None:
        self.torch.cuda.synchronize()
        flat = self.tensors[pointer][: host.nbytes].cpu().numpy()
        host.reshape(-1).view(np.uint8)[:] = flat

    def stream_handle(self) -> int:
        return int(self.stream.cuda_stream)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def time_ms(self, work: Any, n: int) -> list[float]:
        torch, out = self.torch, []
        torch.cuda.synchronize()
        for _ in range(n):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record(self.stream)
            work()
            end.record(self.stream)
            end.synchronize()
            out.append(float(start.elapsed_time(end)))
        return out


def backend() -> Any:
    """torch's CUDA where importable, else cuda-python; a clear error when neither is."""
    torch = _torch_cuda()
    if torch is not None:
        return _TorchBackend(torch)
    if _cudart() is not None:
        return _CudartBackend()
    raise DeviceError(
        "TensorRT needs CUDA buffers: pip install cuda-python (on a Jetson, the version "
        "matching JetPack's CUDA)"
    )
