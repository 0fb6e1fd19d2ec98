"""What the agent does with a request: no I/O here, only headers and blobs in and out.

:class:`Agent` answers each request's header and blobs with a response header and blobs,
counts requests (``stats`` proves which measurements the agent took) and runs everything
that touches the device under one device lock, shared by every connection of this process
(a thread lock) and by every agent process on the machine (an ``flock`` on a lock file):
two clients, or two ``stdio`` agents started by two ssh sessions, queue and never interleave.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from hwdnal_agent import PROTOCOL_VERSION, __version__, device_info, runtimes
from hwdnal_agent.errors import DeviceError
from hwdnal_agent.protocol import error_header
from hwdnal_agent.timing import TimingSettings, measure_with

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("hwdnal_agent")

DEFAULT_LOCK_FILE = "~/.cache/hwdnal-agent/device.lock"
MAX_DIMS = 8
FORMATS = ("onnx", "engine")
PRECISIONS = ("fp32", "fp16", "int8")


class BadRequest(Exception):
    """A request whose fields are missing or of the wrong type (code "bad-request")."""


class ProtocolRefused(Exception):
    """A client speaking another protocol version (code "protocol"; the connection closes)."""


class DeviceLock:
    """One thing at a time on this device: a thread lock plus an exclusive ``flock``.

    Without fcntl (Windows) or a writable lock file, only this process is serialised.
    """

    def __init__(self, path: str | None = DEFAULT_LOCK_FILE) -> None:
        self._thread_lock = threading.Lock()
        self.path: Path | None = None
        if path and fcntl is not None:
            target = Path(os.path.expanduser(path))
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch(exist_ok=True)
                self.path = target
            except OSError as error:
                log.warning("cannot use the lock file %s (%s): other agent processes on this "
                            "device are not kept out", target, error.strerror or error)
        self._handle: Any = None

    def __enter__(self) -> DeviceLock:
        self._thread_lock.acquire()
        if self.path is not None:
            try:
                self._handle = open(self.path, "a+b")
                fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX)
            except OSError as error:
                if self._handle is not None:
                    self._handle.close()
                    self._handle = None
                log.warning("cannot lock %s: %s", self.path, error.strerror or error)
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self._handle is not None:
                fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
                self._handle.close()
        finally:
            self._handle = None
            self._thread_lock.release()


class Agent:
    """The request handlers of one agent process (thread-safe)."""

    def __init__(self, lock_file: str | None = DEFAULT_LOCK_FILE) -> None:
        self.device_lock = DeviceLock(lock_file)
        self._stats_lock = threading.Lock()
        self._runtime_lock = threading.Lock()
        self.requests: Counter = Counter()
        self.models_measured = 0
        self.errors = 0
        #: (start, end) wall-clock times of the latest device-locked operations
        self.busy: deque[tuple[float, float]] = deque(maxlen=100)
        self._runtimes: dict[tuple[str, str, int], Any] = {}
        self._handlers: dict[str, Callable[[dict[str, Any], list[Any]], tuple[dict, list]]] = {
            "hello": self._hello,
            "fingerprint": self._fingerprint,
            "measure": self._measure,
            "build": self._build,
            "run": self._run,
            "stats": self._stats,
        }

    # -- dispatch ---------------------------------------------------------------------
    def handle(self, header: dict[str, Any], blobs: list[Any]) -> tuple[dict[str, Any], list]:
        """The response (header, blobs) to one request; never raises."""
        op = header.get("op")
        with self._stats_lock:
            self.requests[op if isinstance(op, str) and op in self._handlers else "?"] += 1
        try:
            handler = self._handlers.get(op) if isinstance(op, str) else None
            if handler is None:
                raise BadRequest("unknown op {!r}: use one of {}".format(
                    op, ", ".join(sorted(self._handlers))))
            response, out = handler(header, blobs)
            response = dict(response)
            response["ok"] = True
            return response, out
        except BadRequest as error:
            return self._error("bad-request", str(error))
        except ProtocolRefused as error:
            return self._error("protocol", str(error))
        except DeviceError as error:
            return self._error("device", str(error))
        except Exception as error:
            log.exception("internal error in %r", op)
            text = str(error).strip()
            return self._error("internal", "{}: {}".format(
                type(error).__name__, text.splitlines()[0] if text else ""))

    def _error(self, code: str, message: str) -> tuple[dict[str, Any], list]:
        with self._stats_lock:
            self.errors += 1
        return error_header(code, message), []

    # -- handlers ---------------------------------------------------------------------
    def _hello(self, header: dict[str, Any], blobs: list[Any]) -> tuple[dict, list]:
        protocol = header.get("protocol")
        if protocol != PROTOCOL_VERSION:
            raise ProtocolRefused(
                f"this hwdnal-agent {__version__} speaks protocol {PROTOCOL_VERSION}, the client "
                f"speaks {protocol}: install the same hwdnal-agent version on both sides")
        return {"protocol": PROTOCOL_VERSION, "agent_version": __version__,
                "python": platform.python_version(), "host": socket.gethostname(),
                "arch": platform.machine().lower(), "jetson": device_info.is_jetson(),
                "runtimes": runtime_table()}, []

    def _fingerprint(self, header: dict[str, Any], blobs: list[Any]) -> tuple[dict, list]:
        runtime = _name(header, "runtime")
        runtimes.installed_version(runtime)  # unknown runtime -> DeviceError
        found = device_info.fingerprint(
            runtime, _text(header, "device"), _precision(header), _threads(header),
            _positive_int(header, "batch"))
        return {"fingerprint": found}, []

    def _measure(self, header: dict[str, Any], blobs: list[Any]) -> tuple[dict, list]:
        settings_data = header.get("settings", {})
        if not isinstance(settings_data, dict):
            raise BadRequest("'settings' must be an object of timing settings")
        try:
            settings = TimingSettings.from_dict(settings_data)
        except (TypeError, ValueError) as error:
            raise BadRequest(f"bad timing settings: {error}") from None
        items = header.get("items")
        if not isinstance(items, list) or not items:
            raise BadRequest("'items' must be a non-empty list")
        parsed = []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise BadRequest(f"item {index} is not an object")
            parsed.append((_format(item), _shape(item, "input_shape", optional=True),
                           _bytes_blob(blobs, item.get("blob"), f"item {index}")))
        runtime = self._runtime(header)
        with self._device():
            compiled = [self._load(runtime, fmt, data, shape) for fmt, shape, data in parsed]
            results = measure_with(compiled, settings)
            del compiled
        with self._stats_lock:
            self.models_measured += len(results)
        return {"results": [m.to_dict() for m in results]}, []

    def _build(self, header: dict[str, Any], blobs: list[Any]) -> tuple[dict, list]:
        shape = _shape(header, "input_shape")
        onnx = _bytes_blob(blobs, 0, "the ONNX model")
        if len(blobs) > 1:
            raise BadRequest("build takes one blob, the ONNX model (INT8 comes as Q/DQ nodes "
                             "in it, FP16 as an FP16 graph)")
        runtime = self._runtime(header)
        name = _name(header, "runtime")
        with self._device():
            deployable = runtime.build(onnx, shape)
        device = header.get("device") or ("cpu" if name == "onnxruntime" else "cuda")
        if not isinstance(device, str):
            raise BadRequest("'device' must be a string")
        found = device_info.fingerprint(name, device, runtime.precision, runtime.threads,
                                        shape[0])
        return {"format": runtime.deployable_format, "fingerprint": found}, [bytes(deployable)]

    def _run(self, header: dict[str, Any], blobs: list[Any]) -> tuple[dict, list]:
        fmt = _format(header)
        shape = _shape(header, "input_shape", optional=True)
        deployable = _bytes_blob(blobs, 0, "the deployable model")
        inputs = blobs[1:]
        for index, blob in enumerate(inputs, start=1):
            if not isinstance(blob, np.ndarray):
                raise BadRequest(f"blob {index} (an input) must be npy")
        runtime = self._runtime(header)
        with self._device():
            compiled = self._load(runtime, fmt, deployable, shape)
            outputs = [np.asarray(compiled.run(np.ascontiguousarray(x, dtype=np.float32)),
                                  dtype=np.float32) for x in inputs]
        return {"outputs": len(outputs)}, outputs

    def _stats(self, header: dict[str, Any], blobs: list[Any]) -> tuple[dict, list]:
        with self._stats_lock:
            return {"requests": dict(self.requests), "models_measured": self.models_measured,
                    "errors": self.errors, "device_busy": [list(b) for b in self.busy]}, []

    # -- helpers ----------------------------------------------------------------------
    def _device(self) -> _Busy:
        return _Busy(self)

    def _runtime(self, header: dict[str, Any]) -> Any:
        key = (_name(header, "runtime"), _precision(header), _threads(header))
        with self._runtime_lock:
            if key not in self._runtimes:
                self._runtimes[key] = runtimes.create(key[0], precision=key[1], threads=key[2])
            return self._runtimes[key]

    @staticmethod
    def _load(runtime: Any, fmt: str, data: bytes, shape: tuple[int, ...] | None) -> Any:
        if fmt == "onnx":
            return runtime.compile(data, shape)
        if fmt != runtime.deployable_format:
            raise DeviceError(f"the {runtime.name} runtime deploys "
                              f"'{runtime.deployable_format}' files, not '{fmt}'")
        return runtime.load(data, shape)


class _Busy:
    """The device lock, with the time it was held recorded for ``stats``."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.start = 0.0

    def __enter__(self) -> _Busy:
        self.agent.device_lock.__enter__()
        self.start = time.time()
        return self

    def __exit__(self, *exc: Any) -> None:
        end = time.time()
        try:
            with self.agent._stats_lock:
                self.agent.busy.append((self.start, end))
        finally:
            self.agent.device_lock.__exit__(*exc)


def runtime_table() -> dict[str, dict[str, Any]]:
    """Each runtime: usable here or not, why, and its library's version."""
    table = {}
    for name in runtimes.runtime_names():
        try:
            usable, why = runtimes.check(name)
            version = runtimes.installed_version(name)
        except Exception as error:  # a broken runtime module must not break hello
            usable, why, version = False, f"{type(error).__name__}: {error}", "?"
        table[name] = {"usable": bool(usable), "why": str(why), "version": str(version)}
    return table


# -- field validation -------------------------------------------------------------------
def _text(header: dict[str, Any], key: str) -> str:
    value = header.get(key)
    if not isinstance(value, str) or not value or len(value) > 200:
        raise BadRequest(f"'{key}' must be a non-empty string")
    return value


def _name(header: dict[str, Any], key: str) -> str:
    return _text(header, key)


def _precision(header: dict[str, Any]) -> str:
    value = header.get("precision", "fp32")
    if value not in PRECISIONS:
        raise BadRequest("'precision' must be one of {}".format(", ".join(PRECISIONS)))
    return value


def _positive_int(header: dict[str, Any], key: str, default: int | None = None) -> int:
    value = header.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest(f"'{key}' must be a positive integer")
    return value


def _threads(header: dict[str, Any]) -> int:
    value = _positive_int(header, "threads", 1)
    if value > 1024:
        raise BadRequest("'threads' must be at most 1024")
    return value


def _format(header: dict[str, Any]) -> str:
    value = header.get("format")
    if value not in FORMATS:
        raise BadRequest("'format' must be one of {}".format(", ".join(FORMATS)))
    return value


def _shape(header: dict[str, Any], key: str, optional: bool = False
           ) -> tuple[int, ...] | None:
    value = header.get(key)
    if value is None and optional:
        return None
    if (not isinstance(value, list) or not 1 <= len(value) <= MAX_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 1 << 20
                       for d in value)):
        raise BadRequest(f"'{key}' must be a list of 1 to {MAX_DIMS} positive integers")
    return tuple(value)


def _bytes_blob(blobs: Sequence[Any], index: Any, what: str) -> bytes:
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(blobs):
        raise BadRequest(f"{what} must be blob 0..{len(blobs) - 1} of the request, not {index!r}")
    blob = blobs[index]
    if not isinstance(blob, bytes):
        raise BadRequest(f"{what} (blob {index}) must be a 'bytes' blob")
    return blob
