"""Every device behind one interface: :class:`~hwdnal.devices.measurer.Measurer`.

:func:`open_measurer` gives the target's device: this machine, or the `hwdnal-agent` at
the target's ``remote`` URL (``--remote`` overrides it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hwdnal.devices.measurer import Deployable, Measurement, Measurer, TimingSettings

if TYPE_CHECKING:
    from hwdnal.targets import Target

__all__ = [
    "Deployable", "Measurement", "Measurer", "TimingSettings",
    "fingerprint_here", "open_check_measurer", "open_measurer", "usable_here",
]


def open_measurer(target: Target, remote: str | None = None) -> Measurer:
    """The device that measures ``target``; a clear UserError when it cannot."""
    url = remote or target.remote
    if url:
        from hwdnal.devices.remote import RemoteMeasurer

        return RemoteMeasurer(target, url)
    from hwdnal.devices.local import LocalMeasurer

    return LocalMeasurer(target)


def usable_here(target: Target) -> tuple[bool, str]:
    """Whether this machine can measure ``target``, and if not why."""
    from hwdnal.devices.local import usable_here as probe

    return probe(target)


def fingerprint_here(target: Target) -> dict[str, Any]:
    """The fingerprint of ``target`` measured on this machine."""
    from hwdnal.devices.local import fingerprint_here as probe

    return probe(target)


def open_check_measurer() -> Measurer:
    """This machine's ONNX Runtime in fp32 on one thread: where an exported graph is compared
    with PyTorch before anything is deployed, whatever the target (it times nothing)."""
    from hwdnal.devices.local import LocalMeasurer
    from hwdnal.targets import Target

    return LocalMeasurer(Target(name="onnx-check", runtime="onnxruntime", device="cpu",
                                description="the export check on this machine"))
