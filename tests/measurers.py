"""Opening a target's device for a test, as a command does at its entry."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hwdnal.devices import Measurer, open_measurer
from hwdnal.targets import Target, load_target


@contextmanager
def measurer_for(target: str | Path | Target) -> Iterator[Measurer]:
    """The device of ``target`` (a built-in name, a TOML file or a Target), closed after."""
    device = open_measurer(target if isinstance(target, Target) else load_target(target))
    try:
        yield device
    finally:
        device.close()
