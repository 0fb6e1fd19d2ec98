"""Every device behind one interface: :class:`~hwdnal.devices.measurer.Measurer`.

:func:`open_measurer` gives the target's device: this machine, or the `hwdnal-agent` at
the target's ``remote`` URL (``--remote`` overrides it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hwdnal.devices.measurer import Deployable, Measurement, Measurer, TimingSettings

if TYPE_CHECKING:
    from hwdnal.targets import Target

__all__ = [
    "Deployable", "Measurement", "Measurer", "TimingSettings", "as_measurer", "open_measurer",
]


def open_measurer(target: Target, remote: str | None = None) -> Measurer:
    """The device that measures ``target``; a clear UserError when it cannot."""
    url = remote or target.remote
    if url:
        from hwdnal.devices.remote import RemoteMeasurer

        return RemoteMeasurer(target, url)
    from hwdnal.devices.local import LocalMeasurer

    return LocalMeasurer(target)


def as_measurer(target: Measurer | Target | str) -> tuple[Measurer, bool]:
    """A measurer as given, or a target's (by object or name) opened now; the flag says the
    caller opened it and must close it."""
    from hwdnal.targets import Target, load_target

    if isinstance(target, str):
        target = load_target(target)
    if isinstance(target, Target):
        return open_measurer(target), True
    return target, False
