"""The agent's two front doors: a stdio loop (ssh, exec) and a TCP server (with a token).

Both speak the frames of :mod:`hwdnal_agent.protocol` and hand each request to one shared
:class:`~hwdnal_agent.service.Agent`. A bad client (garbage, an oversize or truncated frame,
a wrong token) gets one error frame where possible and its connection closed; the process
keeps serving everyone else.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import socketserver
import sys
import threading
from typing import Any, Callable

from hwdnal_agent import PROTOCOL_VERSION, __version__
from hwdnal_agent.auth import REQUEST, RESPONSE, frame_mac, new_nonce, tag_matches
from hwdnal_agent.protocol import (
    DEFAULT_MAX_PAYLOAD,
    TAG_SIZE,
    FrameError,
    Truncated,
    encode_frame,
    error_header,
    read_frame,
)
from hwdnal_agent.service import Agent, runtime_table

log = logging.getLogger("hwdnal_agent")

#: a frame that has started must finish within this many seconds (TCP)
DEFAULT_FRAME_TIMEOUT = 60.0
AUTH_FAILED = ("authentication failed: the token differs from the agent's --token-file")


def greeting(auth: bool, nonce: bytes) -> dict[str, Any]:
    return {"agent": "hwdnal-agent", "protocol": PROTOCOL_VERSION, "agent_version": __version__,
            "auth": "hmac-sha256" if auth else "none", "nonce": nonce.hex()}


def serve_connection(agent: Agent, read: Callable[[int], bytes],
                     write: Callable[[bytes], None], key: bytes | None = None,
                     max_payload: int = DEFAULT_MAX_PAYLOAD,
                     started: Callable[[], None] | None = None,
                     finished: Callable[[], None] | None = None, peer: str = "stdio"
                     ) -> bool:
    """Greet, then answer requests until EOF or a bad frame.

    Returns True when the connection ended cleanly (EOF between frames or a goodbye), False
    when it was closed because of the client (the caller then drains and closes).
    ``started``/``finished`` are called around each frame's arrival (the TCP server arms a
    read timeout in between).
    """
    nonce = new_nonce()
    head, parts = encode_frame(greeting(key is not None, nonce))
    _send(write, head, parts, None)
    seq = 0
    while True:
        mac = frame_mac(key, REQUEST, nonce, seq)
        try:
            frame = read_frame(read, max_payload, mac=mac, started=started)
        except FrameError as error:
            log.warning("%s: %s; closing the connection", peer, error)
            _send_error(write, error.code, str(error), key is not None)
            return False
        except Truncated:
            log.warning("%s: the connection ended in the middle of a frame", peer)
            return False
        except socket.timeout:
            log.warning("%s: a frame did not arrive in time; closing the connection", peer)
            return False
        if frame is None:
            return True
        if finished is not None:
            finished()
        if mac is not None and not tag_matches(mac, frame.tag):
            log.warning("%s: %s", peer, AUTH_FAILED)
            _send_error(write, "auth", AUTH_FAILED, True)
            return False
        try:
            header, blobs = frame.decode()
        except FrameError as error:
            log.warning("%s: %s; closing the connection", peer, error)
            response, out = error_header(error.code, str(error)), []
            _send(write, *encode_frame(response), frame_mac(key, RESPONSE, nonce, seq))
            return False
        if frame.version != PROTOCOL_VERSION:
            response = error_header(
                "protocol", f"this hwdnal-agent {__version__} speaks protocol "
                f"{PROTOCOL_VERSION}, the client's frame is protocol {frame.version}: install "
                "the same hwdnal-agent version on both sides")
            _send(write, *encode_frame(response), frame_mac(key, RESPONSE, nonce, seq))
            return False
        response, out = agent.handle(header, blobs)
        try:
            encoded = encode_frame(response, out)
        except (TypeError, ValueError) as error:
            encoded = encode_frame(error_header("internal", f"cannot send the answer: {error}"))
        _send(write, *encoded, frame_mac(key, RESPONSE, nonce, seq))
        seq += 1
        if response.get("code") == "protocol":
            return False


def _send(write: Callable[[bytes], None], head: bytes, parts: list[bytes], mac: Any) -> None:
    write(head)
    if mac is not None:
        mac.update(head)
    for part in parts:
        write(part)
        if mac is not None:
            mac.update(part)
    if mac is not None:
        write(mac.digest())


def _send_error(write: Callable[[bytes], None], code: str, message: str, tagged: bool) -> None:
    """An error for a frame that could not be authenticated: its tag (all zeros) is invalid
    on purpose, the client cannot and need not trust it."""
    head, parts = encode_frame(error_header(code, message))
    with contextlib.suppress(OSError):
        write(head + b"".join(parts) + (bytes(TAG_SIZE) if tagged else b""))


# -- stdio --------------------------------------------------------------------------------
def serve_stdio(agent: Agent, max_payload: int = DEFAULT_MAX_PAYLOAD) -> int:
    """Serve one connection on stdin/stdout (ssh, exec). Anything that prints to stdout,
    Python or C, goes to stderr instead: stdout carries frames only."""
    wire_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    wire = os.fdopen(wire_fd, "wb", buffering=0)
    source = sys.stdin.buffer

    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            sent = wire.write(view)
            view = view[sent:]

    try:
        serve_connection(agent, source.read, write, None, max_payload)
    except (BrokenPipeError, ConnectionResetError):
        pass
    except KeyboardInterrupt:
        pass
    return 0


# -- TCP --------------------------------------------------------------------------------
class _Handler(socketserver.BaseRequestHandler):
    server: AgentServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        peer = "{}:{}".format(*self.client_address[:2])
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)
        reader = sock.makefile("rb")
        timeout = self.server.frame_timeout

        def started() -> None:
            sock.settimeout(timeout)

        def finished() -> None:
            sock.settimeout(None)

        clean = False
        try:
            clean = serve_connection(self.server.agent, reader.read, sock.sendall,
                                     self.server.key, self.server.max_payload, started,
                                     finished, peer)
        except OSError as error:
            log.info("%s: connection lost (%s)", peer, error)
        finally:
            reader.close()
            if not clean:
                _drain(sock)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            self.request.close()


def _drain(sock: socket.socket) -> None:
    """Half-close and swallow what the client still sends for a moment, so that it reads our
    error frame instead of a connection reset."""
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(1.0)
        for _ in range(64):
            if not sock.recv(1 << 16):
                break
    except OSError:
        pass


class AgentServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, address: tuple[str, int], agent: Agent, key: bytes | None,
                 max_payload: int = DEFAULT_MAX_PAYLOAD,
                 frame_timeout: float = DEFAULT_FRAME_TIMEOUT) -> None:
        self.agent = agent
        self.key = key
        self.max_payload = max_payload
        self.frame_timeout = frame_timeout
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("error while serving %s", client_address)


def serve_tcp(agent: Agent, host: str, port: int, key: bytes | None,
              max_payload: int = DEFAULT_MAX_PAYLOAD, port_file: str | None = None,
              frame_timeout: float = DEFAULT_FRAME_TIMEOUT) -> int:
    """Serve until SIGINT or SIGTERM."""
    server = AgentServer((host, port), agent, key, max_payload, frame_timeout)
    bound = server.server_address[1]
    usable = [name for name, row in runtime_table().items() if row["usable"]]
    if port_file:
        temporary = port_file + ".tmp"
        with open(temporary, "w", encoding="ascii") as handle:
            handle.write(f"{bound}\n")
        os.replace(temporary, port_file)
    print("hwdnal-agent {} listening on {}:{} (protocol {}, runtimes: {}{})".format(
        __version__, host, bound, PROTOCOL_VERSION, ", ".join(usable) or "none",
        "" if key else "; NO TOKEN"), file=sys.stderr, flush=True)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        print("hwdnal-agent: stopping", file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
    return 0


def start_in_thread(server: AgentServer) -> threading.Thread:
    """Run ``server`` in a daemon thread (for embedding; stop it with ``server.shutdown()``)."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread
