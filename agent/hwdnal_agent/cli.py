"""``hwdnal-agent``: serve on stdio (ssh, exec) or TCP, make a token, show what is here."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import sys

from hwdnal_agent import PROTOCOL_VERSION, __version__, device_info
from hwdnal_agent.auth import TokenError, load_token, loosely_readable, write_token
from hwdnal_agent.service import DEFAULT_LOCK_FILE, Agent, runtime_table

DEFAULT_PORT = 7787


class UsageError(Exception):
    """A command line the agent refuses; printed as one line, exit status 2."""


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``HOST`` (port 7787), ``:PORT`` (127.0.0.1) or ``[IPv6]:PORT``."""
    host, port = text, str(DEFAULT_PORT)
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise UsageError(f"cannot read --listen {text!r}: unclosed '['")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    host = host or "127.0.0.1"
    if not port.isdigit() or int(port) > 65535:
        raise UsageError(f"cannot read the port of --listen {text!r}: use HOST:PORT")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hwdnal-agent",
        description="Times and builds networks on this device for a hwdnal workstation "
                    f"(protocol {PROTOCOL_VERSION}).")
    parser.add_argument("--version", action="version",
                        version=f"hwdnal-agent {__version__} (protocol {PROTOCOL_VERSION})")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every connection")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    def serving(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--max-request-mb", type=int, default=1024, metavar="N",
                         help="largest request payload accepted (default 1024)")
        sub.add_argument("--lock-file", default=DEFAULT_LOCK_FILE, metavar="PATH",
                         help="file locked while the device measures or builds, shared by "
                              "every agent on this machine (default %(default)s)")

    stdio = commands.add_parser("stdio", help="serve one client on stdin/stdout (ssh, exec)")
    serving(stdio)
    serve = commands.add_parser("serve", help="serve TCP clients that hold the token")
    serve.add_argument("--listen", default=f"127.0.0.1:{DEFAULT_PORT}",
                       metavar="HOST:PORT",
                       help="address to listen on (default %(default)s; port 0 picks one)")
    serve.add_argument("--token-file", metavar="FILE",
                       help="the shared token (make one with `hwdnal-agent token --out FILE`)")
    serve.add_argument("--insecure-no-token", action="store_true",
                       help="serve without a token (only on a loopback address)")
    serve.add_argument("--port-file", metavar="FILE", help="write the bound port here")
    serve.add_argument("--frame-timeout", type=float, default=60.0, metavar="S",
                       help="seconds a started frame may take to arrive (default 60)")
    serving(serve)
    token = commands.add_parser("token", help="write a new random token (mode 0600)")
    token.add_argument("--out", required=True, metavar="FILE")
    token.add_argument("--force", action="store_true", help="replace an existing file")
    commands.add_parser("info", help="print this device's runtimes and fingerprints as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, format="hwdnal-agent: %(message)s",
                        level=logging.INFO if args.verbose else logging.WARNING)
    try:
        return _dispatch(args)
    except (UsageError, TokenError) as error:
        print(f"hwdnal-agent: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"hwdnal-agent: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from hwdnal_agent import server

    if args.command == "token":
        write_token(args.out, force=args.force)
        print(f"hwdnal-agent: wrote a new token to {args.out} (mode 0600); give the workstation "
              "the same file (token_file in the target) or HWDNAL_AGENT_TOKEN",
              file=sys.stderr)
        return 0
    if args.command == "info":
        print(json.dumps(info(), indent=2, sort_keys=True))
        return 0
    if args.max_request_mb < 1:
        raise UsageError("--max-request-mb must be at least 1")
    max_payload = args.max_request_mb << 20
    if args.command == "stdio":
        return server.serve_stdio(Agent(args.lock_file), max_payload)
    host, port = parse_listen(args.listen)
    if args.token_file:
        key = load_token(args.token_file)
        if loosely_readable(args.token_file):
            logging.getLogger("hwdnal_agent").warning(
                "%s can be read by other users: chmod 600 it", args.token_file)
    elif args.insecure_no_token:
        if not is_loopback(host):
            raise UsageError(f"--insecure-no-token serves only on a loopback address, not {host}; "
                             "give --token-file (or use ssh)")
        key = None
    else:
        raise UsageError("serve needs --token-file FILE (make one with `hwdnal-agent token "
                         "--out FILE`)")
    try:
        return server.serve_tcp(Agent(args.lock_file), host, port, key, max_payload,
                                args.port_file, args.frame_timeout)
    except OSError as error:
        raise UsageError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


def info() -> dict:
    """hello's answer plus, for each usable runtime, its fingerprint at batch 1."""
    import platform
    import socket

    table = runtime_table()
    fingerprints = {}
    for name, row in table.items():
        if row["usable"]:
            device = "cpu" if name == "onnxruntime" else "cuda"
            try:
                fingerprints[name] = device_info.fingerprint(name, device, "fp32", 1, 1)
            except Exception as error:
                fingerprints[name] = {"error": f"{type(error).__name__}: {error}"}
    return {"agent_version": __version__, "protocol": PROTOCOL_VERSION,
            "python": platform.python_version(), "host": socket.gethostname(),
            "runtimes": table, "fingerprints": fingerprints}
