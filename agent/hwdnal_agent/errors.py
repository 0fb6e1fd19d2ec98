"""Errors the agent (and the runtimes it shares with hwdnal) raise."""

from __future__ import annotations


class DeviceError(Exception):
    """The device cannot do what was asked; the message says why (and how to fix it)."""
