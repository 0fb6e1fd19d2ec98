"""A real agent process, reached over tcp (with its token) and exec: (stdio)."""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import hwdnal_agent.client as client_module
from hwdnal_agent import PROTOCOL_VERSION
from hwdnal_agent.auth import RESPONSE, frame_mac
from hwdnal_agent.client import (
    AuthError,
    ConnectionLost,
    ProtocolMismatch,
    RemoteError,
    Unreachable,
    connect,
)
from hwdnal_agent.protocol import MAGIC, PREFIX, encode_frame, read_frame
from hwdnal_agent.timing import Measurement, TimingSettings

ort = pytest.importorskip("onnxruntime")

QUICK = TimingSettings(warmup=1, iterations=5)
SHAPE = (1, 3, 8, 8)


def assert_serves(url, token=None):
    """The agent still answers a correct client."""
    with connect(url, token=token, timeout=20) as client:
        assert client.hello()["protocol"] == PROTOCOL_VERSION


def direct(model: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


# -- what it does -----------------------------------------------------------------------------
def test_hello_and_fingerprint(agent_url):
    url, token = agent_url
    with connect(url, token=token) as client:
        assert client.greeting["agent"] == "hwdnal-agent"
        assert client.greeting["auth"] == ("hmac-sha256" if url.startswith("tcp") else "none")
        info = client.hello()
        assert info["protocol"] == PROTOCOL_VERSION
        assert info["runtimes"]["onnxruntime"]["usable"] is True
        assert info["python"].count(".") == 2 and info["host"]
        found = client.fingerprint("onnxruntime", "cpu", "fp32", 2, 4)
        assert found["runtime"] == "onnxruntime" and found["threads"] == 2
        assert found["batch"] == 4 and found["runtime_version"] == ort.__version__
        assert found["host"] == socket.gethostname()


def test_measure_times_many_models_in_one_request(agent_url, models):
    url, token = agent_url
    with connect(url, token=token) as client:
        before = client.stats()
        results = client.measure([(models[0], "onnx", SHAPE), (models[1], "onnx", None),
                                  (models[2], "onnx", list(SHAPE))],
                                 "onnxruntime", "fp32", 1, QUICK)
        after = client.stats()
    assert len(results) == 3 and all(isinstance(r, Measurement) for r in results)
    assert all(r.samples == 5 and 0 < r.median_ms <= r.p90_ms for r in results)
    # the agent did the measuring: one request, three models
    assert after["requests"]["measure"] == before["requests"].get("measure", 0) + 1
    assert after["models_measured"] == before["models_measured"] + 3


def test_build_and_run_match_onnxruntime_itself(agent_url, models):
    url, token = agent_url
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(3)]
    with connect(url, token=token) as client:
        deployable, fmt, found = client.build(models[1], SHAPE, "onnxruntime", "fp32", 1)
        assert fmt == "onnx" and deployable == models[1]
        assert found["runtime"] == "onnxruntime" and found["batch"] == 1
        outputs = client.run(deployable, fmt, SHAPE, inputs, "onnxruntime", "fp32", 1)
    assert len(outputs) == 3
    for x, y in zip(inputs, outputs):
        assert y.dtype == np.float32 and y.shape == (1, 8, 8, 8)
        np.testing.assert_allclose(y, direct(models[1], x), rtol=1e-5, atol=1e-5)


def test_errors_come_back_as_remote_errors_and_the_connection_goes_on(agent_url):
    url, token = agent_url
    with connect(url, token=token) as client:
        with pytest.raises(RemoteError) as device:
            client.measure([(b"not onnx", "onnx", None)], "onnxruntime", "fp32", 1, QUICK)
        assert device.value.code == "device" and url in str(device.value)
        with pytest.raises(RemoteError) as bad:
            client.measure([(b"x", "onnx", [1] * 9)], "onnxruntime", "fp32", 1, QUICK)
        assert bad.value.code == "bad-request"
        with pytest.raises(RemoteError) as extra:  # INT8 arrives as Q/DQ ONNX, nothing else
            client.request({"op": "build", "runtime": "onnxruntime", "precision": "fp32",
                            "threads": 1, "input_shape": list(SHAPE)},
                           [b"x", np.zeros(SHAPE, np.float32)])
        assert extra.value.code == "bad-request"
        assert client.hello()["protocol"] == PROTOCOL_VERSION


# -- tokens ---------------------------------------------------------------------------------
def test_a_wrong_token_is_refused_and_the_agent_goes_on(tcp_agent):
    with pytest.raises(AuthError) as error:
        connect(tcp_agent.url, token="0" * 64)
    assert "token differs" in str(error.value) and tcp_agent.url in str(error.value)
    assert_serves(tcp_agent.url, tcp_agent.token)


def test_no_token_is_refused_with_how_to_give_one(tcp_agent, monkeypatch):
    monkeypatch.delenv("HWDNAL_AGENT_TOKEN", raising=False)
    with pytest.raises(AuthError) as error:
        connect(tcp_agent.url)
    assert "HWDNAL_AGENT_TOKEN" in str(error.value) and "\n" not in str(error.value)
    monkeypatch.setenv("HWDNAL_AGENT_TOKEN", tcp_agent.token)
    assert_serves(tcp_agent.url)


def test_untagged_forged_and_replayed_frames_are_refused(tcp_agent, kit):
    key = tcp_agent.token.encode()
    raw = kit.RawClient(tcp_agent.port, key)
    assert raw.request({"op": "hello", "protocol": PROTOCOL_VERSION})[0]["ok"]
    replay = raw.frame_bytes({"op": "stats"}, seq=0)  # a frame tagged for request 0, again
    raw.send_raw(replay)
    header, _, authentic = raw.response()
    assert header["code"] == "auth" and not authentic
    assert raw.closed_by_agent()
    raw.close()
    # a frame tagged with another key
    raw = kit.RawClient(tcp_agent.port, b"f" * 64)
    header, _, authentic = raw.request({"op": "stats"})
    assert header["code"] == "auth" and not authentic
    raw.close()
    # the token never crosses the wire: the greeting holds only a nonce
    assert tcp_agent.token not in json.dumps(raw.greeting)
    assert_serves(tcp_agent.url, tcp_agent.token)


def test_the_client_refuses_an_agent_that_does_not_know_the_token():
    """An impostor greets like an agent but cannot tag its answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def impostor():
        conn, _ = listener.accept()
        with conn:
            head, _ = encode_frame({"agent": "hwdnal-agent", "protocol": PROTOCOL_VERSION,
                                    "auth": "hmac-sha256", "nonce": "00" * 32})
            conn.sendall(head)
            reader = conn.makefile("rb")
            read_frame(reader.read, mac=frame_mac(b"x" * 32, RESPONSE, b"", 0))
            head, _ = encode_frame({"ok": True, "protocol": PROTOCOL_VERSION})
            conn.sendall(head + os.urandom(32))
            time.sleep(0.5)

    thread = threading.Thread(target=impostor, daemon=True)
    thread.start()
    url = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    with pytest.raises(AuthError, match="without a valid tag"):
        connect(url, token="a" * 64, timeout=10)
    thread.join(5)
    listener.close()


# -- versions -------------------------------------------------------------------------------
def test_a_newer_agent_is_refused_by_the_client(agent_url, monkeypatch):
    url, token = agent_url
    monkeypatch.setattr(client_module, "PROTOCOL_VERSION", PROTOCOL_VERSION + 1)
    with pytest.raises(ProtocolMismatch) as error:
        connect(url, token=token)
    message = str(error.value)
    assert f"speaks protocol {PROTOCOL_VERSION}" in message
    assert "install the same hwdnal-agent version" in message and url in message
    monkeypatch.undo()
    assert_serves(url, token)


def test_a_client_of_another_protocol_is_refused_by_the_agent(tcp_agent, kit):
    key = tcp_agent.token.encode()
    raw = kit.RawClient(tcp_agent.port, key)
    header, _, authentic = raw.request({"op": "hello", "protocol": PROTOCOL_VERSION + 1})
    assert header["code"] == "protocol" and authentic
    assert "install the same hwdnal-agent version" in header["error"]
    assert raw.closed_by_agent()
    raw.close()
    raw = kit.RawClient(tcp_agent.port, key)  # a frame of another version
    header, _, _ = raw.request({"op": "hello", "protocol": PROTOCOL_VERSION + 1},
                               version=PROTOCOL_VERSION + 1)
    assert header["code"] == "protocol"
    assert raw.closed_by_agent()
    raw.close()
    assert_serves(tcp_agent.url, tcp_agent.token)


# -- abuse ----------------------------------------------------------------------------------
def test_garbage_is_answered_with_an_error_and_a_hang_up(tcp_agent, kit):
    raw = kit.RawClient(tcp_agent.port, tcp_agent.token.encode())
    raw.send_raw(b"GET / HTTP/1.1\r\nHost: device\r\n\r\n" + os.urandom(2000))
    header, _, _ = raw.response()
    assert header["code"] == "bad-request" and "bad magic" in header["error"]
    assert raw.closed_by_agent()
    raw.close()
    assert tcp_agent.alive()
    assert_serves(tcp_agent.url, tcp_agent.token)


def test_pickles_are_refused_never_loaded(tcp_agent, kit, tmp_path):
    import pickle

    marker = tmp_path / "unpickled"

    class Boom:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    key = tcp_agent.token.encode()
    raw = kit.RawClient(tcp_agent.port, key)  # a bare pickle instead of a frame
    raw.send_raw(pickle.dumps({"op": "hello"}))
    assert raw.response()[0]["code"] == "bad-request"
    raw.close()
    buffer = io.BytesIO()  # an npy blob holding a pickled object array
    np.save(buffer, np.array([Boom()], dtype=object), allow_pickle=True)
    raw = kit.RawClient(tcp_agent.port, key)
    payload = b"onnx" + buffer.getvalue()
    header_json = json.dumps({"op": "run", "runtime": "onnxruntime", "format": "onnx",
                              "input_shape": None,
                              "blobs": [{"kind": "bytes", "size": 4},
                                        {"kind": "npy", "size": len(payload) - 4}]}).encode()
    frame = PREFIX.pack(MAGIC, PROTOCOL_VERSION, len(header_json), len(payload))
    frame += header_json + payload
    mac = frame_mac(key, b"req", raw.nonce, 0)
    mac.update(frame)
    raw.send_raw(frame + mac.digest())
    header, _, authentic = raw.response()
    assert header["code"] == "bad-request" and "npy" in header["error"] and authentic
    raw.close()
    assert not marker.exists()
    assert_serves(tcp_agent.url, tcp_agent.token)


def test_oversize_and_truncated_frames_and_silent_clients(tmp_path, kit):
    agent = kit.start_agent(tmp_path, "--max-request-mb", "1", "--frame-timeout", "1")
    try:
        key = agent.token.encode()
        raw = kit.RawClient(agent.port, key)  # a header that claims a 1 TiB payload
        raw.send_raw(PREFIX.pack(MAGIC, PROTOCOL_VERSION, 2, 1 << 40) + b"{}" + b"x" * 1000)
        header, _, _ = raw.response()
        assert header["code"] == "too-large" and "--max-request-mb" in header["error"]
        assert raw.closed_by_agent()
        raw.close()
        for size in (2 << 20, 64 << 20):  # over the limit, honestly
            client = connect(agent.url, token=agent.token)
            with pytest.raises(RemoteError) as error:
                client.measure([(b"\0" * size, "onnx", None)], "onnxruntime", "fp32", 1, QUICK)
            assert error.value.code == "too-large" and "limit is 1 MiB" in str(error.value)
            client.close()
        raw = kit.RawClient(agent.port, key)  # half a frame, then EOF
        whole = raw.frame_bytes({"op": "stats"})
        raw.send_raw(whole[:len(whole) // 2])
        raw.sock.shutdown(socket.SHUT_WR)
        assert raw.closed_by_agent()
        raw.close()
        raw = kit.RawClient(agent.port, key)  # half a frame, then silence
        raw.send_raw(whole[:10])
        started = time.monotonic()
        assert raw.closed_by_agent(timeout=10)
        assert time.monotonic() - started < 8
        raw.close()
        raw = kit.RawClient(agent.port, key)  # silence between frames is fine
        time.sleep(1.5)
        assert raw.request({"op": "stats"})[0]["ok"]
        raw.close()
        assert_serves(agent.url, agent.token)
    finally:
        assert agent.stop() == 0, agent.log.read_text()


def test_a_truncated_frame_on_stdio_ends_only_that_agent(tmp_path, kit):
    command = shlex.split(kit.exec_url(tmp_path / "lock")[len("exec:"):])
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    greeting = read_frame(process.stdout.read)
    assert greeting.decode()[0]["auth"] == "none"
    head, _ = encode_frame({"op": "stats"})
    out, err = process.communicate(head[:-4], timeout=20)
    assert process.returncode == 0 and out == b""  # no answer, no crash, stdout stays clean
    assert b"middle of a frame" in err


# -- one thing at a time ----------------------------------------------------------------------
def _measure_concurrently(urls, tokens, models):
    settings = TimingSettings(warmup=50, iterations=5, min_seconds=0.3, max_iterations=10**6)
    clients = [connect(url, token=token) for url, token in zip(urls, tokens)]
    errors = []

    def work(client):
        try:
            client.measure([(models[0], "onnx", None)], "onnxruntime", "fp32", 1, settings)
        except Exception as error:  # pragma: no cover - shown by the assert below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    started = time.time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    spans = []
    for client in clients:
        spans += [tuple(s) for s in client.stats()["device_busy"] if s[0] >= started]
        client.close()
    return sorted(set(spans))


def test_two_tcp_clients_queue_for_the_device(tcp_agent, models):
    # Only the two measure requests hold the device after `started`: their spans are the
    # two, whatever they last (a slow warm-up on a loaded CI machine shortens the timed
    # part, and a filter on duration once dropped one of them).
    spans = _measure_concurrently([tcp_agent.url] * 2, [tcp_agent.token] * 2, models)
    assert len(spans) == 2, spans
    assert all(end > start for start, end in spans), spans
    assert spans[0][1] <= spans[1][0], spans


def test_two_stdio_agents_on_one_device_queue_through_the_lock_file(tmp_path, models, kit):
    url = kit.exec_url(tmp_path / "device.lock")
    spans = _measure_concurrently([url, url], [None, None], models)
    assert len(spans) == 2 and all(end > start for start, end in spans), spans
    assert spans[0][1] <= spans[1][0], spans


# -- unreachable ------------------------------------------------------------------------------
def test_a_closed_port_is_unreachable_quickly():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    started = time.monotonic()
    with pytest.raises(Unreachable) as error:
        connect(f"tcp://127.0.0.1:{port}", token="a" * 64, timeout=5)
    assert time.monotonic() - started < 5
    assert "hwdnal-agent serve" in str(error.value) and "\n" not in str(error.value)


def test_exec_of_a_missing_command_is_unreachable():
    with pytest.raises(Unreachable, match="no-such-agent-command"):
        connect("exec:/nonexistent/no-such-agent-command stdio")


def test_exec_of_a_command_that_dies_reports_its_last_words():
    script = "import sys; sys.stderr.write('bash: hwdnal-agent: command not found\\n'); " \
             "sys.exit(127)"
    with pytest.raises(Unreachable) as error:
        connect(f"exec:{shlex.quote(sys.executable)} -c {shlex.quote(script)}")
    assert "exit status 127" in str(error.value)
    assert "command not found" in str(error.value)


@pytest.mark.skipif(shutil.which("ssh") is None, reason="no ssh client here")
def test_ssh_to_nowhere_is_unreachable_with_ssh_s_reason():
    with pytest.raises(Unreachable) as error:
        connect("ssh://nobody@127.0.0.1:1", timeout=5)
    assert "exit status 255" in str(error.value)


def test_a_lost_agent_is_a_connection_lost(tmp_path, kit):
    agent = kit.start_agent(tmp_path)
    client = connect(agent.url, token=agent.token)
    agent.process.kill()
    agent.process.wait()
    with pytest.raises(ConnectionLost):
        client.stats()
    with pytest.raises(ConnectionLost):
        client.stats()
    client.close()


# -- the command line ---------------------------------------------------------------------------
def run_cli(*args, **kwargs):
    import hwdnal_agent.cli

    return hwdnal_agent.cli.main(list(args))


def test_serve_refuses_to_start_without_a_token(capsys, tmp_path):
    assert run_cli("serve", "--listen", "127.0.0.1:0") == 2
    assert "--token-file" in capsys.readouterr().err
    assert run_cli("serve", "--listen", "0.0.0.0:0", "--insecure-no-token") == 2
    assert "loopback" in capsys.readouterr().err
    (tmp_path / "short").write_text("abc")
    assert run_cli("serve", "--token-file", str(tmp_path / "short")) == 2
    err = capsys.readouterr().err
    assert "shorter" in err and len(err.strip().splitlines()) == 1


def test_token_command_writes_a_private_file(capsys, tmp_path):
    out = tmp_path / "agent.token"
    assert run_cli("token", "--out", str(out)) == 0
    assert out.stat().st_mode & 0o777 == 0o600 and len(out.read_text().strip()) == 64
    assert run_cli("token", "--out", str(out)) == 2
    assert "--force" in capsys.readouterr().err


def test_an_agent_without_a_token_serves_loopback(tmp_path, kit):
    agent = kit.start_agent(tmp_path, token=None)
    try:
        with connect(agent.url) as client:
            assert client.greeting["auth"] == "none"
        assert f"listening on 127.0.0.1:{agent.port}" in agent.log.read_text()
    finally:
        assert agent.stop() == 0


def test_info_prints_runtimes_and_fingerprints_as_json():
    done = subprocess.run(_command("info"), capture_output=True, text=True, timeout=60,
                          check=True)
    info = json.loads(done.stdout)
    assert info["protocol"] == PROTOCOL_VERSION
    assert info["runtimes"]["onnxruntime"]["usable"]
    assert info["fingerprints"]["onnxruntime"]["runtime"] == "onnxruntime"


def _command(*args):
    return [sys.executable, "-m", "hwdnal_agent", *args]


# -- Python 3.8 ---------------------------------------------------------------------------------
def test_the_agent_needs_nothing_newer_than_python_3_8():
    vermin = shutil.which("vermin") or str(Path(sys.executable).with_name("vermin"))
    if not Path(vermin).exists():
        pytest.skip("vermin is not installed (pip install vermin)")
    package = Path(__file__).resolve().parents[1] / "hwdnal_agent"
    done = subprocess.run([vermin, "-t=3.8-", "--no-tips", "--violations", str(package)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
