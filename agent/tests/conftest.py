"""Fixtures that start REAL agents on this machine (tcp on 127.0.0.1 with a token, and
``exec:`` over stdio) and speak to them raw or through :mod:`hwdnal_agent.client`.

Copy-friendly pattern for other test suites::

    agent = start_agent(tmp_path)              # python -m hwdnal_agent serve ... (a process)
    with connect(agent.url, token=agent.token) as client: ...
    url = exec_url(lock_file)                  # "exec:<python> -m hwdnal_agent stdio ..."

Every agent gets its own lock file (never the user's ~/.cache one) and writes its stderr
to a log file (a pipe nobody reads would fill up and block it).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

AGENT_DIR = Path(__file__).resolve().parents[1]
# the agent processes import hwdnal_agent from this checkout even where it is not installed
if str(AGENT_DIR) not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(AGENT_DIR), os.environ.get("PYTHONPATH")) if p)
if str(AGENT_DIR) not in sys.path:
    sys.path.insert(0, str(AGENT_DIR))

from hwdnal_agent import PROTOCOL_VERSION  # noqa: E402
from hwdnal_agent.auth import REQUEST, RESPONSE, frame_mac, tag_matches  # noqa: E402
from hwdnal_agent.protocol import TAG_SIZE, Frame, encode_frame, read_frame  # noqa: E402

from .processes import TOKEN, LocalAgent, agent_command, exec_url, start_agent  # noqa: E402


class RawClient:
    """Speaks frames by hand, to misbehave on purpose."""

    def __init__(self, port: int, key: bytes | None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.reader = self.sock.makefile("rb")
        self.key = key
        frame = read_frame(self.reader.read)
        assert frame is not None
        self.greeting, _ = frame.decode()
        self.nonce = bytes.fromhex(self.greeting["nonce"])
        self.seq = 0

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frame_bytes(self, header: dict[str, Any], blobs: Any = (), version: int = PROTOCOL_VERSION,
                    seq: int | None = None) -> bytes:
        """A whole request frame, tagged for ``seq`` (default: the next one) when keyed."""
        head, parts = encode_frame(header, blobs, version=version)
        data = head + b"".join(parts)
        if self.key is not None:
            mac = frame_mac(self.key, REQUEST, self.nonce, self.seq if seq is None else seq)
            mac.update(data)
            data += mac.digest()
        return data

    def request(self, header: dict[str, Any], blobs: Any = (), **kwargs: Any
                ) -> tuple[dict[str, Any], list[Any], bool]:
        self.send_raw(self.frame_bytes(header, blobs, **kwargs))
        return self.response()

    def response(self) -> tuple[dict[str, Any], list[Any], bool]:
        """(header, blobs, whether the tag is valid)."""
        mac = frame_mac(self.key, RESPONSE, self.nonce, self.seq)
        frame: Frame | None = read_frame(self.reader.read, mac=mac)
        assert frame is not None, "the agent closed without answering"
        self.seq += 1
        header, blobs = frame.decode()
        return header, blobs, mac is None or tag_matches(mac, frame.tag)

    def closed_by_agent(self, timeout: float = 10.0) -> bool:
        """Whether the agent hangs up (EOF) within ``timeout`` seconds."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.reader.read(1 << 16)
                if not data:
                    return True
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def error_frame(data: bytes) -> dict[str, Any]:
    """The header of the first frame in ``data`` (an error answer, possibly with a bad tag)."""
    import io

    frame = read_frame(io.BytesIO(data).read)
    assert frame is not None
    return frame.decode()[0]


def make_model(channels: int = 4, size: int = 8, seed: int = 0) -> bytes:
    """A tiny Conv+Relu ONNX model, input ``[1, 3, size, size]``."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, size, size])
    weight = helper.make_tensor("w", TensorProto.FLOAT, [channels, 3, 3, 3],
                                rng.standard_normal(channels * 27).astype(np.float32).tolist())
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "tiny", [x], [y], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture(scope="module")
def tcp_agent(tmp_path_factory: pytest.TempPathFactory):
    """One token-protected agent for a test module; it must stop cleanly on SIGTERM."""
    agent = start_agent(tmp_path_factory.mktemp("tcp-agent"))
    yield agent
    code = agent.stop()
    assert code == 0, agent.log.read_text()


@pytest.fixture(scope="module")
def exec_agent_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return exec_url(tmp_path_factory.mktemp("exec-agent") / "device.lock")


@pytest.fixture(params=["tcp", "exec"])
def agent_url(request: pytest.FixtureRequest, tcp_agent: LocalAgent, exec_agent_url: str
              ) -> tuple[str, str | None]:
    """(url, token) of a tcp agent and of an exec: agent."""
    if request.param == "tcp":
        return tcp_agent.url, tcp_agent.token
    return exec_agent_url, None


@pytest.fixture(scope="session")
def models() -> list[bytes]:
    return [make_model(4, seed=1), make_model(8, seed=2), make_model(16, seed=3)]


@pytest.fixture(scope="session")
def kit() -> Any:
    """The helpers above, for test modules (which cannot import this conftest by name)."""
    from types import SimpleNamespace

    return SimpleNamespace(start_agent=start_agent, exec_url=exec_url, RawClient=RawClient,
                           error_frame=error_frame, make_model=make_model, TOKEN=TOKEN,
                           agent_command=agent_command, TAG_SIZE=TAG_SIZE)
