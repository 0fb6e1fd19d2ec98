"""The LUT's reality check: a LUT loaded rather than profiled meets a measurement of the
dense network on the device; beyond the tolerance it is recalibrated on measured
sub-networks (or re-profiled), and the corrected LUT is saved beside the loaded one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwdnal.devices.measurer import Measurer
from hwdnal.latency.cache import MeasurementCache
from hwdnal.latency.calibration import error_summary, fit_correction, random_subnetworks
from hwdnal.latency.lut import Calibration, Lut
from hwdnal.latency.pipeline import (
    Progress,
    architecture_id,
    measure_networks,
    profile_model,
    validation_point,
)
from hwdnal.latency.predictor import LatencyModel
from hwdnal.targets import fingerprint_differences

#: a reused LUT whose dense prediction is off by more than this is corrected
DEFAULT_TOLERANCE = 0.10


#: random sub-networks measured (beside the dense one) to recalibrate a reused LUT
RECALIBRATE_SAMPLES = 6


@dataclass
class RealityCheck:
    """What a reused LUT's prediction for the dense network met on the device, and what was
    done about it: ``confirmed``, ``recalibrated`` or ``reprofiled``."""

    action: str
    predicted_ms: float  # the LUT as loaded
    measured_ms: float
    tolerance: float
    after_ms: float | None = None  # the corrected LUT's prediction for the dense network
    after_measured_ms: float | None = None
    saved_to: str | None = None
    #: informational fingerprint keys that differ between the LUT and this machine
    differences: list[str] = field(default_factory=list)

    @property
    def error(self) -> float:
        return (self.predicted_ms - self.measured_ms) / self.measured_ms

    @property
    def after_error(self) -> float | None:
        if self.after_ms is None or not self.after_measured_ms:
            return None
        return (self.after_ms - self.after_measured_ms) / self.after_measured_ms

    def line(self) -> str:
        seen = (f"LUT predicts {self.predicted_ms:.3f} ms for the dense network, the device "
                f"measures {self.measured_ms:.3f} ms ({100 * self.error:+.0f}%)")
        if self.differences:
            seen += f" (the LUT's machine differs: {', '.join(self.differences)})"
        if self.action == "confirmed":
            return f"{seen}: within {100 * self.tolerance:.0f}%, LUT confirmed"
        after = self.after_error
        now = f"; now {100 * after:+.1f}%" if after is not None else ""
        where = f", saved to {self.saved_to}" if self.saved_to else ", not saved"
        if self.action == "recalibrated":
            return (f"{seen}: recalibrated from {RECALIBRATE_SAMPLES + 1} fresh whole-network "
                    f"measurements{now}{where}")
        return (f"{seen}: recalibration was not enough, re-profiled this model{now}{where} "
                "(the loaded LUT is left as it was)")

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "dense_predicted_ms": round(self.predicted_ms, 5),
                "dense_measured_ms": round(self.measured_ms, 5),
                "error": round(self.error, 4), "tolerance": self.tolerance,
                "after_error": None if self.after_error is None else round(self.after_error, 4),
                "saved_to": self.saved_to, "differences": self.differences}


def sibling_path(path: str | Path, what: str) -> Path:
    """``NAME.json`` -> ``NAME.<what>.json`` beside it (a loaded LUT is never overwritten)."""
    path = Path(path)
    stem = path.name[:-5] if path.name.endswith(".json") else path.name
    for suffix in (".recalibrated", ".reprofiled"):
        stem = stem.removesuffix(suffix)
    return path.with_name(f"{stem}.{what}.json")


def check_reused_lut(
    measurer: Measurer, lut: Lut, lut_path: str | Path, model: nn.Module, model_name: str,
    input_shape: Sequence[int], dense_measured_ms: float, tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0, progress: Progress | None = None,
) -> tuple[Lut, RealityCheck]:
    """Compare a loaded LUT's prediction for the dense network with the device's measurement;
    beyond ``tolerance`` recalibrate its whole-network correction from fresh measurements,
    and re-profile when that is not enough. The loaded file is never written: a corrected
    LUT goes beside it (``NAME.recalibrated.json`` / ``NAME.reprofiled.json``)."""
    model = model.cpu().eval()
    predicted = LatencyModel(lut).predict_module(model)
    check = RealityCheck("confirmed", predicted, dense_measured_ms, tolerance,
                         differences=fingerprint_differences(measurer.fingerprint(),
                                                             lut.fingerprint))
    if abs(check.error) <= tolerance:
        return lut, check
    corrected, dense_now = recalibrate(measurer, lut, model, input_shape, seed)
    check.after_ms = LatencyModel(corrected).predict_module(model)
    check.after_measured_ms = dense_now
    fit_error = corrected.calibration.fit_median_error or 0.0
    after_error = check.after_error
    if after_error is not None and abs(after_error) <= tolerance and fit_error <= tolerance:
        check.action = "recalibrated"
        check.saved_to = _save_beside(corrected, sibling_path(lut_path, "recalibrated"))
        return corrected, check
    import tempfile

    out = sibling_path(lut_path, "reprofiled")
    with tempfile.TemporaryDirectory() as fresh:  # no cached measurement of the old LUT's
        result = profile_model(measurer, model, model_name, tuple(input_shape[2:]),
                               input_shape[1], out=out, seed=seed, cache_dir=fresh,
                               progress=progress)
    check.action = "reprofiled"
    check.after_ms = LatencyModel(result.lut).predict_module(model)
    check.after_measured_ms = result.lut.calibration.dense_measured_ms
    check.saved_to = str(result.path)
    return result.lut, check


def recalibrate(
    measurer: Measurer, lut: Lut, model: nn.Module, input_shape: Sequence[int], seed: int = 0,
    samples: int = RECALIBRATE_SAMPLES,
) -> tuple[Lut, float]:
    """A copy of ``lut`` whose whole-network correction is fitted to the dense network and
    ``samples`` random sub-networks measured now (dense as each batch's reference); returns
    it and the dense network's latency in that measurement."""
    import copy
    import tempfile

    shape = tuple(input_shape)
    example = torch.randn(1, *shape[1:])
    multiple = int(lut.profile.get("channel_multiple") or
                   measurer.target.profile.preferred_channel_step)
    model_id = architecture_id(model, shape)
    named: list[tuple[str, nn.Module]] = [(f"net | {model_id} | dense", model)]
    nets = random_subnetworks(model, example, samples, seed + 104729, multiple, stratified=True)
    named += [(f"net | {model_id} | recal{i}", net) for i, net in enumerate(nets)]
    with tempfile.TemporaryDirectory() as folder:  # fresh measurements only
        cache = MeasurementCache.for_target(folder, measurer.fingerprint())
        measure_networks(named, measurer, shape, cache, None, seed)
        measured = {key: cache.get(key) for key, _ in named}
    predictor = LatencyModel(lut)
    features = {key: predictor.features_module(net) for key, net in named}
    keys = [key for key, _ in named]
    fit = fit_correction([features[k][0] for k in keys], [features[k][1] for k in keys],
                         [measured[k].median_ms for k in keys], [features[k][2] for k in keys],
                         predictor.smallest_layer_ms())
    corrected = copy.deepcopy(lut)
    dense_key = keys[0]
    corrected.calibration = Calibration(
        scale=fit.scale, memory_ms_per_melem=fit.memory_ms_per_melem, offset_ms=fit.offset_ms,
        per_layer_ms=fit.per_layer_ms, samples=len(keys),
        dense_measured_ms=measured[dense_key].median_ms,
        dense_raw_ms=features[dense_key][0],
        points=[validation_point(features[k][0], fit.predict(*features[k]), measured[k])
                for k in keys],
    )
    corrected.calibration.fit_median_error = error_summary(
        [p["predicted_ms"] for p in corrected.calibration.points],
        [p["measured_ms"] for p in corrected.calibration.points],
    )["median_rel_error"]
    corrected.validation = None  # measured against the old correction
    corrected.profile = {**lut.profile, "recalibrated_from": {
        "scale": lut.calibration.scale, "memory_ms_per_melem": lut.calibration.memory_ms_per_melem,
        "offset_ms": lut.calibration.offset_ms,
        "dense_measured_ms": lut.calibration.dense_measured_ms}}
    return corrected, measured[dense_key].median_ms


def _save_beside(lut: Lut, path: Path) -> str | None:
    try:
        return str(lut.save(path))
    except OSError:
        return None
