"""hwdnal against the methods a user would pick instead, at equal measured latency.

For each model and seed the dense network is trained once (hwdnal's weight stage); then, at
each budget (a fraction of the dense latency on the target):

    hwdnal    the search with the latency term (``budget=``), from the dense weights
    dnal      DNAL with λa alone; λa tuned (a few architecture runs) until the pruned
              network's measured latency lands near the budget; finetuned like hwdnal
    uniform   the same fraction of every channel group kept (chosen by measuring), trained
              from scratch for hwdnal's total epochs (weights + architecture + finetune)
    l1        torch-pruning's L1-magnitude pruner, one ratio for every group (chosen by
              measuring), from the dense weights, finetuned like hwdnal

and the ablations that separate the search from the recipe:

    hwdnal-kd       hwdnal's pruned network finetuned with distillation from the dense one
                    (what ``hwdnal search --distill`` does)
    hwdnal-scratch  hwdnal's found architecture, freshly initialised and trained from
                    scratch with exactly the uniform baseline's recipe: does the search find
                    a better architecture at all?
    uniform-kd      uniform width from scratch, with the same distillation
    l1-kd           the L1-pruned network finetuned with the same distillation

All final networks of a seed are measured in ONE interleaved call with the dense network,
so every latency is a ratio measured side by side. Writes docs/benchmarks.md and
docs/img/pareto.png; run it on an otherwise idle machine.

    python bench/compare_methods.py --mode quick        # < 30 min on 2 cores
    python bench/compare_methods.py --mode full         # hours; prints its estimate first
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

from hwdnal.budgeting import _measure_together
from hwdnal.complexity import params_and_macs
from hwdnal.data import load_data
from hwdnal.devices import open_measurer
from hwdnal.distillation import Distillation
from hwdnal.errors import UserError
from hwdnal.models import create_model
from hwdnal.search import DnalSearch, SearchConfig
from hwdnal.targets import Target, all_targets, load_target

METHODS = ("hwdnal", "hwdnal-kd", "hwdnal-scratch", "dnal", "uniform", "uniform-kd", "l1",
           "l1-kd")


@dataclass(frozen=True)
class Settings:
    """One benchmark mode: what is trained, how long, how many seeds."""

    models: tuple[str, ...]
    seeds: tuple[int, ...]
    fractions: tuple[float, ...]
    train_subset: int | None
    test_subset: int | None
    epochs_weights: int
    epochs_arch: int
    epochs_finetune: int
    lambda_tries: int  # DNAL runs at most per budget while tuning λa
    lambda_tolerance: float  # |measured ratio - budget| that ends the tuning
    calibrate: int  # LUT: calibration sub-networks
    validate: int  # LUT: held-out sub-networks for the fidelity table
    grid_points: int | None  # LUT grid points per axis (None: the target's)
    overhead_rounds: int
    #: distillation of the -kd rows: the share α and the temperature (hwdnal's options)
    distill: float = 0.5
    distill_temperature: float = 4.0
    knobs: tuple[float, ...] = tuple(round(0.2 + 0.05 * i, 2) for i in range(16))


MODES: dict[str, Settings] = {
    "quick": Settings(models=("resnet20",), seeds=(0, 1), fractions=(0.7, 0.5, 0.3),
                      train_subset=6000, test_subset=2000, epochs_weights=3, epochs_arch=1,
                      epochs_finetune=2, lambda_tries=3, lambda_tolerance=0.04, calibrate=12,
                      validate=12, grid_points=None, overhead_rounds=8),
    "full": Settings(models=("resnet20", "mobilenet_v2_cifar"), seeds=(0, 1, 2),
                     fractions=(0.7, 0.5, 0.3), train_subset=None, test_subset=None,
                     epochs_weights=30, epochs_arch=3, epochs_finetune=15, lambda_tries=4,
                     lambda_tolerance=0.03, calibrate=12, validate=24, grid_points=None,
                     overhead_rounds=15),
    # the test's case: everything once, tiny; numbers meaningless
    "smoke": Settings(models=("resnet20",), seeds=(0,), fractions=(0.5,), train_subset=256,
                      test_subset=256, epochs_weights=1, epochs_arch=1, epochs_finetune=1,
                      lambda_tries=1, lambda_tolerance=0.5, calibrate=3, validate=3,
                      grid_points=2, overhead_rounds=1, knobs=(0.3, 0.5, 0.7)),
}


@dataclass
class Entry:
    """One trained network of one method at one budget and seed."""

    model: str
    seed: int
    method: str
    fraction: float
    knob: float | None = None  # λa, width fraction or pruning ratio
    accuracy: float | None = None
    params: int | None = None
    macs: int | None = None
    latency_ms: float | None = None
    dense_ms: float | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)
    measurements: int = 0  # whole-network measurements spent choosing the architecture
    tries: int = 0
    failed: str | None = None


class Bench:
    def __init__(self, settings: Settings, target: Target, target_arg: str, runs: Path) -> None:
        self.s = settings
        self.target = target
        self.device = open_measurer(target)  # every measurement of the bench goes here
        self.target_arg = target_arg
        self.runs = runs
        self.entries: list[Entry] = []
        self.dense: list[dict[str, Any]] = []
        self.profiles: list[dict[str, Any]] = []
        self.overhead: list[dict[str, Any]] = []
        self.families: dict[str, dict[str, list[dict[str, float]]]] = {}
        self.lambdas: dict[tuple[str, float], float] = {}
        self.tries: dict[tuple[str, int], dict[float, tuple[float, Path, Any]]] = {}

    # -- shared pieces ------------------------------------------------------------------
    def config(self, model: str, seed: int, **changes: Any) -> SearchConfig:
        s = self.s
        settings: dict[str, Any] = dict(
            model=model, data="fashion-mnist", train_subset=s.train_subset,
            test_subset=s.test_subset, epochs_weights=s.epochs_weights,
            epochs_arch=s.epochs_arch, epochs_finetune=s.epochs_finetune, seed=seed,
            target=self.target_arg, compile=False,
            trust_weights_pickle=True)  # --weights are the bench's own dense.pt files
        return SearchConfig(**{**settings, **changes})

    def data(self, seed: int):
        return load_data("fashion-mnist", None, None, self.s.train_subset, self.s.test_subset,
                         seed)

    def input_shape(self) -> tuple[int, ...]:
        return (self.target.batch, 1, 28, 28)

    def step(self) -> int:
        return self.target.profile.preferred_channel_step

    # -- per model, once ----------------------------------------------------------------
    def profile(self, model_name: str) -> str:
        """Profile a fresh LUT (timed, from an empty cache) with held-out validation."""
        from hwdnal.latency.pipeline import profile_model

        out = self.runs / "luts" / f"{model_name}-{self.target.name}-28x28.json"
        started = time.perf_counter()
        result = profile_model(
            self.device, create_model(model_name, 10, 1), model_name, 28, 1, out=out,
            calibrate=self.s.calibrate, validate=self.s.validate,
            grid_points=self.s.grid_points, cache_dir=self.runs / "luts" / "cache",
        )
        validation = result.lut.validation or {}
        self.profiles.append({
            "model": model_name, "target": self.target.name,
            "seconds": time.perf_counter() - started, "grid_points": result.grid_points,
            "networks": result.networks_measured_now,
            "calibrate": self.s.calibrate, "validate": self.s.validate,
            **{k: validation.get(k) for k in ("samples", "median_rel_error", "p95_rel_error",
                                               "max_rel_error")},
        })
        return str(out)

    def measure_families(self, model_name: str) -> None:
        """Latency of every uniform width and every L1 ratio (weights do not matter)."""
        from methods import l1_pruned, measure_family, uniform_width

        torch.manual_seed(0)
        dense = create_model(model_name, 10, 1).eval()
        example = torch.randn(self.input_shape())
        uniform = measure_family(self.device, dense, self.input_shape(),
                                 lambda f: uniform_width(dense, example, f, self.step()),
                                 self.s.knobs)
        l1 = measure_family(self.device, dense, self.input_shape(),
                            lambda r: l1_pruned(dense, example, r, self.step()),
                            [round(1 - k, 2) for k in self.s.knobs])
        self.families[model_name] = {"uniform": [asdict(c) for c in uniform],
                                     "l1": [asdict(c) for c in l1]}

    def gate_overhead(self, model_name: str) -> None:
        """Per-step time of plain, gates-off and architecture-stage training, interleaved."""
        from gate_overhead import _step_time

        from hwdnal.gated import GatedModel
        from hwdnal.gates import GateMode

        torch.manual_seed(0)
        x = torch.randn(128, 1, 28, 28).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (128,))
        plain = create_model(model_name, 10, 1).to(memory_format=torch.channels_last)
        off = GatedModel(copy.deepcopy(plain), x[:2])
        soft = GatedModel(copy.deepcopy(plain), x[:2])
        soft.set_mode(GateMode.SOFT)
        soft.set_delta(100.0)
        for p in soft.model.parameters():
            p.requires_grad_(False)
        cases = {"plain": (plain, list(plain.parameters())),
                 "gates off": (off, list(off.model.parameters())),
                 "architecture stage": (soft, [soft.gate.s])}
        for net, params in cases.values():
            _step_time(net, params, x, y, 2)
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(self.s.overhead_rounds):
            for name, (net, params) in cases.items():
                samples[name] += _step_time(net, params, x, y, 2)
        base = statistics.median(samples["plain"])
        for name, values in samples.items():
            self.overhead.append({"model": model_name, "case": name,
                                  "step_ms": 1000 * statistics.median(values),
                                  "relative": statistics.median(values) / base,
                                  "steps": len(values)})

    # -- per model and seed --------------------------------------------------------------
    def run_seed(self, model_name: str, seed: int, lut: str) -> None:
        from methods import l1_pruned, pick_for_budget, train_plain, uniform_width

        s = self.s
        base = self.runs / model_name / f"seed{seed}"
        dense_result = DnalSearch(self.config(model_name, seed, epochs_arch=0,
                                              epochs_finetune=0), base / "dense").run()
        dense_path = base / "dense" / "dense.pt"
        dense = torch.load(dense_path, weights_only=False).eval()
        data = self.data(seed)
        example = torch.randn(self.input_shape())
        networks: list[tuple[Entry, torch.nn.Module | None]] = []
        weights_stage = next(st for st in dense_result["stages"] if st["name"] == "weights")
        self.dense.append({"model": model_name, "seed": seed,
                           "accuracy": dense_result["dense"]["accuracy"],
                           "params": dense_result["dense"]["params"],
                           "macs": dense_result["dense"]["macs"], "stage": weights_stage})
        total_epochs = s.epochs_weights + s.epochs_arch + s.epochs_finetune
        c = SearchConfig()  # the engine's learning rates, batch size and weight decay

        for fraction in s.fractions:
            # (a) hwdnal with the latency term
            entry = Entry(model_name, seed, "hwdnal", fraction)
            try:
                result = DnalSearch(self.config(model_name, seed, weights=str(dense_path),
                                                epochs_weights=0, budget=f"{fraction * 100:g}%",
                                                lut=lut), base / f"hwdnal-{fraction:g}").run()
                entry.stages = [st for st in result["stages"] if st["name"] != "weights"]
                entry.measurements = len(result["fit_rounds"])
                entry.tries = 1
                net = torch.load(base / f"hwdnal-{fraction:g}" / "pruned.pt", weights_only=False)
            except UserError as error:
                entry.failed, net = str(error).splitlines()[0], None
            networks.append((entry, net))
            print(f"{model_name} seed {seed} {fraction:.0%} hwdnal done", flush=True)
            if net is not None:
                networks += self.hwdnal_ablations(model_name, seed, fraction, dense,
                                                  base / f"hwdnal-{fraction:g}", entry)

            # (b) DNAL, λa alone, tuned by measuring
            entry, net = self.dnal_for_budget(model_name, seed, fraction, dense, dense_path,
                                              base)
            seconds = train_plain(net, data, s.epochs_finetune, c.finetune_lr, c.batch_size,
                                  c.weight_decay, seed)
            entry.stages.append({"name": "finetune", "epochs": s.epochs_finetune,
                                 "seconds": round(seconds, 2)})
            networks.append((entry, net))

            # (c) uniform width, from scratch, hwdnal's total epochs
            chosen = pick_for_budget(self._family(model_name, "uniform"), fraction)
            torch.manual_seed(seed)
            net = uniform_width(create_model(model_name, 10, 1), example, chosen.knob,
                                self.step())
            seconds = train_plain(net, data, total_epochs, c.lr, c.batch_size, c.weight_decay,
                                  seed)
            entry = Entry(model_name, seed, "uniform", fraction, knob=chosen.knob,
                          measurements=len(s.knobs),
                          stages=[{"name": "train from scratch", "epochs": total_epochs,
                                   "seconds": round(seconds, 2)}])
            networks.append((entry, net))
            torch.manual_seed(seed)  # the same network again, taught by the dense one
            net = uniform_width(create_model(model_name, 10, 1), example, chosen.knob,
                                self.step())
            seconds = train_plain(net, data, total_epochs, c.lr, c.batch_size, c.weight_decay,
                                  seed, self.teacher(dense))
            networks.append((replace(entry, method="uniform-kd", stages=[
                {"name": "train from scratch, distilled", "epochs": total_epochs,
                 "seconds": round(seconds, 2)}]), net))

            # (d) torch-pruning L1 magnitude from the dense weights, finetuned
            chosen = pick_for_budget(self._family(model_name, "l1"), fraction)
            started = time.perf_counter()
            net = l1_pruned(dense, example, chosen.knob, self.step())
            prune_seconds = time.perf_counter() - started
            seconds = train_plain(net, data, s.epochs_finetune, c.finetune_lr, c.batch_size,
                                  c.weight_decay, seed)
            entry = Entry(model_name, seed, "l1", fraction, knob=chosen.knob,
                          measurements=len(s.knobs),
                          stages=[{"name": "prune (L1)", "epochs": 0,
                                   "seconds": round(prune_seconds, 2)},
                                  {"name": "finetune", "epochs": s.epochs_finetune,
                                   "seconds": round(seconds, 2)}])
            networks.append((entry, net))
            net = l1_pruned(dense, example, chosen.knob, self.step())
            seconds = train_plain(net, data, s.epochs_finetune, c.finetune_lr, c.batch_size,
                                  c.weight_decay, seed, self.teacher(dense))
            networks.append((replace(entry, method="l1-kd", stages=[
                entry.stages[0], {"name": "finetune, distilled", "epochs": s.epochs_finetune,
                                  "seconds": round(seconds, 2)}]), net))
            print(f"{model_name} seed {seed} {fraction:.0%} all methods trained", flush=True)

        # every network of this seed measured side by side with the dense one
        alive = [(e, n) for e, n in networks if n is not None]
        final = base / "final"
        final.mkdir(exist_ok=True)
        for entry, net in alive:  # kept, so that they can be measured again
            torch.save(net, final / f"{entry.method}-{entry.fraction:g}.pt")
        load = os.getloadavg()[0]
        measured = _measure_together(self.device, [dense, *[n for _, n in alive]],
                                     self.input_shape())
        self.dense[-1]["load_at_measurement"] = [load, os.getloadavg()[0]]
        for (entry, net), m in zip(alive, measured[1:], strict=True):
            entry.latency_ms, entry.dense_ms = m.median_ms, measured[0].median_ms
            entry.accuracy = evaluate_on(net, data)
            entry.params, entry.macs = params_and_macs(net.cpu().eval(), example)
        self.dense[-1]["latency_ms"] = measured[0].median_ms
        self.entries += [e for e, _ in networks]

    def teacher(self, dense: torch.nn.Module) -> Distillation:
        return Distillation(copy.deepcopy(dense), self.s.distill, self.s.distill_temperature)

    def hwdnal_ablations(self, model_name: str, seed: int, fraction: float,
                         dense: torch.nn.Module, run: Path, found: Entry,
                         ) -> list[tuple[Entry, torch.nn.Module]]:
        """hwdnal's architecture with other recipes: finetuned with distillation (hwdnal's
        --distill), and re-initialised and trained from scratch with exactly the uniform
        baseline's recipe (the row that says whether the search found a better
        architecture at all)."""
        from methods import sliced_like, train_plain

        s, c = self.s, SearchConfig()
        data = self.data(seed)
        pruned_init = torch.load(run / "checkpoints" / "pruned_init.pt", weights_only=False)
        net = pruned_init["model"]
        seconds = train_plain(net, data, s.epochs_finetune, c.finetune_lr, c.batch_size,
                              c.weight_decay, seed, self.teacher(dense))
        taught = replace(found, method="hwdnal-kd", stages=[
            *[st for st in found.stages if st["name"] != "finetune"],
            {"name": "finetune, distilled", "epochs": s.epochs_finetune,
             "seconds": round(seconds, 2)}])
        total_epochs = s.epochs_weights + s.epochs_arch + s.epochs_finetune
        torch.manual_seed(seed)
        scratch = sliced_like(create_model(model_name, 10, 1), torch.randn(self.input_shape()),
                              pruned_init["keep"])
        seconds = train_plain(scratch, data, total_epochs, c.lr, c.batch_size, c.weight_decay,
                              seed)
        retrained = replace(found, method="hwdnal-scratch", stages=[
            {"name": "train from scratch", "epochs": total_epochs,
             "seconds": round(seconds, 2)}])
        return [(taught, net), (retrained, scratch)]

    def _family(self, model_name: str, name: str):
        from methods import Candidate

        return [Candidate(**c) for c in self.families[model_name][name]]

    def dnal_for_budget(self, model_name: str, seed: int, fraction: float,
                        dense: torch.nn.Module, dense_path: Path, base: Path):
        """DNAL runs (λa alone) until one measures within the tolerance of the budget.

        Runs are shared between the budgets of a seed; the λa chosen for a budget in one
        seed is the first guess in the next. The cost counted for a budget is every
        architecture run made while tuning for it.
        """
        tries = self.tries.setdefault((model_name, seed), {})
        made: list[float] = []
        while len(made) < self.s.lambda_tries:
            if tries and min(abs(r - fraction) for r, _, _ in tries.values()) <= \
                    self.s.lambda_tolerance:
                break
            lam = self._next_lambda(tries, fraction, self.lambdas.get((model_name, fraction)))
            if lam in tries:
                break
            run = base / f"dnal-{lam:.4g}"
            result = DnalSearch(self.config(model_name, seed, weights=str(dense_path),
                                            epochs_weights=0, epochs_finetune=0,
                                            lambda_a=lam), run).run()
            pruned = torch.load(run / "pruned.pt", weights_only=False).eval()
            d, p = _measure_together(self.device, [dense, pruned], self.input_shape())
            stages = [st for st in result["stages"] if st["name"] in ("architecture", "prune")]
            tries[lam] = (p.median_ms / d.median_ms, run, stages)
            made.append(lam)
            print(f"  dnal λa={lam:.4g}: {p.median_ms / d.median_ms:.1%} of dense", flush=True)
        lam = min(tries, key=lambda k: abs(tries[k][0] - fraction))
        self.lambdas[(model_name, fraction)] = lam
        entry = Entry(model_name, seed, "dnal", fraction, knob=lam, tries=len(made),
                      measurements=len(made),
                      stages=_sum_stages([st for k in made for st in tries[k][2]]))
        net = torch.load(tries[lam][1] / "pruned.pt", weights_only=False)
        return entry, net

    @staticmethod
    def _next_lambda(tries: dict[float, tuple[float, Path, Any]], fraction: float,
                     hint: float | None) -> float:
        """Log-linear interpolation between bracketing tries; ×4 steps outside them."""
        if not tries:
            return hint if hint is not None else 2.0
        slow = [(k, r) for k, (r, _, _) in tries.items() if r > fraction]  # need larger λa
        fast = [(k, r) for k, (r, _, _) in tries.items() if r <= fraction]
        if hint is not None and hint not in tries:
            return hint
        if slow and fast:
            (k0, r0), (k1, r1) = max(slow), min(fast)
            t = (r0 - fraction) / max(r0 - r1, 1e-9)
            return round(math.exp(math.log(k0) + t * (math.log(k1) - math.log(k0))), 4)
        if slow:
            return round(max(slow)[0] * 4, 4)
        return round(min(fast)[0] / 4, 4)


def _sum_stages(stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    totals: dict[str, dict[str, Any]] = {}
    for st in stages:
        t = totals.setdefault(st["name"], {"name": st["name"], "epochs": 0, "seconds": 0.0})
        t["epochs"] += st["epochs"]
        t["seconds"] = round(t["seconds"] + st["seconds"], 2)
    return list(totals.values())


def evaluate_on(net: torch.nn.Module, data) -> float:
    from hwdnal.train import evaluate

    return evaluate(net, data)


def estimate_seconds(settings: Settings) -> float:
    """Rough wall time: images trained (in plain-step equivalents) at the measured speed."""
    from gate_overhead import _step_time

    total = 0.0
    train_images = settings.train_subset or 60000
    for model_name in settings.models:
        torch.manual_seed(0)
        x = torch.randn(128, 1, 28, 28).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (128,))
        net = create_model(model_name, 10, 1).to(memory_format=torch.channels_last)
        _step_time(net, list(net.parameters()), x, y, 1)
        per_image = statistics.median(_step_time(net, list(net.parameters()), x, y, 3)) / 128
        n = len(settings.fractions)
        epochs = (settings.epochs_weights
                  + n * (1.5 * settings.epochs_arch + 0.6 * settings.epochs_finetune)  # hwdnal
                  + n * (1.5 * settings.epochs_arch * 2 + 0.6 * settings.epochs_finetune)  # dnal
                  + 3 * n * 0.6 * (settings.epochs_weights + settings.epochs_arch
                                   + settings.epochs_finetune)  # uniform, -kd, hwdnal-scratch
                  + n * 0.6 * 2.5 * settings.epochs_finetune  # l1, l1-kd, hwdnal-kd
                  + n * 0.6 * settings.epochs_finetune)
        measuring = 60 + 2 * len(settings.knobs) + n * 4 * 15 + 30
        total += len(settings.seeds) * (epochs * train_images * per_image * 1.3 + measuring)
        total += 60 + settings.validate * 2  # profile
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=list(MODES), default="quick")
    parser.add_argument("--target", default="cpu", help="target name or .toml file")
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--models", nargs="+")
    parser.add_argument("--fractions", type=float, nargs="+")
    parser.add_argument("--runs", type=Path, help="work folder (default: a fresh one in runs/)")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--img-dir", type=Path, default=Path("docs/img"))
    parser.add_argument("--report-only", type=Path, help="rewrite the report from results.json")
    args = parser.parse_args(argv)
    args.argv = argv

    from compare_report import write_report

    if args.report_only:
        write_report(json.loads(args.report_only.read_text()), args.out, args.img_dir)
        return 0
    settings = MODES[args.mode]
    overrides = {k: tuple(v) for k, v in (("seeds", args.seeds), ("models", args.models),
                                          ("fractions", args.fractions)) if v}
    settings = replace(settings, **overrides)
    target = load_target(args.target)
    usable, why = target.usable()
    if not usable:
        print(f"target {target.name} cannot be measured here: {why}", file=sys.stderr)
        return 2
    runs = args.runs or Path("runs") / f"compare-methods-{args.mode}-{datetime.now():%Y%m%d-%H%M%S}"
    if runs.exists() and any(runs.iterdir()):
        print(f"{runs} is not empty: give a fresh --runs", file=sys.stderr)
        return 2
    runs.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    load_before = os.getloadavg()
    estimate = estimate_seconds(settings)
    print(f"mode {args.mode}: estimated {estimate / 60:.0f} min on this machine "
          f"({len(settings.models)} model(s), {len(settings.seeds)} seed(s), "
          f"{len(settings.fractions)} budget(s) x 4 methods)", flush=True)
    started = time.perf_counter()
    bench = Bench(settings, target, args.target, runs)
    for model_name in settings.models:
        lut = bench.profile(model_name)
        print(f"{model_name}: LUT profiled", flush=True)
        bench.gate_overhead(model_name)
        bench.measure_families(model_name)
        for seed in settings.seeds:
            bench.run_seed(model_name, seed, lut)
            _save(bench, settings, args, target, runs, started, estimate, load_before)
    results = _save(bench, settings, args, target, runs, started, estimate, load_before)
    write_report(results, args.out, args.img_dir)
    print(f"wrote {args.out} in {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    return 0


def _save(bench: Bench, settings: Settings, args: argparse.Namespace, target: Target,
          runs: Path, started: float, estimate: float,
          load_before: tuple[float, float, float]) -> dict[str, Any]:
    """Everything the report needs, in runs/…/results.json (``--report-only`` reads it)."""
    import platform
    import subprocess

    import onnxruntime
    from hwdnal_agent.device_info import cpu_model

    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "hwdnal", "bench"],
                           capture_output=True, text=True).stdout.strip()
    others = []
    for t in all_targets():
        ok, why = t.usable()
        if t.name != target.name:
            others.append({"target": t.name, "usable": ok, "why": why})
    results = {
        "command": "python bench/compare_methods.py " + " ".join(
            shlex.quote(a) for a in (sys.argv[1:] if args.argv is None else args.argv)),
        "mode": args.mode,
        "date": datetime.now().isoformat(timespec="seconds"),
        "revision": revision + (" (with uncommitted changes)" if dirty else ""),
        "machine": f"{cpu_model()} ({platform.machine()}, {os.cpu_count()} cores), "
                   f"torch {torch.__version__} ({torch.get_num_threads()} threads for "
                   f"training), onnxruntime {onnxruntime.__version__}",
        "target": {"name": target.name, "threads": target.threads, "batch": target.batch,
                   "description": target.description},
        "settings": asdict(settings),
        "load_before": list(load_before),
        "load_after": list(os.getloadavg()),
        "estimate_s": estimate,
        "seconds": time.perf_counter() - started,
        "runs": str(runs),
        "dense": bench.dense,
        "entries": [asdict(e) for e in bench.entries],
        "profiles": bench.profiles,
        "other_targets": others,
        "overhead": bench.overhead,
        "families": bench.families,
    }
    (runs / "results.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    sys.exit(main())
