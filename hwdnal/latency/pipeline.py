"""`hwdnal profile` as a library call: grid, calibration, validation, LUT file.

    layer grid (cached, resumable) -> LUT tables -> dense + K random sub-networks measured
    -> scale/offset fitted -> N fresh sub-networks measured -> errors stored -> LUT saved
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwdnal.devices import as_measurer
from hwdnal.devices.measurer import Measurement, Measurer, layer_settings, target_settings
from hwdnal.gating.model import GatedModel
from hwdnal.latency.cache import MeasurementCache
from hwdnal.latency.calibration import error_summary, fit_correction, random_subnetworks
from hwdnal.latency.folder import profiles_folder
from hwdnal.latency.lut import Calibration, Lut
from hwdnal.latency.predictor import LatencyModel
from hwdnal.latency.profiler import build_entries, discover_layers, measure_grid, plan_grid
from hwdnal.targets import Target, fingerprint_differences

Progress = Callable[[int, int, str], None]
NETWORK_BATCH = 12  # whole networks compiled and timed together


@dataclass
class ProfileResult:
    lut: Lut
    path: Path
    grid_points: int  # layer measurements the LUT rests on
    grid_measured_now: int  # of which measured in this run (the rest came from the cache)
    networks_measured_now: int
    seconds: float
    #: one line when cached whole-network measurements disagreed with the device
    note: str | None = None


def input_shape_for(
    batch: int, in_channels: int, input_size: int | Sequence[int]
) -> tuple[int, ...]:
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    return (batch, in_channels, *size)


def default_lut_path(model_name: str, target_name: str, input_shape: Sequence[int]) -> Path:
    """``MODEL-TARGET-HxW.json`` in the per-user profiles folder (:func:`profiles_folder`)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_name)
    size = "x".join(str(d) for d in input_shape[2:])
    return profiles_folder() / f"{safe}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', target_name)}-{size}.json"


def profile_model(
    device: Measurer | Target | str,
    model: nn.Module,
    model_name: str,
    input_size: int | Sequence[int],
    in_channels: int = 3,
    *,
    out: str | Path | None = None,
    step: int | None = None,
    grid_points: int | None = None,
    calibrate: int | None = None,
    validate: int | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
) -> ProfileResult:
    """Profile ``model`` on a target's device (a Measurer, or a target opened now) and save
    its LUT."""
    measurer, owned = as_measurer(device)
    try:
        return _profile(measurer, model, model_name, input_size, in_channels, out, step,
                        grid_points, calibrate, validate, seed, cache_dir, progress)
    finally:
        if owned:
            measurer.close()


def _profile(
    measurer: Measurer, model: nn.Module, model_name: str, input_size: int | Sequence[int],
    in_channels: int, out: str | Path | None, step: int | None, grid_points: int | None,
    calibrate: int | None, validate: int | None, seed: int, cache_dir: str | Path | None,
    progress: Progress | None,
) -> ProfileResult:
    started = time.monotonic()
    target = measurer.target
    settings = target.profile
    step = step or settings.grid_step
    grid_points = grid_points or settings.grid_points
    calibrate = settings.calibrate if calibrate is None else calibrate
    validate = settings.validate if validate is None else validate
    fingerprint = measurer.fingerprint()
    input_shape = input_shape_for(target.batch, in_channels, input_size)
    path = Path(out) if out else default_lut_path(model_name, target.name, input_shape)
    cache = MeasurementCache.for_target(cache_dir or path.parent / ".cache", fingerprint)

    model = model.cpu().eval()
    example = torch.randn(*input_shape)
    gated = GatedModel(_copy(model), example[:1])
    layers = discover_layers(gated, example)
    entries = plan_grid(layers, step, grid_points)
    grid_measured = measure_grid(
        entries, measurer, target.batch, cache, layer_settings(target), progress
    )
    lut_entries, lut_layers = build_entries(entries, layers, cache)
    lut = Lut(
        fingerprint=fingerprint,
        model={"name": model_name, "input_shape": list(input_shape), "layers": len(lut_layers),
               "gates": gated.plan.num_gates},
        entries=lut_entries,
        layers=lut_layers,
        profile={"grid_step": step, "grid_points_per_axis": grid_points,
                 "layer_measurements": sum(len(e.points()) for e in entries.values()),
                 "layer_warmup": settings.layer_warmup,
                 "layer_iterations": settings.layer_iterations,
                 "layer_min_seconds": settings.layer_min_seconds,
                 "network_warmup": target.warmup, "network_iterations": target.iterations,
                 "network_min_seconds": target.min_seconds,
                 "seed": seed, "channel_multiple": settings.preferred_channel_step},
    )
    predictor = LatencyModel(lut)

    # Whole networks: the dense model, K calibration and N validation sub-networks.
    model_id = _architecture_id(model, input_shape)
    named: list[tuple[str, nn.Module]] = [(f"net | {model_id} | dense", model)]
    multiple = settings.preferred_channel_step
    calibration_nets = random_subnetworks(
        model, example[:1], calibrate, seed, multiple, stratified=True
    )
    validation_nets = random_subnetworks(model, example[:1], validate, seed + 7919, multiple)
    prefix = f"net | {model_id} | seed{seed} | m{multiple}"
    # each key names the sub-network's own architecture too: a cached measurement never
    # stands for another network (a changed sampler draws other ones for the same index)
    named += [(f"{prefix} | strat-cal{i} | {_architecture_id(n, input_shape)}", n)
              for i, n in enumerate(calibration_nets)]
    named += [(f"{prefix} | val{i} | {_architecture_id(n, input_shape)}", n)
              for i, n in enumerate(validation_nets)]
    note = _check_cached_networks(named, measurer, input_shape, cache)
    networks_now = _measure_networks(named, measurer, input_shape, cache, progress, seed)
    measured = {key: cache.get(key) for key, _ in named}
    features = {key: predictor.features_module(net) for key, net in named}
    raw = {key: value[0] for key, value in features.items()}

    fit_keys = [key for key, _ in named if "| val" not in key]
    fit = fit_correction(
        [features[k][0] for k in fit_keys], [features[k][1] for k in fit_keys],
        [measured[k].median_ms for k in fit_keys], [features[k][2] for k in fit_keys],
        predictor.smallest_layer_ms(),
    )
    dense_key = named[0][0]
    lut.calibration = Calibration(
        scale=fit.scale, memory_ms_per_melem=fit.memory_ms_per_melem, offset_ms=fit.offset_ms,
        per_layer_ms=fit.per_layer_ms, samples=len(fit_keys),
        dense_measured_ms=measured[dense_key].median_ms,
        dense_raw_ms=raw[dense_key],
        points=[_point(raw[k], fit.predict(*features[k]), measured[k]) for k in fit_keys],
    )
    lut.calibration.fit_median_error = error_summary(
        [p["predicted_ms"] for p in lut.calibration.points],
        [p["measured_ms"] for p in lut.calibration.points],
    )["median_rel_error"]
    val_keys = [key for key, _ in named if "| val" in key]
    if val_keys:
        predicted = [fit.predict(*features[k]) for k in val_keys]
        actual = [measured[k].median_ms for k in val_keys]
        lut.validation = {
            "samples": len(val_keys),
            **error_summary(predicted, actual),
            "points": [
                _point(raw[k], p, measured[k]) for k, p in zip(val_keys, predicted, strict=True)
            ],
        }
    lut.profile["seconds"] = round(time.monotonic() - started, 1)
    lut.save(path)
    return ProfileResult(
        lut=lut, path=path, grid_points=lut.profile["layer_measurements"],
        grid_measured_now=grid_measured, networks_measured_now=networks_now,
        seconds=time.monotonic() - started, note=note,
    )


def _measure_networks(
    named: list[tuple[str, nn.Module]], measurer: Measurer, input_shape: tuple[int, ...],
    cache: MeasurementCache, progress: Progress | None, seed: int = 0,
) -> int:
    """Measure the networks not in the cache, with the first one (the dense model) in every
    batch as a reference; returns how many were measured now.

    Each batch's medians are rescaled by (reference's first median / its median in this
    batch), so drift of a shared machine between batches cancels: what is kept is each
    network's ratio to the reference timed side by side. The order is shuffled so that
    calibration and validation samples share batches. Every batch is flushed to the cache,
    so an interrupted profile resumes here too.
    """
    reference_key, reference = named[0]
    todo = [(key, net) for key, net in named[1:] if key not in cache]
    order = torch.randperm(len(todo), generator=torch.Generator().manual_seed(seed)).tolist()
    todo = [todo[i] for i in order]
    measured_now = 0
    settings = target_settings(measurer.target)
    if reference_key not in cache and not todo:
        cache.put(reference_key, measurer.measure([(reference, input_shape)], settings)[0])
        measured_now += 1
    total = len(todo)
    if progress:
        progress(0, total, "whole networks")
    for start in range(0, total, NETWORK_BATCH - 1):
        chunk = todo[start : start + NETWORK_BATCH - 1]
        results = measurer.measure(
            [(reference, input_shape)] + [(net, input_shape) for _, net in chunk], settings
        )
        if reference_key not in cache:
            cache.put(reference_key, results[0])
            measured_now += 1
        factor = cache.get(reference_key).median_ms / results[0].median_ms
        for (key, _), result in zip(chunk, results[1:], strict=True):
            cache.put(key, Measurement(result.median_ms * factor, result.p90_ms * factor,
                                       result.samples))
        cache.flush()
        measured_now += len(chunk)
        if progress:
            progress(min(start + NETWORK_BATCH - 1, total), total, "whole networks")
    return measured_now


def _check_cached_networks(
    named: list[tuple[str, nn.Module]], measurer: Measurer, input_shape: tuple[int, ...],
    cache: MeasurementCache, tolerance: float = 0.5,
) -> str | None:
    """Whole networks measured earlier meet the device: the dense network is measured now
    and, when the cached value is off by more than ``tolerance``, every cached whole-network
    measurement of this profile is dropped so calibration and validation use fresh ones
    (the layer grid is kept: the new calibration absorbs a uniform change of speed). The
    cache is local, so only a machine swapped under the same fingerprint moves it by much:
    the tolerance is wide, so timing noise of tiny networks does not trigger it."""
    dense_key = named[0][0]
    cached = cache.get(dense_key)
    if cached is None:
        return None
    settings = target_settings(measurer.target, pre_seconds=0.2)  # warm, as the cache was
    now = measurer.measure([(named[0][1], input_shape)], settings)[0]
    error = (cached.median_ms - now.median_ms) / now.median_ms
    if abs(error) <= tolerance:
        return None
    for key, _ in named:
        cache.points.pop(key, None)
    cache.put(dense_key, now)
    cache.flush()
    return (f"the cached dense network ({cached.median_ms:.3f} ms) is {100 * error:+.0f}% off "
            f"the device now ({now.median_ms:.3f} ms): whole networks measured again, "
            "calibration refitted")


def _point(raw: float, predicted: float, measured: Measurement) -> dict[str, float]:
    return {"raw_ms": round(raw, 5), "predicted_ms": round(predicted, 5),
            "measured_ms": round(measured.median_ms, 5), "p90_ms": round(measured.p90_ms, 5)}


def _architecture_id(model: nn.Module, input_shape: Sequence[int]) -> str:
    """Identifies a model's architecture (not its weights) for the measurement cache."""
    text = repr(model) + repr(tuple(input_shape))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def describe(result: ProfileResult) -> dict[str, Any]:
    """The figures the CLI prints at the end."""
    lut = result.lut
    return {
        "path": str(result.path),
        "layers": len(lut.layers),
        "signatures": len(lut.entries),
        "grid_points": result.grid_points,
        "grid_measured_now": result.grid_measured_now,
        "networks_measured_now": result.networks_measured_now,
        "seconds": result.seconds,
        "calibration": lut.calibration,
        "validation": lut.validation,
    }


# -- a reused LUT against the device ------------------------------------------------------
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
    model_id = _architecture_id(model, shape)
    named: list[tuple[str, nn.Module]] = [(f"net | {model_id} | dense", model)]
    nets = random_subnetworks(model, example, samples, seed + 104729, multiple, stratified=True)
    named += [(f"net | {model_id} | recal{i}", net) for i, net in enumerate(nets)]
    with tempfile.TemporaryDirectory() as folder:  # fresh measurements only
        cache = MeasurementCache.for_target(folder, measurer.fingerprint())
        _measure_networks(named, measurer, shape, cache, None, seed)
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
        points=[_point(features[k][0], fit.predict(*features[k]), measured[k]) for k in keys],
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
