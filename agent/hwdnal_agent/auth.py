"""The shared token of TCP agents and the HMAC tags that prove each frame knows it.

The token never crosses the wire. The agent's greeting carries a random nonce; each request
frame is followed by ``HMAC-SHA256(token, b"req" + nonce + u64 seq + frame)`` and each
response by ``HMAC-SHA256(token, b"resp" + nonce + u64 seq + frame)``, ``seq`` counting the
requests of the connection from 0. A replayed, reordered or altered frame fails, and the
client knows it talks to the agent holding the token.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import struct
from pathlib import Path
from typing import Any

MIN_TOKEN_CHARS = 32
NONCE_BYTES = 32
REQUEST = b"req"
RESPONSE = b"resp"


class TokenError(Exception):
    """A token file that is missing, empty, too short or unreadable."""


def generate_token() -> str:
    """A new token: 32 random bytes as 64 hex characters."""
    return secrets.token_hex(32)


def write_token(path: str | Path, force: bool = False) -> str:
    """Write a new token to ``path`` with mode 0600 and return it."""
    path = Path(path).expanduser()
    if path.exists() and not force:
        raise TokenError(f"{path} exists already; pass --force to replace it")
    token = generate_token()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(token + "\n")
    return token


def check_token(token: str, origin: str) -> bytes:
    """The HMAC key for a token text (surrounding whitespace dropped)."""
    token = token.strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise TokenError(f"{origin} is shorter than {MIN_TOKEN_CHARS} characters; "
                         "make one with `hwdnal-agent token --out FILE`")
    return token.encode("utf-8")


def load_token(path: str | Path) -> bytes:
    """The HMAC key from a token file."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise TokenError(f"cannot read the token file {path}: {error.strerror or error}") from None
    return check_token(text, f"the token in {path}")


def loosely_readable(path: str | Path) -> bool:
    """Whether users other than the owner may read the token file."""
    try:
        mode = Path(path).expanduser().stat().st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IRGRP | stat.S_IROTH))


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def frame_mac(key: bytes | None, direction: bytes, nonce: bytes, seq: int) -> Any:
    """An HMAC object primed for one frame (feed it the frame, compare its digest to the
    tag); None when the connection is not authenticated."""
    if key is None:
        return None
    mac = hmac.new(key, digestmod=hashlib.sha256)
    mac.update(direction + nonce + struct.pack(">Q", seq))
    return mac


def tag_matches(mac: Any, tag: bytes | None) -> bool:
    return tag is not None and hmac.compare_digest(mac.digest(), tag)
