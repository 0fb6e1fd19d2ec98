"""Real agent processes on this machine, for the agent's tests and hwdnal's alike.

``start_agent`` runs ``python -m hwdnal_agent serve`` on 127.0.0.1 with a token and waits
for the port it bound; ``exec_url`` names a ``stdio`` agent for the ``exec:`` transport.
Every agent gets its own lock file (never the user's ~/.cache one) and writes its stderr
to a log file (a pipe nobody reads would fill up and block it). Only the standard library
is used, so hwdnal's tests load this file by path.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

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
        return stop_process(self.process)


def stop_process(process: subprocess.Popen) -> int:
    """SIGTERM, a graceful wait, then SIGKILL; the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def agent_command(*args: str, python: str | None = None) -> list[str]:
    return [python or sys.executable, "-m", "hwdnal_agent", *args]


def start_agent(directory: Path, *extra: str, token: str | None = TOKEN,
                python: str | None = None) -> LocalAgent:
    """Start ``serve --listen 127.0.0.1:0`` and wait for the port it bound (``python``: the
    interpreter of another environment the agent is installed in)."""
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
        process = subprocess.Popen(agent_command(*args, *extra, python=python),
                                   stdin=subprocess.DEVNULL, stdout=handle,
                                   stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not port_file.exists():
        if process.poll() is not None:
            raise RuntimeError("the agent exited: " + log.read_text())
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the agent did not start: " + log.read_text())
        time.sleep(0.05)
    return LocalAgent(process, int(port_file.read_text()), token, log, lock_file)


def exec_url(lock_file: Path, *extra: str, python: str | None = None) -> str:
    return "exec:" + " ".join(shlex.quote(a) for a in agent_command(
        "stdio", "--lock-file", str(lock_file), *extra, python=python))
