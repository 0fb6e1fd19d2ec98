"""The workstation's side: reach an agent by URL and ask it to measure, build and run.

``ssh://[user@]host[:port]`` runs ``hwdnal-agent stdio`` on the device through the system
ssh (or the command line in $HWDNAL_AGENT_SSH); ``tcp://host:port`` talks to
``hwdnal-agent serve`` with a shared token;
``exec:COMMAND`` runs any command that speaks the stdio protocol. No torch here.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import shlex
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Sequence

import numpy as np

from hwdnal_agent import PROTOCOL_VERSION
from hwdnal_agent.auth import REQUEST, RESPONSE, TokenError, check_token, frame_mac, tag_matches
from hwdnal_agent.protocol import (
    FrameError,
    Truncated,
    encode_frame,
    read_frame,
)
from hwdnal_agent.timing import Measurement, TimingSettings

DEFAULT_COMMAND = "hwdnal-agent stdio"
TOKEN_ENV = "HWDNAL_AGENT_TOKEN"
COMMAND_ENV = "HWDNAL_AGENT_COMMAND"
#: the ssh command line to use instead of plain ``ssh`` (like git's GIT_SSH_COMMAND)
SSH_ENV = "HWDNAL_AGENT_SSH"
#: responses may carry engines; the client accepts up to this much
MAX_RESPONSE = 4 << 30


class AgentError(Exception):
    """Anything that went wrong talking to an agent; the message is one line."""


class Unreachable(AgentError):
    """The agent could not be reached or started (refused, unknown host, ssh failed)."""


class AuthError(AgentError):
    """The token is missing or differs from the agent's."""


class ProtocolMismatch(AgentError):
    """The agent and this client speak different protocol versions (or it is no agent)."""


class ConnectionLost(AgentError):
    """The connection ended in the middle of a request."""


class RemoteError(AgentError):
    """The agent answered with an error; ``code`` is its error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class AgentURL:
    """A parsed agent URL: ``scheme`` is "ssh", "tcp" or "exec"."""

    def __init__(self, scheme: str, host: str | None = None, port: int | None = None,
                 user: str | None = None, argv: list[str] | None = None) -> None:
        self.scheme = scheme
        self.host = host
        self.port = port
        self.user = user
        self.argv = argv

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AgentURL) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return "AgentURL({})".format(", ".join(
            f"{k}={v!r}" for k, v in vars(self).items() if v is not None))


def parse_url(url: str) -> AgentURL:
    """``ssh://[user@]host[:port]``, ``tcp://host:port`` or ``exec:COMMAND``."""
    if url.startswith("exec:"):
        try:
            argv = shlex.split(url[len("exec:"):])
        except ValueError as error:
            raise AgentError(f"cannot split the command of {url}: {error}") from None
        if not argv:
            raise AgentError(f"{url} names no command: use exec:COMMAND")
        return AgentURL("exec", argv=argv)
    for scheme in ("ssh", "tcp"):
        prefix = scheme + "://"
        if url.startswith(prefix):
            rest = url[len(prefix):].rstrip("/")
            user = None
            if "@" in rest:
                user, rest = rest.rsplit("@", 1)
                if not user:
                    raise AgentError(f"empty user name in {url}")
            host, port = _host_port(rest, url)
            if scheme == "tcp" and port is None:
                raise AgentError(f"{url} needs a port: tcp://HOST:PORT")
            if scheme == "tcp" and user is not None:
                raise AgentError(f"{url}: tcp:// URLs take no user name")
            return AgentURL(scheme, host=host, port=port, user=user)
    raise AgentError(f"unknown agent URL {url!r}: use ssh://[user@]host[:port], tcp://host:port "
                     "or exec:COMMAND")


def _host_port(text: str, url: str) -> tuple[str, int | None]:
    if text.startswith("["):  # [IPv6]:port
        end = text.find("]")
        if end < 0:
            raise AgentError(f"unclosed '[' in {url}")
        host, tail = text[1:end], text[end + 1:]
        if tail and not tail.startswith(":"):
            raise AgentError(f"cannot read host and port of {url}")
        port_text = tail[1:] if tail else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, None
    if not host or "/" in host:
        raise AgentError(f"no host in {url}")
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise AgentError(f"bad port {port_text!r} in {url}")
    return host, int(port_text)


# -- transports ---------------------------------------------------------------------------
class _SocketTransport:
    def __init__(self, url: str, host: str, port: int, timeout: float) -> None:
        self.url = url
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except socket.gaierror as error:
            raise Unreachable(f"cannot reach the agent at {url}: unknown host {host} "
                              f"({error.strerror or error})") from None
        except socket.timeout:
            raise Unreachable(f"cannot reach the agent at {url}: no answer within {timeout:.0f} "
                              "s; is the device up and the port open?") from None
        except OSError as error:
            raise Unreachable(f"cannot reach the agent at {url}: {error.strerror or error}; start "
                              f"it on the device with `hwdnal-agent serve --listen HOST:{port} "
                              "--token-file FILE`") from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def read(self, size: int) -> bytes:
        return self.reader.read(size)

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def detail(self) -> str:
        return ""

    def close(self) -> None:
        for closer in (self.reader.close, self.sock.close):
            with contextlib.suppress(OSError):
                closer()


class _ProcessTransport:
    """A child process speaking the protocol on its stdin/stdout; its stderr is kept (the
    last lines explain a failure) and forwarded to ours when ``echo`` is set."""

    def __init__(self, url: str, argv: list[str], echo: bool = False,
                 advice: dict[int, str] | None = None) -> None:
        self.url = url
        self.argv = argv
        #: what to tell the user when the process exits with one of these statuses
        self._advice = advice or {}
        self.code: int | None = None
        self.timeout: float | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=20)
        try:
            # a session of its own: Ctrl-C at the terminal reaches hwdnal, which stops after
            # the measurement in flight and closes the pipe, not the agent in the middle of it
            self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, bufsize=0,
                                            start_new_session=True)
        except OSError as error:
            raise Unreachable(f"cannot start the agent for {url}: {argv[0]}: "
                              f"{error.strerror or error}") from None
        self._echo = echo
        self._stderr = threading.Thread(target=self._pump, daemon=True)
        self._stderr.start()
        self._out = self.process.stdout

    def _pump(self) -> None:
        for raw in iter(self.process.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self.tail.append(line)
                if self._echo:
                    print(line, file=sys.stderr)

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout

    def read(self, size: int) -> bytes:
        chunks = []
        left = size
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        fd = self._out.fileno()
        while left:
            if deadline is not None:
                wait = deadline - time.monotonic()
                ready = select.select([fd], [], [], max(0.0, wait))[0] if wait > 0 else []
                if not ready:
                    raise socket.timeout("timed out")
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def write(self, data: bytes) -> None:
        self.process.stdin.write(data)

    def detail(self) -> str:
        """What the process said last on stderr, and its exit status if it ended."""
        try:
            code = self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        self.code = code
        self._stderr.join(timeout=1)
        parts = []
        if code is not None:
            parts.append(f"exit status {code}")
        if self.tail:
            parts.append(f"last stderr line: {self.tail[-1]}")
        return "; ".join(parts)

    def advice(self) -> str:
        """What to do about the exit status :meth:`detail` found, if anything is known."""
        return self._advice.get(self.code, "") if self.code is not None else ""

    def close(self) -> None:
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                stream.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- the client -------------------------------------------------------------------------
def _ssh_command() -> list[str]:
    """$HWDNAL_AGENT_SSH split like a shell would, else ``["ssh"]``."""
    text = os.environ.get(SSH_ENV, "").strip()
    if not text:
        return ["ssh"]
    try:
        return shlex.split(text) or ["ssh"]
    except ValueError as error:
        raise AgentError(f"cannot split ${SSH_ENV} ({text!r}): {error}") from None


def connect(url: str, token: str | None = None, timeout: float = 30.0,
            command: str | None = None, request_timeout: float | None = None,
            echo_stderr: bool = False) -> AgentClient:
    """Reach the agent at ``url``, check its protocol and token (with a ``hello``).

    ``token``: for tcp:// (default: $HWDNAL_AGENT_TOKEN). ``command``: the agent command run
    by ssh:// (default: $HWDNAL_AGENT_COMMAND, else ``hwdnal-agent stdio``); ssh:// runs
    $HWDNAL_AGENT_SSH (split like a shell would) instead of plain ``ssh`` when it is set,
    with ``-T -o BatchMode=yes ...`` appended. ``timeout``
    bounds connecting and the greeting; ``request_timeout`` each request (None: no limit,
    measurements may take minutes). ``echo_stderr`` forwards an ssh/exec agent's stderr.
    """
    where = parse_url(url)
    if where.scheme == "tcp":
        if token is None:
            token = os.environ.get(TOKEN_ENV) or None
        transport: Any = _SocketTransport(url, where.host or "", where.port or 0, timeout)
    elif where.scheme == "ssh":
        remote = command or os.environ.get(COMMAND_ENV) or DEFAULT_COMMAND
        ssh = _ssh_command()
        login = ["-p", str(where.port)] if where.port is not None else []
        login.append(f"{where.user}@{where.host}" if where.user else where.host or "")
        argv = [*ssh, "-T", "-o", "BatchMode=yes",
                "-o", f"ConnectTimeout={max(1, int(timeout))}", *login, remote]
        first = remote.split()[0] if remote.split() else remote
        advice = {
            127: f"{first!r} was not found on the device: install hwdnal-agent there or set the "
                 f"target's agent_command (or ${COMMAND_ENV}) to the agent's full command",
            255: "ssh could not connect or log in: check that '{}' works without a "
                 "prompt".format(" ".join(shlex.quote(a) for a in [*ssh, *login, "true"])),
        }
        transport = _ProcessTransport(url, argv, echo_stderr, advice)
    else:
        transport = _ProcessTransport(url, list(where.argv or []), echo_stderr)
    try:
        return AgentClient(transport, url, token, timeout, request_timeout)
    except BaseException:
        transport.close()
        raise


class AgentClient:
    """One connection to an agent. Thread-safe (requests are serialised); a context manager."""

    def __init__(self, transport: Any, url: str, token: str | None = None,
                 timeout: float = 30.0, request_timeout: float | None = None) -> None:
        self.url = url
        self._transport = transport
        self._lock = threading.Lock()
        self._seq = 0
        self._closed = False
        self._request_timeout = request_timeout
        self.greeting = self._read_greeting(timeout)
        self._nonce = bytes.fromhex(str(self.greeting.get("nonce", "")))
        self._key: bytes | None = None
        if self.greeting.get("auth") == "hmac-sha256":
            if not token:
                raise AuthError(f"the agent at {url} needs a token: set {TOKEN_ENV} or token_file "
                                "in the target")
            try:
                self._key = check_token(token, f"the token given for {url}")
            except TokenError as error:
                raise AuthError(str(error)) from None
        elif self.greeting.get("auth") != "none":
            raise ProtocolMismatch("the agent at {} asks for authentication {!r}, which this "
                                   "client does not know".format(url, self.greeting.get("auth")))
        transport.settimeout(timeout)
        self.info = self.hello()

    # -- plumbing -------------------------------------------------------------------
    def _read_greeting(self, timeout: float) -> dict[str, Any]:
        self._transport.settimeout(timeout)
        try:
            frame = read_frame(self._transport.read, max_payload=1 << 20)
        except (socket.timeout, TimeoutError):
            raise Unreachable(f"the agent at {self.url} did not greet within {timeout:.0f} s"
                              f"{self._detail()}") from None
        except (Truncated, OSError):
            frame = None
        except FrameError:
            raise ProtocolMismatch(f"{self.url} does not speak the hwdnal-agent protocol (check "
                                   "the URL and that hwdnal-agent runs there)") from None
        if frame is None:
            detail = self._detail()
            advice = getattr(self._transport, "advice", lambda: "")()
            raise Unreachable(f"the agent at {self.url} closed the connection before greeting"
                              f"{detail}{': ' + advice if advice else ''}")
        try:
            greeting, _ = frame.decode()
        except FrameError:
            raise ProtocolMismatch(f"{self.url} sent a malformed greeting") from None
        if greeting.get("agent") != "hwdnal-agent":
            raise ProtocolMismatch(f"{self.url} does not speak the hwdnal-agent protocol")
        if greeting.get("protocol") != PROTOCOL_VERSION:
            raise ProtocolMismatch(
                "the agent at {} speaks protocol {} (hwdnal-agent {}), this client speaks {}: "
                "install the same hwdnal-agent version on both sides".format(
                    self.url, greeting.get("protocol"), greeting.get("agent_version"),
                    PROTOCOL_VERSION))
        return _strip(greeting)

    def _detail(self) -> str:
        detail = self._transport.detail()
        return f" ({detail})" if detail else ""

    def request(self, header: dict[str, Any], blobs: Sequence[Any] = ()
                ) -> tuple[dict[str, Any], list[Any]]:
        """Send one request and return the response's header and blobs; an error answer
        raises (AuthError, ProtocolMismatch or RemoteError)."""
        op = header.get("op", "?")
        with self._lock:
            if self._closed:
                raise ConnectionLost(f"the connection to the agent at {self.url} is closed")
            head, parts = encode_frame(header, blobs, version=PROTOCOL_VERSION)
            seq = self._seq
            self._seq += 1
            mac = frame_mac(self._key, REQUEST, self._nonce, seq)
            response_mac = frame_mac(self._key, RESPONSE, self._nonce, seq)
            try:
                try:
                    self._send(head, parts, mac)
                    self._transport.settimeout(self._request_timeout)
                except OSError:
                    # the agent hung up while we were sending (too large a request?): its
                    # error frame may be waiting to be read
                    self._transport.settimeout(5.0)
                frame = read_frame(self._transport.read, MAX_RESPONSE, mac=response_mac)
            except (socket.timeout, TimeoutError):
                self._lost()
                raise ConnectionLost(f"the agent at {self.url} did not answer '{op}' within "
                                     f"{self._request_timeout} s") from None
            except (Truncated, OSError) as error:
                detail = self._detail()
                self._lost()
                raise ConnectionLost(f"the connection to the agent at {self.url} was lost during "
                                     f"'{op}' ({_reason(error)}){detail}") from None
            except FrameError as error:
                self._lost()
                raise ProtocolMismatch(
                    f"the agent at {self.url} sent a bad frame: {error}") from None
            if frame is None:
                detail = self._detail()
                self._lost()
                raise ConnectionLost(f"the agent at {self.url} closed the connection during "
                                     f"'{op}'{detail}")
            authentic = response_mac is None or tag_matches(response_mac, frame.tag)
            try:
                response, out = frame.decode()
            except FrameError as error:
                self._lost()
                raise ProtocolMismatch(
                    f"the agent at {self.url} sent a bad frame: {error}") from None
            if not authentic and response.get("ok") is not False:
                self._lost()
                raise AuthError(f"the agent at {self.url} answered without a valid tag: its token "
                                "differs from yours (or someone is in between)")
        if response.get("ok") is True:
            return response, out
        code = str(response.get("code", "internal"))
        message = "the agent at {} refused '{}': {}".format(
            self.url, op, response.get("error", "no reason given"))
        if not authentic:  # an error about a frame it could not read: the agent hangs up
            self._lost()
        if code == "auth":
            self._lost()
            raise AuthError("the agent at {}: {}".format(self.url, response.get("error")))
        if code == "protocol":
            self._lost()
            raise ProtocolMismatch("the agent at {}: {}".format(self.url, response.get("error")))
        raise RemoteError(code, message)

    def _send(self, head: bytes, parts: list[bytes], mac: Any) -> None:
        self._transport.write(head)
        if mac is not None:
            mac.update(head)
        for part in parts:
            self._transport.write(part)
            if mac is not None:
                mac.update(part)
        if mac is not None:
            self._transport.write(mac.digest())

    def _lost(self) -> None:
        if not self._closed:
            self._closed = True
            self._transport.close()

    # -- requests -------------------------------------------------------------------
    def hello(self) -> dict[str, Any]:
        """The agent's protocol, versions, host and runtimes (``{name: {usable, why,
        version}}``)."""
        response, _ = self.request({"op": "hello", "protocol": PROTOCOL_VERSION})
        return _strip(response)

    def fingerprint(self, runtime: str, device: str, precision: str, threads: int,
                    batch: int) -> dict[str, Any]:
        response, _ = self.request({"op": "fingerprint", "runtime": runtime, "device": device,
                                    "precision": precision, "threads": int(threads),
                                    "batch": int(batch)})
        return response["fingerprint"]

    def measure(self, items: Sequence[tuple[bytes, str, Sequence[int] | None]],
                runtime: str, precision: str, threads: int, settings: TimingSettings
                ) -> list[Measurement]:
        """Latency of each (model bytes, format, input shape or None), timed interleaved."""
        if not items:
            return []
        listing = [{"format": fmt, "input_shape": _shape(shape), "blob": index}
                   for index, (_, fmt, shape) in enumerate(items)]
        response, _ = self.request(
            {"op": "measure", "runtime": runtime, "precision": precision,
             "threads": int(threads), "settings": settings.to_dict(), "items": listing},
            [bytes(data) for data, _, _ in items])
        results = response.get("results")
        if not isinstance(results, list) or len(results) != len(items):
            raise RemoteError("internal", f"the agent at {self.url} answered "
                              f"{len(results or [])} results for {len(items)} models")
        return [Measurement.from_dict(r) for r in results]

    def build(self, onnx: bytes, input_shape: Sequence[int], runtime: str, precision: str,
              threads: int) -> tuple[bytes, str, dict[str, Any]]:
        """The deployable file for ``onnx`` built on the device, its format and the device's
        fingerprint."""
        response, out = self.request(
            {"op": "build", "runtime": runtime, "precision": precision,
             "threads": int(threads), "input_shape": _shape(input_shape)}, [bytes(onnx)])
        if not out or not isinstance(out[0], bytes):
            raise RemoteError("internal", f"the agent at {self.url} sent no deployable file")
        return out[0], str(response["format"]), response["fingerprint"]

    def run(self, deployable: bytes, fmt: str, input_shape: Sequence[int] | None,
            inputs: Sequence[np.ndarray], runtime: str, precision: str, threads: int
            ) -> list[np.ndarray]:
        """The outputs of the deployable file for each input (float32 arrays)."""
        blobs: list[Any] = [bytes(deployable)]
        blobs += [np.ascontiguousarray(x, dtype=np.float32) for x in inputs]
        _, out = self.request(
            {"op": "run", "runtime": runtime, "precision": precision, "threads": int(threads),
             "format": fmt, "input_shape": _shape(input_shape)}, blobs)
        if len(out) != len(inputs) or not all(isinstance(o, np.ndarray) for o in out):
            raise RemoteError("internal", f"the agent at {self.url} answered {len(out)} outputs "
                              f"for {len(inputs)} inputs")
        return out

    def stats(self) -> dict[str, Any]:
        """``{"requests": {op: count}, "models_measured": n, "errors": n, "device_busy":
        [[start, end], ...]}``: what this agent process has done."""
        return _strip(self.request({"op": "stats"})[0])

    def close(self) -> None:
        with self._lock:
            self._lost()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _shape(shape: Sequence[int] | None) -> list[int] | None:
    return None if shape is None else [int(d) for d in shape]


def _strip(response: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in response.items() if k not in ("ok", "blobs")}


def _reason(error: BaseException) -> str:
    if isinstance(error, Truncated):
        return "the stream ended mid-frame"
    return getattr(error, "strerror", None) or str(error) or type(error).__name__
