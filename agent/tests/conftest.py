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
import shlex
import signal
import socket
import subprocess
import sys
import time
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

TOKEN = "5" * 16 + "a1b2c3d4" * 6


class LocalAgent:
    """A ``hwdnal-agent serve`` process on 127.0.0.1."""

    def __init__(self, process: subprocess.Popen, port: int, token: str | None,
                 log: Path, lock_file: Path) -> None:
        self.process = process
        self.port = port
        self.url = f"tcp://127.0.0.1:{port}"
        self.token = token
        self.log = log
        self.lock_file = lock_file

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def agent_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "hwdnal_agent", *args]


def start_agent(directory: Path, *extra: str, token: str | None = TOKEN) -> LocalAgent:
    """Start ``serve --listen 127.0.0.1:0`` and wait for the port it bound."""
    directory.mkdir(parents=True, exist_ok=True)
    port_file = directory / "agent.port"
    lock_file = directory / "device.lock"
    log = directory / "agent.log"
    args = ["serve", "--listen", "127.0.0.1:0", "--port-file", str(port_file),
            "--lock-file", str(lock_file)]
    if token is None:
        args.append("--insecure-no-token")
    else:
        token_file = directory / "agent.token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        args += ["--token-file", str(token_file)]
    with open(log, "wb") as handle:
        process = subprocess.Popen(agent_command(*args, *extra), stdin=subprocess.DEVNULL,
                                   stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not port_file.exists():
        if process.poll() is not None:
            raise RuntimeError("the agent exited: " + log.read_text())
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the agent did not start: " + log.read_text())
        time.sleep(0.05)
    return LocalAgent(process, int(port_file.read_text()), token, log, lock_file)


def exec_url(lock_file: Path, *extra: str) -> str:
    return "exec:" + " ".join(shlex.quote(a) for a in agent_command(
        "stdio", "--lock-file", str(lock_file), *extra))


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
