"""The wire format shared by the agent and its clients (docs/agent-protocol.md).

Every message is one frame::

    magic b"HWDA" | u8 version | u32 BE header length | u64 BE payload length
    | header (UTF-8 JSON object) | payload (the blobs, back to back) | [32-byte HMAC tag]

The header lists the blobs: ``"blobs": [{"kind": "bytes" | "npy", "size": N}, ...]``.
numpy arrays travel as ``.npy`` read with ``allow_pickle=False``; nothing is ever
unpickled or executed. The tag is there only on authenticated connections (see
:mod:`hwdnal_agent.auth`). The frame layout never changes between protocol versions, so
two sides of different versions can always read each other's greeting and refuse.
"""

from __future__ import annotations

import io
import json
import struct
from typing import Any, Callable, Sequence, Union

import numpy as np

from hwdnal_agent import PROTOCOL_VERSION

MAGIC = b"HWDA"
PREFIX = struct.Struct(">4sBIQ")
#: the fixed part of every frame: magic, version, header length, payload length
PREFIX_SIZE = PREFIX.size
TAG_SIZE = 32
MAX_HEADER = 1 << 20
DEFAULT_MAX_PAYLOAD = 1024 << 20
BLOB_KINDS = ("bytes", "npy")
#: dtype kinds an npy blob may carry: bool, integers, floats, complex (no objects, no records)
ARRAY_KINDS = "biufc"

Blob = Union[bytes, np.ndarray]


class FrameError(Exception):
    """A frame that breaks the format; ``code`` is the error code the agent answers with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Truncated(Exception):
    """The stream ended (or timed out) in the middle of a frame."""


class Frame:
    """A frame as read: its version, the raw header and payload (decoded on demand)."""

    def __init__(self, version: int, header_bytes: bytes, payload: bytes,
                 tag: bytes | None) -> None:
        self.version = version
        self.header_bytes = header_bytes
        self.payload = payload
        self.tag = tag

    def decode(self) -> tuple[dict[str, Any], list[Blob]]:
        """The header (a dict) and its blobs; :class:`FrameError` for anything malformed."""
        header = decode_header(self.header_bytes)
        return header, split_blobs(header, self.payload)


def encode_array(array: np.ndarray) -> bytes:
    array = np.asarray(array)
    if array.dtype.kind not in ARRAY_KINDS:
        raise ValueError(f"only numeric arrays travel, not dtype {array.dtype}")
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def decode_array(data: bytes) -> np.ndarray:
    """An ``.npy`` blob as an array; pickles, object and record arrays are refused."""
    if not data.startswith(b"\x93NUMPY"):
        raise FrameError("bad-request", "an npy blob does not start with the .npy magic")
    try:
        array = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except Exception as error:  # ValueError for pickles, others for broken headers
        raise FrameError("bad-request",
                         f"an npy blob cannot be read: {_first_line(error)}") from None
    if array.dtype.kind not in ARRAY_KINDS:
        raise FrameError("bad-request", f"npy blobs must be numeric, not {array.dtype}")
    return array


def encode_frame(header: dict[str, Any], blobs: Sequence[Blob] = (),
                 version: int = PROTOCOL_VERSION) -> tuple[bytes, list[bytes]]:
    """The frame's prefix+header bytes and its blob bytes (kept apart to avoid copying big
    payloads); ``header["blobs"]`` is filled in here."""
    parts: list[bytes] = []
    listing = []
    for blob in blobs:
        if isinstance(blob, np.ndarray):
            data, kind = encode_array(blob), "npy"
        elif isinstance(blob, (bytes, bytearray, memoryview)):
            data, kind = bytes(blob), "bytes"
        else:
            raise TypeError("a blob is bytes or a numpy array, not " + type(blob).__name__)
        parts.append(data)
        listing.append({"kind": kind, "size": len(data)})
    full = dict(header)
    full["blobs"] = listing
    header_bytes = json.dumps(full, separators=(",", ":")).encode("utf-8")
    if len(header_bytes) > MAX_HEADER:
        raise ValueError("the frame header is larger than 1 MiB")
    payload_size = sum(len(p) for p in parts)
    head = PREFIX.pack(MAGIC, version, len(header_bytes), payload_size) + header_bytes
    return head, parts


def decode_header(data: bytes) -> dict[str, Any]:
    try:
        header = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise FrameError("bad-request", "the frame header is not UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise FrameError("bad-request", "the frame header is not a JSON object")
    return header


def split_blobs(header: dict[str, Any], payload: bytes) -> list[Blob]:
    listing = header.get("blobs", [])
    if not isinstance(listing, list):
        raise FrameError("bad-request", "'blobs' in the header is not a list")
    blobs: list[Blob] = []
    offset = 0
    for entry in listing:
        if not isinstance(entry, dict) or entry.get("kind") not in BLOB_KINDS:
            raise FrameError("bad-request", "each blob needs a kind of 'bytes' or 'npy'")
        size = entry.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise FrameError("bad-request", "each blob needs a size (a non-negative integer)")
        data = payload[offset:offset + size]
        if len(data) != size:
            raise FrameError("bad-request", "the blob sizes add up to more than the payload")
        offset += size
        blobs.append(decode_array(data) if entry["kind"] == "npy" else data)
    if offset != len(payload):
        raise FrameError("bad-request", "the blob sizes do not add up to the payload length")
    return blobs


def read_frame(read: Callable[[int], bytes], max_payload: int = DEFAULT_MAX_PAYLOAD,
               mac: Any = None, started: Callable[[], None] | None = None
               ) -> Frame | None:
    """Read one frame with ``read(n)`` (which returns fewer than n bytes only at EOF).

    None at a clean EOF (between frames). ``mac`` (an hmac object) is fed every byte of the
    frame and the 32-byte tag that follows is read too. ``started`` is called once the first
    byte has arrived (the server then arms its mid-frame read timeout). Raises
    :class:`FrameError` for a bad magic or a size over the limits, :class:`Truncated` for an
    EOF inside the frame.
    """
    first = read(1)
    if not first:
        return None
    if started is not None:
        started()
    prefix = first + _exactly(read, PREFIX_SIZE - 1)
    magic, version, header_size, payload_size = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise FrameError("bad-request", f"not an hwdnal-agent frame (bad magic {magic!r})")
    if header_size > MAX_HEADER:
        raise FrameError("too-large",
                         f"the frame header is {header_size} bytes, the limit is 1 MiB")
    if payload_size > max_payload:
        raise FrameError("too-large", f"the request is {payload_size / 2**20:.1f} MiB, the "
                         f"agent's limit is {max_payload / 2**20:.0f} MiB (--max-request-mb)")
    header_bytes = _exactly(read, header_size)
    payload = _exactly(read, payload_size)
    tag = None
    if mac is not None:
        mac.update(prefix)
        mac.update(header_bytes)
        mac.update(payload)
        tag = _exactly(read, TAG_SIZE)
    return Frame(version, header_bytes, payload, tag)


def _exactly(read: Callable[[int], bytes], size: int) -> bytes:
    if size == 0:
        return b""
    data = read(size)
    if len(data) != size:
        raise Truncated(f"the stream ended {len(data)} bytes into a {size}-byte read")
    return data


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def error_header(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "code": code, "error": " ".join(str(message).split())}
