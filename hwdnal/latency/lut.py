"""LUT files: per-layer latency tables of one model on one target, with their provenance.

A LUT is JSON (readable, diffable, small):

- ``schema``/``version``: the format; an unknown version is refused, never guessed at;
- ``fingerprint``: the target it was measured on (device, CPU/GPU model, runtime and
  version, precision, batch, threads, hwdnal version);
- ``entries``: one latency table per layer signature (geometry plus full channel widths),
  over a grid of (input, output) channels, or channels alone for depthwise layers;
- ``layers``: each conv/linear layer of the model, by module name, and its entry;
- ``calibration``: the whole-network correction (scale, offset) and what it was fitted on;
- ``validation``: prediction error on held-out random sub-networks, once measured.

Loading checks every part and turns any problem into one :class:`UserError` line.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwdnal.atomic import write_json
from hwdnal.errors import UserError
from hwdnal.latency.signature import LayerGeometry

SCHEMA = "hwdnal-lut"
VERSION = 1


@dataclass
class LutEntry:
    key: str
    geometry: LayerGeometry
    depthwise: bool
    in_axis: list[int]  # channels for depthwise entries
    out_axis: list[int]  # [] for depthwise entries
    latency_ms: list[list[float]]  # monotone table used for prediction; n x 1 for depthwise
    measured_ms: list[list[float]]  # raw medians as measured

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"geometry": self.geometry.to_dict(), "depthwise": self.depthwise}
        if self.depthwise:
            data["channels"] = self.in_axis
            data["latency_ms"] = [row[0] for row in self.latency_ms]
            data["measured_ms"] = [row[0] for row in self.measured_ms]
        else:
            data["in_channels"] = self.in_axis
            data["out_channels"] = self.out_axis
            data["latency_ms"] = self.latency_ms
            data["measured_ms"] = self.measured_ms
        return data


@dataclass
class LutLayer:
    name: str
    entry: str
    in_channels: int
    out_channels: int
    out_elements_per_channel: int


@dataclass
class Calibration:
    """predicted = scale · Σ layers + memory · Σ output elements (millions) + offset_ms.

    The memory term stands for what a layer-by-layer table cannot see: element-wise work
    between layers (residual adds, activations not fused, layout reorders) grows with the
    activations' size. The offset is what no gate changes, and per-run overheads.
    """

    scale: float = 1.0
    memory_ms_per_melem: float = 0.0
    offset_ms: float = 0.0
    #: per layer present (supernets: layers vanish with their candidate block)
    per_layer_ms: float = 0.0
    samples: int = 0
    dense_measured_ms: float | None = None
    dense_raw_ms: float | None = None
    fit_median_error: float | None = None
    points: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Lut:
    fingerprint: dict[str, Any]
    model: dict[str, Any]
    entries: dict[str, LutEntry]
    layers: dict[str, LutLayer]
    calibration: Calibration = field(default_factory=Calibration)
    validation: dict[str, Any] | None = None
    profile: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "version": VERSION,
            "fingerprint": self.fingerprint,
            "model": self.model,
            "profile": self.profile,
            "calibration": self.calibration.__dict__,
            "validation": self.validation,
            "layers": {
                name: {"entry": layer.entry, "in_channels": layer.in_channels,
                       "out_channels": layer.out_channels,
                       "out_elements_per_channel": layer.out_elements_per_channel}
                for name, layer in self.layers.items()
            },
            "entries": {key: entry.to_dict() for key, entry in self.entries.items()},
        }

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())


def load_lut(path: str | Path, target: Any = None, force: bool = False) -> Lut:
    """Read and validate a LUT; with ``target``, refuse one measured elsewhere unless ``force``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"LUT file {path} does not exist; create it with hwdnal profile")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"LUT file {path} cannot be read ({error}); profile again") from error
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(
            f"LUT file {path} is corrupt or truncated (invalid JSON at line {error.lineno}); "
            "delete it and run hwdnal profile again"
        ) from None
    lut = lut_from_dict(data, str(path))
    if target is not None:
        check_target(lut, target, str(path), force)
    return lut


def check_target(lut: Lut, target: Any, where: str, force: bool = False) -> None:
    """``target``: the Measurer that will use the LUT, or a Target measured on this machine."""
    from hwdnal.devices import fingerprint_here
    from hwdnal.targets import Target, fingerprint_mismatches

    expected = fingerprint_here(target) if isinstance(target, Target) else target.fingerprint()
    problems = fingerprint_mismatches(expected, lut.fingerprint)
    if problems and not force:
        raise UserError(
            f"LUT {where} was measured for target '{lut.fingerprint.get('target')}' and does "
            f"not match target '{target.name}' here ({'; '.join(problems)}); profile again "
            "on this target or pass --force to use it anyway"
        )


def lut_from_dict(data: Any, where: str = "<lut>") -> Lut:
    """Build a :class:`Lut` from parsed JSON, checking every field."""
    def bad(what: str) -> UserError:
        return UserError(
            f"LUT file {where} is invalid: {what}; delete it and run hwdnal profile again"
        )

    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise bad(f"not a hwdnal LUT (schema should be '{SCHEMA}')")
    version = data.get("version")
    if version != VERSION:
        raise UserError(
            f"LUT file {where} has format version {version!r}, this hwdnal reads version "
            f"{VERSION}; profile again with this hwdnal"
        )
    for key, kind in (("fingerprint", dict), ("model", dict), ("entries", dict), ("layers", dict),
                      ("calibration", dict)):
        if not isinstance(data.get(key), kind):
            raise bad(f"'{key}' is missing or not an object")
    entries: dict[str, LutEntry] = {}
    for key, raw in data["entries"].items():
        entries[key] = _entry(key, raw, bad)
    layers: dict[str, LutLayer] = {}
    for name, raw in data["layers"].items():
        if not isinstance(raw, dict) or raw.get("entry") not in entries:
            raise bad(f"layer '{name}' refers to no entry")
        keys = ("in_channels", "out_channels", "out_elements_per_channel")
        if not all(_positive_int(raw.get(k)) for k in keys):
            raise bad(f"layer '{name}' has bad channel counts")
        layers[name] = LutLayer(name, raw["entry"], *(raw[k] for k in keys))
    if not layers:
        raise bad("it has no layers")
    cal = data["calibration"]
    try:
        calibration = Calibration(**cal)
    except TypeError as error:
        raise bad(f"calibration: {error}") from None
    scale, offset = calibration.scale, calibration.offset_ms
    memory = calibration.memory_ms_per_melem
    if not (_finite(scale) and scale > 0 and _finite(offset) and _finite(memory) and memory >= 0
            and _finite(calibration.per_layer_ms)):
        raise bad("calibration scale must be positive, memory non-negative, offset a number")
    validation = data.get("validation")
    if validation is not None and not isinstance(validation, dict):
        raise bad("'validation' is not an object")
    return Lut(
        fingerprint=data["fingerprint"], model=data["model"], entries=entries, layers=layers,
        calibration=calibration, validation=validation, profile=data.get("profile") or {},
    )


def _entry(key: str, raw: Any, bad) -> LutEntry:
    if not isinstance(raw, dict):
        raise bad(f"entry '{key}' is not an object")
    try:
        geometry = LayerGeometry.from_dict(raw["geometry"])
    except (KeyError, TypeError, ValueError):
        raise bad(f"entry '{key}' has a bad geometry") from None
    depthwise = bool(raw.get("depthwise", False))
    if depthwise:
        in_axis, out_axis = raw.get("channels"), []
        table = raw.get("latency_ms")
        measured = raw.get("measured_ms", table)
        ok = _axis(in_axis) and _vector(table, len(in_axis)) and _vector(measured, len(in_axis))
        if not ok:
            raise bad(f"entry '{key}' has a bad depthwise table")
        table2 = [[float(v)] for v in table]
        measured2 = [[float(v)] for v in measured]
    else:
        in_axis, out_axis = raw.get("in_channels"), raw.get("out_channels")
        table, measured = raw.get("latency_ms"), raw.get("measured_ms", raw.get("latency_ms"))
        if not (_axis(in_axis) and _axis(out_axis)):
            raise bad(f"entry '{key}' has bad channel axes (positive, increasing integers)")
        for name, matrix in (("latency_ms", table), ("measured_ms", measured)):
            if not (isinstance(matrix, list) and len(matrix) == len(in_axis)
                    and all(_vector(row, len(out_axis)) for row in matrix)):
                raise bad(f"entry '{key}' {name} is not a {len(in_axis)}x{len(out_axis)} table "
                          "of non-negative numbers")
        table2 = [[float(v) for v in row] for row in table]
        measured2 = [[float(v) for v in row] for row in measured]
    return LutEntry(key, geometry, depthwise, list(in_axis), list(out_axis), table2, measured2)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _axis(values: Any) -> bool:
    return (
        isinstance(values, list) and len(values) > 0 and all(_positive_int(v) for v in values)
        and all(a < b for a, b in itertools.pairwise(values))
    )


def _vector(values: Any, length: int) -> bool:
    return (
        isinstance(values, list) and len(values) == length
        and all(_finite(v) and v >= 0 for v in values)
    )
