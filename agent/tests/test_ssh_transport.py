"""The ssh:// transport for real: a private OpenSSH server on 127.0.0.1 (its own host key,
config, authorized_keys and port), reached by the system ssh through $HWDNAL_AGENT_SSH.

Skipped where openssh-server is not installed, unless $HWDNAL_REQUIRE_SSHD is set (CI sets
it after installing the package), then it fails instead.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import hwdnal_agent.client as client_module
from hwdnal_agent import PROTOCOL_VERSION
from hwdnal_agent.client import AgentError, Unreachable, connect
from hwdnal_agent.timing import Measurement, TimingSettings

from .processes import stop_process

pytest.importorskip("onnxruntime")

SSHD = "/usr/sbin/sshd"
REQUIRE_ENV = "HWDNAL_REQUIRE_SSHD"
AGENT_DIR = Path(__file__).resolve().parents[1]
QUICK = TimingSettings(warmup=1, iterations=5)
SHAPE = (1, 3, 8, 8)
#: the remote PATH sshd gives sessions here: system directories only
REMOTE_PATH = "/usr/local/bin:/usr/bin:/bin"


class Sshd:
    """A private ``sshd -D -e`` on 127.0.0.1 and the client configs that reach it."""

    def __init__(self, directory: Path, process: subprocess.Popen, port: int, user: str,
                 log: Path) -> None:
        self.directory = directory
        self.process = process
        self.port = port
        self.user = user
        self.log = log
        self.client_config = directory / "ssh_config"
        self.stranger_config = directory / "ssh_config_stranger"

    def url(self, user: str | None = None) -> str:
        return f"ssh://{user or self.user}@127.0.0.1:{self.port}"

    def ssh(self, config: Path | None = None) -> str:
        """A value for $HWDNAL_AGENT_SSH."""
        return "ssh -F " + shlex.quote(str(config or self.client_config))

    def agent_command(self, name: str = "device.lock") -> str:
        """The remote command: this interpreter's agent, with a lock file of its own."""
        argv = ["env", f"PYTHONPATH={AGENT_DIR}", sys.executable, "-m", "hwdnal_agent",
                "stdio", "--lock-file", str(self.directory / name)]
        return " ".join(shlex.quote(a) for a in argv)

    def stop(self) -> int:
        return stop_process(self.process)


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hwdnal-test",
                    "-f", str(path)], check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _client_config(path: Path, key: Path) -> None:
    path.write_text("Host *\n"
                    f"    IdentityFile {key}\n"
                    "    IdentitiesOnly yes\n"
                    "    StrictHostKeyChecking no\n"
                    "    UserKnownHostsFile /dev/null\n"
                    "    LogLevel ERROR\n")


def _start_sshd(directory: Path) -> Sshd:
    user = pwd.getpwuid(os.getuid()).pw_name
    _keygen(directory / "host_key")
    _keygen(directory / "client_key")
    _keygen(directory / "stranger_key")  # a key nobody authorised
    authorized = directory / "authorized_keys"
    authorized.write_text((directory / "client_key.pub").read_text())
    authorized.chmod(0o600)
    port = _free_port()
    config = directory / "sshd_config"
    config.write_text(f"ListenAddress 127.0.0.1\n"
                      f"Port {port}\n"
                      f"HostKey {directory / 'host_key'}\n"
                      f"AuthorizedKeysFile {authorized}\n"
                      f"PidFile {directory / 'sshd.pid'}\n"
                      "StrictModes no\n"
                      "UsePAM no\n"
                      "PasswordAuthentication no\n"
                      "KbdInteractiveAuthentication no\n"
                      "PermitRootLogin prohibit-password\n"
                      f"SetEnv PATH={REMOTE_PATH}\n")
    _client_config(directory / "ssh_config", directory / "client_key")
    _client_config(directory / "ssh_config_stranger", directory / "stranger_key")
    # sshd's privilege separation directory (not root: sshd goes without and logs in only us)
    with contextlib.suppress(OSError):
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    log = directory / "sshd.log"
    with open(log, "wb") as handle:
        process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)],
                                   stdin=subprocess.DEVNULL, stdout=handle,
                                   stderr=subprocess.STDOUT)
    server = Sshd(directory, process, port, user, log)
    deadline = time.monotonic() + 15
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited with status {process.returncode}: "
                               + log.read_text())
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                probe.settimeout(5)
                if probe.recv(64).startswith(b"SSH-2.0"):
                    return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError("sshd did not accept connections: " + log.read_text())
        time.sleep(0.05)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    missing = "openssh-server not installed (apt-get install openssh-server)"
    if not os.path.exists(SSHD):
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{missing}, and ${REQUIRE_ENV} is set")
        pytest.skip(missing)
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"no ssh client here, and ${REQUIRE_ENV} is set")
        pytest.skip("no ssh client here (apt-get install openssh-client)")
    server = _start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture
def via(sshd: Sshd, monkeypatch: pytest.MonkeyPatch) -> Sshd:
    """$HWDNAL_AGENT_SSH set to reach ``sshd`` with the authorised key."""
    monkeypatch.setenv(client_module.SSH_ENV, sshd.ssh())
    monkeypatch.delenv(client_module.COMMAND_ENV, raising=False)
    return sshd


def _log(sshd: Sshd) -> str:
    return "sshd log:\n" + sshd.log.read_text()


# -- it works ---------------------------------------------------------------------------------
def test_hello_fingerprint_and_measure_over_real_ssh(via, models):
    with connect(via.url(), command=via.agent_command(), timeout=20) as client:
        assert client.greeting["agent"] == "hwdnal-agent"
        assert client.greeting["auth"] == "none"  # ssh did the authenticating
        info = client.hello()
        assert info["protocol"] == PROTOCOL_VERSION
        assert info["runtimes"]["onnxruntime"]["usable"] is True
        found = client.fingerprint("onnxruntime", "cpu", "fp32", 1, 1)
        assert found["runtime"] == "onnxruntime" and found["threads"] == 1
        assert found["host"] == socket.gethostname()
        before = client.stats()
        results = client.measure([(models[0], "onnx", SHAPE), (models[1], "onnx", None)],
                                 "onnxruntime", "fp32", 1, QUICK)
        after = client.stats()
    assert len(results) == 2 and all(isinstance(r, Measurement) for r in results)
    assert all(r.samples == 5 and 0 < r.median_ms <= r.p90_ms for r in results)
    assert after["requests"]["measure"] == before["requests"].get("measure", 0) + 1
    assert after["models_measured"] == before["models_measured"] + 2


def test_the_ssh_command_line_comes_from_the_environment(sshd, monkeypatch):
    """Without $HWDNAL_AGENT_SSH plain ssh knows neither this server's fresh host key nor
    the fresh client key: refused; a program that does not exist is named; a line that
    cannot be split is an AgentError."""
    monkeypatch.delenv(client_module.SSH_ENV, raising=False)
    with pytest.raises(Unreachable, match="exit status 255"):
        connect(sshd.url(), command=sshd.agent_command(), timeout=10)
    monkeypatch.setenv(client_module.SSH_ENV, "/nonexistent/ssh-wrapper -v")
    with pytest.raises(Unreachable, match="/nonexistent/ssh-wrapper"):
        connect(sshd.url(), command=sshd.agent_command(), timeout=10)
    monkeypatch.setenv(client_module.SSH_ENV, "ssh -F 'unclosed")
    with pytest.raises(AgentError, match=client_module.SSH_ENV):
        connect(sshd.url(), command=sshd.agent_command(), timeout=10)


# -- it fails clearly ------------------------------------------------------------------------
@pytest.mark.parametrize("who", ["unknown user", "unauthorised key"])
def test_a_refused_login_is_unreachable_quickly_with_ssh_s_reason(via, monkeypatch, who):
    user = None
    if who == "unknown user":
        user = "no-such-user-hwdnal"
    else:
        monkeypatch.setenv(client_module.SSH_ENV, via.ssh(via.stranger_config))
    started = time.monotonic()
    with pytest.raises(Unreachable) as error:
        connect(via.url(user), command=via.agent_command(), timeout=10)
    took = time.monotonic() - started
    message = str(error.value)
    print(message)
    assert took < 8, f"{took:.1f} s: did ssh wait for a prompt? " + _log(via)
    assert "\n" not in message
    assert "exit status 255" in message
    assert "Permission denied (publickey)" in message, message
    assert "ssh could not connect or log in" in message


def test_a_device_without_hwdnal_agent_names_the_command(via):
    probe = subprocess.run(
        [*shlex.split(via.ssh()), "-T", "-o", "BatchMode=yes", "-p", str(via.port),
         f"{via.user}@127.0.0.1", "command -v hwdnal-agent"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
    if probe.returncode == 0:
        pytest.skip(f"hwdnal-agent is on the remote PATH here: {probe.stdout.strip()}")
    assert probe.returncode == 1, probe.stderr + _log(via)
    started = time.monotonic()
    with pytest.raises(Unreachable) as error:
        connect(via.url(), timeout=10)  # the default remote command: hwdnal-agent stdio
    message = str(error.value)
    print(message)
    assert time.monotonic() - started < 8
    assert "\n" not in message
    assert "exit status 127" in message
    assert "hwdnal-agent: command not found" in message
    assert "'hwdnal-agent' was not found on the device" in message
    assert "agent_command" in message and client_module.COMMAND_ENV in message
