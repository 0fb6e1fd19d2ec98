"""`hwdnal profile` as a library call: grid, calibration, validation, LUT file.

    layer grid (cached, resumable) -> LUT tables -> dense + K random sub-networks measured
    -> scale/offset fitted -> N fresh sub-networks measured -> errors stored -> LUT saved
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwdnal.devices.measurer import Measurement, Measurer, layer_settings, target_settings
from hwdnal.gating.model import GatedModel
from hwdnal.latency.cache import MeasurementCache
from hwdnal.latency.calibration import error_summary, fit_correction, random_subnetworks
from hwdnal.latency.folder import profiles_folder
from hwdnal.latency.lut import Calibration, Lut
from hwdnal.latency.predictor import LatencyModel
from hwdnal.latency.profiler import build_entries, discover_layers, measure_grid, plan_grid

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
    measurer: Measurer,
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
    """Profile ``model`` on ``measurer``'s device (the caller opens and closes it) and save
    its LUT."""
    return _profile(measurer, model, model_name, input_size, in_channels, out, step,
                    grid_points, calibrate, validate, seed, cache_dir, progress)


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
    model_id = architecture_id(model, input_shape)
    named: list[tuple[str, nn.Module]] = [(f"net | {model_id} | dense", model)]
    multiple = settings.preferred_channel_step
    calibration_nets = random_subnetworks(
        model, example[:1], calibrate, seed, multiple, stratified=True
    )
    validation_nets = random_subnetworks(model, example[:1], validate, seed + 7919, multiple)
    prefix = f"net | {model_id} | seed{seed} | m{multiple}"
    # each key names the sub-network's own architecture too: a cached measurement never
    # stands for another network (a changed sampler draws other ones for the same index)
    named += [(f"{prefix} | strat-cal{i} | {architecture_id(n, input_shape)}", n)
              for i, n in enumerate(calibration_nets)]
    named += [(f"{prefix} | val{i} | {architecture_id(n, input_shape)}", n)
              for i, n in enumerate(validation_nets)]
    note = _check_cached_networks(named, measurer, input_shape, cache)
    networks_now = measure_networks(named, measurer, input_shape, cache, progress, seed)
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
        points=[validation_point(raw[k], fit.predict(*features[k]), measured[k]) for k in fit_keys],
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
                validation_point(raw[k], p, measured[k])
                for k, p in zip(val_keys, predicted, strict=True)
            ],
        }
    lut.profile["seconds"] = round(time.monotonic() - started, 1)
    lut.save(path)
    return ProfileResult(
        lut=lut, path=path, grid_points=lut.profile["layer_measurements"],
        grid_measured_now=grid_measured, networks_measured_now=networks_now,
        seconds=time.monotonic() - started, note=note,
    )


def measure_networks(
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


def validation_point(raw: float, predicted: float, measured: Measurement) -> dict[str, float]:
    """One validation row: the LUT's raw sum, its calibrated prediction, the measurement."""
    return {"raw_ms": round(raw, 5), "predicted_ms": round(predicted, 5),
            "measured_ms": round(measured.median_ms, 5), "p90_ms": round(measured.p90_ms, 5)}


def architecture_id(model: nn.Module, input_shape: Sequence[int]) -> str:
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












