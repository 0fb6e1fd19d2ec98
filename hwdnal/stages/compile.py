"""Stage 5, compile: the pruned network compiled for the target (ONNX Runtime on CPUs, a
TensorRT engine on GPUs and Jetsons), checked against PyTorch, and measured interleaved with
the dense network; the verdict on the budget is judged on that measurement."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from torch import nn

from hwdnal.budget.measure import final_latency
from hwdnal.budget.target import TargetLatency
from hwdnal.results import LATENCY_ERROR_FLAG
from hwdnal.stages.context import Progress, StageContext


def run_compile(ctx: StageContext, progress: Progress, dense: nn.Module, pruned: nn.Module,
                result: dict[str, Any]) -> None:
    """Compile the pruned network for the target (ONNX; an engine on TensorRT targets),
    check it against PyTorch, and measure it interleaved with the dense network (the
    median of several device calls)."""
    from hwdnal.compile import (
        check_inputs_from,
        compile_network,
        compiled_dir,
        held_out_images,
    )

    started = time.perf_counter()
    latency = ctx.latency
    assert latency is not None and ctx.data is not None
    ctx.observer.stage_started("compile", 1, 1, 0)
    dense_measured, pruned_measured, calls = final_latency(dense, pruned, latency)
    artifact = compile_network(
        pruned, latency.input_shape, latency.device(),
        compiled_dir(ctx.run_dir.path, latency.target.name),
        check_inputs=check_inputs_from(ctx.data, latency.input_shape),
        check_source=f"{ctx.config.data} test images", measurement=pruned_measured,
        held_out=held_out_images(ctx.data, source=f"{ctx.config.data} test images"),
    )
    result["artifacts"].update(artifact.artifact_paths(ctx.run_dir.path))
    result["compiled"] = {latency.target.name: artifact.summary()}
    result["dense"]["latency_ms"] = dense_measured.median_ms
    result["dense"]["latency_p90_ms"] = dense_measured.p90_ms
    result["pruned"]["latency_ms"] = pruned_measured.median_ms
    result["pruned"]["latency_p90_ms"] = pruned_measured.p90_ms
    result["dense"]["latency_calls_ms"] = [round(d, 4) for d, _ in calls]
    result["pruned"]["latency_calls_ms"] = [round(p, 4) for _, p in calls]
    if latency.latency_model is not None:
        predicted = latency.latency_model.predict_module(pruned.cpu())
        pruned.to(ctx.device)
        error = (predicted - pruned_measured.median_ms) / pruned_measured.median_ms
        result["pruned"]["predicted_latency_ms"] = predicted
        result["pruned"]["latency_error"] = error  # (predicted - measured) / measured
        result["latency_flag"] = abs(error) > LATENCY_ERROR_FLAG
        if result["latency_flag"]:
            ctx.observer.message(
                f"warning: the LUT predicts {predicted:.3f} ms for the pruned network, "
                f"measured {pruned_measured.median_ms:.3f} ms ({100 * error:+.0f}%)")
    result["speedup"] = dense_measured.median_ms / pruned_measured.median_ms
    if latency.budget_ms is not None:
        judge_budget(progress.fit_rounds, latency, dense_measured.median_ms,
                     pruned_measured.median_ms, result, ctx.observer.message)
    ctx.finish_stage(progress, "compile", 0, started)
    result["stages"] = progress.stages


def judge_budget(fit_rounds: list[dict[str, float]], latency: TargetLatency, dense_ms: float,
                 pruned_ms: float, result: dict[str, Any], warn: Callable[[str], None]) -> None:
    """The verdict: the final measurement against the budget. An absolute budget is
    judged as measured, and also at the device's speed when the search began (the dense
    network, measured alongside, tells how much it has drifted since); ``warn`` receives the
    line that explains a missed budget."""
    relative = latency.budget is not None and latency.budget.relative
    budget_ms = latency.budget_against(dense_ms)
    drift = 1.0 if relative else latency.drift(dense_ms)  # a share follows the drift
    result["budget_ms"] = budget_ms
    result["budget_met"] = pruned_ms <= budget_ms
    result["device_drift"] = drift
    result["budget_met_at_start_speed"] = pruned_ms / drift <= budget_ms
    if result["budget_met"]:
        return
    kept = [r for r in fit_rounds if r["measured_ms"] <= r["budget_ms"]]
    fit = max(kept, key=lambda r: r["measured_ms"] / r["budget_ms"]) if kept else None
    fitted = f" (the fit measured {fit['measured_ms']:.3f} ms)" if fit else ""
    if result["budget_met_at_start_speed"] and drift > 1.0:
        warn(
            f"warning: the final measurement, {pruned_ms:.3f} ms, is over the budget of "
            f"{budget_ms:.3f} ms{fitted}, but the device runs {100 * (drift - 1):.0f}% "
            f"slower than when the search began (dense network {dense_ms:.3f} ms against "
            f"{latency.dense_ms:.3f} ms): at that speed it takes {pruned_ms / drift:.3f} "
            "ms, within the budget; re-measure when the device is quiet (hwdnal bench)")
    else:
        warn(
            f"warning: the final measurement, {pruned_ms:.3f} ms, is over the budget of "
            f"{budget_ms:.3f} ms{fitted}: the device is noisy; re-measure with hwdnal "
            "bench")
