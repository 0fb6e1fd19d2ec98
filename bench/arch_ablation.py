"""Ablations of the architecture stage: which part makes it see what a channel is worth.

From ONE set of dense weights (trained once, then passed as ``weights``), each variant runs
the architecture stage, the fit, finetuning and the final measurement at each budget, and
one table says, per variant: how many channels the stage kept and where its own mask lands
by the LUT against the budget, how many channels the fit then changed, the pruned network's
accuracy before and after finetuning, and its measured latency. Variants are cumulative,
each the one before it plus one change, so that every line is measured against the last.

    python bench/arch_ablation.py --out docs/arch-stage.md   # ~12 min on 2 cores, alone

No figure in the written doc is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]

#: cumulative: each variant is the one before it plus one change
_OPEN = dict(arch_batchnorm="running", gate_init=3.0, gate_floor=1e-3)
VARIANTS: dict[str, dict[str, Any]] = {
    "before (batch statistics, s = 0, SGD 0.2, local slope, dual ascent 0.05)": dict(
        arch_batchnorm="batch", gate_init=0.0, gate_floor=0.0, arch_optimizer="sgd",
        latency_gradient="local", latency_control="dual", latency_rate=0.05),
    "+ running statistics": dict(
        arch_batchnorm="running", gate_init=0.0, gate_floor=0.0, arch_optimizer="sgd",
        latency_gradient="local", latency_control="dual", latency_rate=0.05),
    "+ gates start open (s = 3)": dict(
        arch_batchnorm="running", gate_init=3.0, gate_floor=0.0, arch_optimizer="sgd",
        latency_gradient="local", latency_control="dual", latency_rate=0.05),
    "+ closed gates hear the loss (floor 1e-3)": dict(
        **_OPEN, arch_optimizer="sgd", latency_gradient="local", latency_control="dual",
        latency_rate=0.05),
    "+ Adam (β1 0.9), lr 0.05": dict(
        **_OPEN, arch_optimizer="adam", arch_lr=0.05, arch_momentum=0.9,
        latency_gradient="local", latency_control="dual", latency_rate=0.05),
    "+ latency gradient from the average cost per channel": dict(
        **_OPEN, arch_optimizer="adam", arch_lr=0.05, arch_momentum=0.9,
        latency_gradient="secant", latency_control="dual", latency_rate=0.05),
    "+ lr and dual-ascent rate from the stage's length": dict(
        **_OPEN, arch_optimizer="adam", arch_lr=None, arch_momentum=0.9,
        latency_gradient="secant", latency_control="dual", latency_rate=None),
    "+ latency weight switched: 10 over the budget, 0 under": dict(
        **_OPEN, arch_optimizer="adam", arch_lr=None, arch_momentum=0.9,
        latency_gradient="secant", latency_control="switch", latency_rate=None),
    "+ no momentum on the gates, β1 0": dict(
        **_OPEN, arch_optimizer="adam", arch_lr=None, arch_momentum=0.0,
        latency_gradient="secant", latency_control="switch", latency_rate=None,
        arch_ends_on="last"),
    "+ the stage ends on its best late mask under the aim (today's default)": dict(
        **_OPEN, arch_optimizer="adam", arch_lr=None, arch_momentum=0.0,
        latency_gradient="secant", latency_control="switch", latency_rate=None,
        arch_ends_on="best"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--train-subset", type=int, default=6000)
    parser.add_argument("--test-subset", type=int, default=2000, help="0: every test image")
    parser.add_argument("--epochs-weights", type=int, default=3)
    parser.add_argument("--epochs-arch", type=int, default=1)
    parser.add_argument("--epochs-finetune", type=int, default=2)
    parser.add_argument("--budgets", nargs="+", default=["50%"],
                        help="30%, and with a busy CPU 40%, are below the smallest "
                        "reachable ResNet-20 on this kind of machine")
    parser.add_argument("--variants", nargs="+", type=int, default=None,
                        help="indices into the variant list (default: all)")
    parser.add_argument("--lambda-a", type=float, default=0.1)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="one more variant: today's default with these SearchConfig "
                        "fields changed (numbers, or words)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="each seed trains its own dense network; a row per seed")
    parser.add_argument("--target", default="cpu")
    parser.add_argument("--lut-as-device", type=Path, default=None, metavar="LUT",
                        help="time every network by this LUT's own prediction (no "
                        "compile): each run then gets the same budget and fit, and variants "
                        "differ only by what they change (bench/lut_device.py)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "arch-ablation")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "arch-stage.md")
    args = parser.parse_args(argv)

    from hwdnal.errors import UserError
    from hwdnal.search import DnalSearch, SearchConfig

    args.runs.mkdir(parents=True, exist_ok=True)
    started = time.time()
    variants = dict(VARIANTS)
    if args.set:
        changes = {k: _value(v) for k, v in (item.split("=", 1) for item in args.set)}
        variants[", ".join(args.set)] = {**VARIANTS[list(VARIANTS)[-1]], **changes}
    names = list(variants)
    chosen = [names[i] for i in args.variants] if args.variants else names
    if args.set:
        chosen = [names[-1]]
    rows: list[dict[str, Any]] = []
    for seed, budget in ((seed, budget) for seed in args.seeds for budget in args.budgets):
        common = dict(model=args.model, data="fashion-mnist", train_subset=args.train_subset,
                      test_subset=args.test_subset or None, epochs_weights=args.epochs_weights,
                      epochs_arch=args.epochs_arch, epochs_finetune=args.epochs_finetune,
                      seed=seed, target=args.target, lambda_a=args.lambda_a)
        if args.lut_as_device:
            common.update(lut=str(args.lut_as_device), force_lut=True, compile=False)
        weights = args.runs / f"dense-seed{seed}-{args.train_subset}.pt"
        if not weights.exists():
            print(f"seed {seed}: training the dense network once ({args.epochs_weights} "
                  "epochs)", flush=True)
            run = args.runs / f"dense-seed{seed}"
            with device(args) as measurer:
                DnalSearch(SearchConfig(**{**common, "epochs_arch": 1, "epochs_finetune": 0,
                                           "compile": False}), run, measurer=measurer).run()
            dense = torch.load(run / "dense.pt", weights_only=False)
            torch.save(dense.state_dict(), weights)
        for k, name in enumerate(chosen):
            tag = ("-" + "-".join(args.set).replace("=", "")) if args.set else ""
            out = args.runs / f"s{seed}-b{budget.rstrip('%')}-v{names.index(name)}{tag}"
            if not (out / "result.json").exists():
                print(f"seed {seed} · {budget} · {name}", flush=True)
                t0 = time.time()
                try:
                    with device(args) as measurer:
                        DnalSearch(SearchConfig(**{**common, **variants[name],
                                                   "budget": budget, "weights": str(weights)}),
                                   out, measurer=measurer).run()
                except UserError as error:  # e.g. a fit that found nothing within the budget
                    print(f"  failed: {error}", flush=True)
                    (out / "failed.txt").write_text(str(error))
                print(f"  {time.time() - t0:.0f} s", flush=True)
            if (out / "failed.txt").exists() and not (out / "result.json").exists():
                rows.append({"seed": seed, "budget": budget, "k": k, "variant": name,
                             "failed": (out / "failed.txt").read_text()})
                continue
            result = json.loads((out / "result.json").read_text())
            rows.append({"seed": seed, **_row(budget, k, name, result)})
    _write(args, rows, time.time() - started)
    print(f"wrote {args.out}")
    return 0


@contextmanager
def device(args: argparse.Namespace) -> Iterator[Any]:
    """The target's device, or None (the search opens it), or the LUT standing in for it."""
    if args.lut_as_device is None:
        yield None
        return
    from lut_device import LutDevice

    from hwdnal.devices import open_measurer
    from hwdnal.targets import load_target

    measurer = LutDevice(args.lut_as_device, open_measurer(load_target(args.target)))
    try:
        yield measurer
    finally:
        measurer.close()


def _value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return None if text == "None" else text


def _row(budget: str, k: int, name: str, result: dict[str, Any]) -> dict[str, Any]:
    arch = result.get("arch_mask", {})
    dense, pruned = result["dense"], result["pruned"]
    latency, met = pruned.get("latency_ms"), result.get("budget_met")
    dense_ms = dense.get("latency_ms")
    if dense_ms is None and budget.endswith("%"):  # not compiled: the budget's own base
        dense_ms = result["budget_ms"] / (float(budget.rstrip("%")) / 100)
    if latency is None and result.get("fit_rounds"):  # not compiled: the fit's last round
        last = result["fit_rounds"][-1]
        latency = last["measured_ms"]
        met = all(c <= b for c, b in zip(last["calls_ms"], last["call_budgets_ms"],
                                         strict=True))
    return {"budget": budget, "k": k, "variant": name, "kept": arch.get("kept"),
            "total": arch.get("total"), "of_budget": arch.get("of_budget"),
            "fit_changed": arch.get("fit_changed"),
            "before_finetune": arch.get("accuracy_before_finetune"),
            "accuracy": pruned["accuracy"], "dense_accuracy": dense["accuracy"],
            "latency": latency / dense_ms if latency is not None and dense_ms else None,
            "budget_met": met}


def _percent(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{100 * value:.{digits}f}"


def _write(args: argparse.Namespace, rows: list[dict[str, Any]], seconds: float) -> None:
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=ROOT).stdout.strip()
    command = "python bench/arch_ablation.py " + " ".join(sys.argv[1:])
    lines = [
        "# The architecture stage: what makes it see a channel's worth",
        "",
        f"Generated by `bench/arch_ablation.py` on {date.today()} (revision {revision}, "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"{seconds / 60:.0f} min for the runs not already in its --runs folder); no figure "
        "here is typed by hand. Command:",
        "",
        f"    {command}",
        "",
        f"- ResNet-20 on Fashion-MNIST: {args.train_subset} training images, "
        f"{args.test_subset or 'all'} held-out; epochs: weights {args.epochs_weights} (once, "
        f"shared by every row), architecture {args.epochs_arch}, finetune {args.epochs_finetune}; "
        f"λa {args.lambda_a}; seed(s) {', '.join(map(str, args.seeds))} (each its own dense "
        f"network); target `{args.target}`",
        "- *stage's mask*: the channels the architecture stage itself kept, and that mask's "
        "latency by the LUT as a share of the budget (the fit then measures on the device and "
        "changes channels until every call is within the budget); *fit changed*: channels "
        "the fit added or removed; accuracies are top-1 on the held-out images, before and "
        "after finetuning; latency is the final measurement, as a share of the dense "
        "network's.",
        "- Variants are cumulative: each row is the one above it plus one change.",
        *([f"- The device is the LUT `{args.lut_as_device}`: every network is timed by its "
            "own prediction (bench/lut_device.py), so every run gets the same budget and "
            "fit, and rows differ only by what they change; nothing is compiled"]
          if args.lut_as_device else []),
        "",
        "| seed | budget | variant | kept by the stage | stage's mask / budget (LUT) | "
        "fit changed | top-1 before finetune (%) | top-1 (%) | dense top-1 (%) | "
        "latency (% of dense) | "
        "met |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['seed']} | {r['budget']} | {r['variant']} | failed: "
                         f"{r['failed'][:160]} | | | | | | | |")
            continue
        lines.append(
            f"| {r['seed']} | {r['budget']} | {r['variant']} | {r['kept']}/{r['total']} | "
            f"{_percent(r['of_budget'], 0)}% | {r['fit_changed']} | "
            f"{_percent(r['before_finetune'])} | {_percent(r['accuracy'])} | "
            f"{_percent(r['dense_accuracy'])} | {_percent(r['latency'], 0)} | "
            f"{'yes' if r['budget_met'] else 'no'} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
