"""The wire format, the token and URL parsing, and the request handlers, without a process."""

from __future__ import annotations

import io
import pickle
import struct
import threading
import time

import numpy as np
import pytest

from hwdnal_agent import PROTOCOL_VERSION
from hwdnal_agent.auth import (
    REQUEST,
    TokenError,
    check_token,
    frame_mac,
    load_token,
    tag_matches,
    write_token,
)
from hwdnal_agent.client import AgentError, AgentURL, parse_url
from hwdnal_agent.protocol import (
    MAGIC,
    PREFIX,
    FrameError,
    Truncated,
    decode_array,
    encode_frame,
    read_frame,
)
from hwdnal_agent.service import Agent, DeviceLock


def roundtrip(header, blobs=(), **kwargs):
    head, parts = encode_frame(header, blobs)
    frame = read_frame(io.BytesIO(head + b"".join(parts)).read, **kwargs)
    return frame.decode()


class Boom:
    """Unpickling this would create ``path``: proof that nothing is ever unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


# -- framing ------------------------------------------------------------------------------
def test_a_frame_carries_a_json_header_and_typed_blobs():
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    header, blobs = roundtrip({"op": "x", "n": 1}, [b"onnx bytes", array, b""])
    assert header["op"] == "x"
    assert header["blobs"] == [{"kind": "bytes", "size": 10},
                               {"kind": "npy", "size": header["blobs"][1]["size"]},
                               {"kind": "bytes", "size": 0}]
    assert blobs[0] == b"onnx bytes" and blobs[2] == b""
    np.testing.assert_array_equal(blobs[1], array)
    assert blobs[1].dtype == np.float32


def test_the_prefix_is_magic_version_and_two_big_endian_lengths():
    head, parts = encode_frame({"op": "hello"}, [b"abc"])
    magic, version, header_size, payload_size = struct.unpack(">4sBIQ", head[:17])
    assert (magic, version, payload_size) == (b"HWDA", PROTOCOL_VERSION, 3)
    assert head[17:] == head[17:17 + header_size]
    assert parts == [b"abc"]


def test_a_clean_eof_between_frames_is_none_and_inside_a_frame_is_truncated():
    assert read_frame(io.BytesIO(b"").read) is None
    head, _ = encode_frame({"op": "hello"})
    with pytest.raises(Truncated):
        read_frame(io.BytesIO(head[:-3]).read)
    with pytest.raises(Truncated):
        read_frame(io.BytesIO(head[:5]).read)


def test_bad_magic_and_sizes_over_the_limits_are_refused_before_reading_them():
    with pytest.raises(FrameError) as bad:
        read_frame(io.BytesIO(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").read)
    assert bad.value.code == "bad-request"
    huge = PREFIX.pack(MAGIC, 1, 10, 1 << 40)
    with pytest.raises(FrameError) as large:
        read_frame(io.BytesIO(huge).read, max_payload=1 << 20)
    assert large.value.code == "too-large" and "--max-request-mb" in str(large.value)
    with pytest.raises(FrameError) as header:
        read_frame(io.BytesIO(PREFIX.pack(MAGIC, 1, 1 << 30, 0)).read)
    assert header.value.code == "too-large"


def test_a_raw_pickle_is_not_a_frame():
    with pytest.raises(FrameError):
        read_frame(io.BytesIO(pickle.dumps({"op": "hello"})).read)


@pytest.mark.parametrize("header", [b"not json", b"[1, 2]", b"\xff\xfe",
                                    b'{"blobs": [{"kind": "pickle", "size": 0}]}',
                                    b'{"blobs": [{"kind": "bytes", "size": 5}]}',
                                    b'{"blobs": [{"kind": "bytes", "size": -1}]}',
                                    b'{"blobs": "many"}'])
def test_bad_headers_and_blob_lists_are_bad_requests(header):
    frame = PREFIX.pack(MAGIC, 1, len(header), 2) + header + b"xy"
    with pytest.raises(FrameError) as error:
        read_frame(io.BytesIO(frame).read).decode()
    assert error.value.code == "bad-request"


def test_npy_blobs_never_unpickle(tmp_path):
    marker = tmp_path / "unpickled"
    buffer = io.BytesIO()
    np.save(buffer, np.array([Boom(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(FrameError) as error:
        decode_array(buffer.getvalue())
    assert error.value.code == "bad-request"
    with pytest.raises(FrameError):
        decode_array(pickle.dumps(Boom(marker)))
    assert not marker.exists()


def test_only_numeric_arrays_travel():
    with pytest.raises(ValueError):
        encode_frame({}, [np.array(["text"], dtype=object)])
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(2, dtype=[("a", "f4")]))
    with pytest.raises(FrameError):
        decode_array(buffer.getvalue())


# -- the token ----------------------------------------------------------------------------
def test_token_files_are_private_long_and_not_overwritten(tmp_path):
    path = tmp_path / "t" / "agent.token"
    token = write_token(path)
    assert len(token) == 64 and int(token, 16) >= 0
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_token(path) == token.encode()
    with pytest.raises(TokenError):
        write_token(path)
    assert write_token(path, force=True) != token
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(TokenError, match="shorter"):
        load_token(tmp_path / "short")
    with pytest.raises(TokenError, match="cannot read"):
        load_token(tmp_path / "missing")


def test_tags_bind_the_token_the_nonce_the_direction_and_the_sequence_number():
    key, nonce = check_token("k" * 40, "test"), b"n" * 32
    frame = b"HWDA frame bytes"

    def tag(key=key, direction=REQUEST, nonce=nonce, seq=0):
        mac = frame_mac(key, direction, nonce, seq)
        mac.update(frame)
        return mac.digest()

    good = tag()
    mac = frame_mac(key, REQUEST, nonce, 0)
    mac.update(frame)
    assert tag_matches(mac, good)
    for other in (tag(key=b"x" * 40), tag(direction=b"resp"), tag(nonce=b"m" * 32), tag(seq=1)):
        assert other != good
    assert frame_mac(None, REQUEST, nonce, 0) is None


# -- URLs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("url, expected", [
    ("ssh://jetson", AgentURL("ssh", host="jetson")),
    ("ssh://me@jetson.lab:2222", AgentURL("ssh", host="jetson.lab", port=2222, user="me")),
    ("ssh://me@10.0.0.7", AgentURL("ssh", host="10.0.0.7", user="me")),
    ("tcp://127.0.0.1:7787", AgentURL("tcp", host="127.0.0.1", port=7787)),
    ("tcp://[::1]:7787/", AgentURL("tcp", host="::1", port=7787)),
    ("exec:docker exec -i box 'hwdnal-agent' stdio",
     AgentURL("exec", argv=["docker", "exec", "-i", "box", "hwdnal-agent", "stdio"])),
])
def test_parse_url(url, expected):
    assert parse_url(url) == expected


@pytest.mark.parametrize("url", ["http://host:1", "jetson", "tcp://host", "tcp://host:99999",
                                 "tcp://host:x", "ssh://", "ssh://@host", "exec:", "exec:'a"])
def test_bad_urls_are_refused_with_one_line(url):
    with pytest.raises(AgentError) as error:
        parse_url(url)
    assert "\n" not in str(error.value)
    if url.startswith("http"):
        assert "use ssh://" in str(error.value)


# -- the handlers ---------------------------------------------------------------------------
@pytest.fixture
def agent(tmp_path):
    return Agent(str(tmp_path / "device.lock"))


def test_hello_checks_the_protocol_and_lists_the_runtimes(agent):
    header, _ = agent.handle({"op": "hello", "protocol": PROTOCOL_VERSION}, [])
    assert header["ok"] and header["protocol"] == PROTOCOL_VERSION
    assert set(header["runtimes"]) >= {"onnxruntime", "tensorrt"}
    assert set(header["runtimes"]["onnxruntime"]) == {"usable", "why", "version"}
    header, _ = agent.handle({"op": "hello", "protocol": PROTOCOL_VERSION + 1}, [])
    assert header["code"] == "protocol" and "install the same hwdnal-agent" in header["error"]


@pytest.mark.parametrize("request_header, blobs, words", [
    ({"op": "dance"}, [], "unknown op"),
    ({}, [], "unknown op"),
    ({"op": "fingerprint", "device": "cpu", "batch": 1}, [], "'runtime'"),
    ({"op": "fingerprint", "runtime": "onnxruntime", "device": "cpu", "batch": 0}, [], "'batch'"),
    ({"op": "fingerprint", "runtime": "onnxruntime", "device": "cpu", "batch": True}, [],
     "'batch'"),
    ({"op": "measure", "runtime": "onnxruntime", "items": []}, [], "'items'"),
    ({"op": "measure", "runtime": "onnxruntime", "settings": {"iterations": 0},
      "items": [{"format": "onnx", "input_shape": None, "blob": 0}]}, [b"m"], "settings"),
    ({"op": "measure", "runtime": "onnxruntime", "settings": {"sleep": 1},
      "items": [{"format": "onnx", "input_shape": None, "blob": 0}]}, [b"m"], "settings"),
    ({"op": "measure", "runtime": "onnxruntime",
      "items": [{"format": "onnx", "input_shape": None, "blob": 1}]}, [b"m"], "blob 0..0"),
    ({"op": "measure", "runtime": "onnxruntime",
      "items": [{"format": "pickle", "input_shape": None, "blob": 0}]}, [b"m"], "'format'"),
    ({"op": "measure", "runtime": "onnxruntime",
      "items": [{"format": "onnx", "input_shape": [1] * 9, "blob": 0}]}, [b"m"], "input_shape"),
    ({"op": "build", "runtime": "onnxruntime", "input_shape": [1, -3]}, [b"m"], "input_shape"),
    ({"op": "build", "runtime": "onnxruntime", "input_shape": [1, 3]}, [], "blob"),
    ({"op": "build", "runtime": "onnxruntime", "input_shape": [1, 3]},
     [np.zeros(3)], "'bytes' blob"),
    ({"op": "run", "runtime": "onnxruntime", "format": "onnx", "input_shape": None},
     [b"m", b"not npy"], "must be npy"),
    ({"op": "run", "runtime": "onnxruntime", "format": "onnx", "threads": 0,
      "input_shape": None}, [b"m"], "'threads'"),
    ({"op": "run", "runtime": "onnxruntime", "precision": "fp8", "format": "onnx",
      "input_shape": None}, [b"m"], "'precision'"),
])
def test_malformed_requests_are_bad_requests(agent, request_header, blobs, words):
    header, out = agent.handle(request_header, blobs)
    assert header["ok"] is False and header["code"] == "bad-request", header
    assert words in header["error"] and out == []


def test_device_and_internal_errors_are_answered_and_counted(agent, monkeypatch):
    header, _ = agent.handle({"op": "fingerprint", "runtime": "tvm", "device": "cpu",
                              "batch": 1}, [])
    assert header["code"] == "device" and "unknown runtime 'tvm'" in header["error"]
    pytest.importorskip("onnxruntime")
    header, _ = agent.handle({"op": "measure", "runtime": "onnxruntime",
                              "items": [{"format": "onnx", "input_shape": None, "blob": 0}]},
                             [b"these are not ONNX bytes"])
    assert header["code"] == "device" and "cannot load the model" in header["error"]

    def broken(header, blobs):
        raise ZeroDivisionError("division by zero\nand a second line")

    monkeypatch.setitem(agent._handlers, "stats", broken)
    header, _ = agent.handle({"op": "stats"}, [])
    assert header == {"ok": False, "code": "internal",
                      "error": "ZeroDivisionError: division by zero"}
    monkeypatch.undo()
    stats, _ = agent.handle({"op": "stats"}, [])
    assert stats["errors"] == 3
    assert stats["requests"] == {"fingerprint": 1, "measure": 1, "stats": 2}


def test_the_device_lock_excludes_other_holders_of_the_same_lock_file(tmp_path):
    # two DeviceLocks are two open files: flock keeps them apart as it keeps two processes
    first, second = DeviceLock(str(tmp_path / "d.lock")), DeviceLock(str(tmp_path / "d.lock"))
    spans = []

    def hold(lock):
        with lock:
            start = time.monotonic()
            time.sleep(0.2)
            spans.append((start, time.monotonic()))

    threads = [threading.Thread(target=hold, args=(lock,)) for lock in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    spans.sort()
    assert spans[0][1] <= spans[1][0]
