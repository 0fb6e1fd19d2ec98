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

A mode may let the rows that inherit weights (hwdnal, DNAL, L1) search early
(``Settings.search_after``): they start from the same seed's dense network trained only that
many epochs and finetune for the rest of the total, so that they spend the epochs uniform
width spends; the fully trained dense network stays the reference (the medium mode: 6 + 1 +
18 against 25; why: docs/arch-stage-findings.md, session 3).

and the ablations that separate the search from the recipe:

    hwdnal-kd       hwdnal's pruned network finetuned with distillation from the dense one
                    (what ``hwdnal search --distill`` does)
    hwdnal-scratch  hwdnal's found architecture, freshly initialised and trained from
                    scratch with exactly the uniform baseline's recipe: does the search find
                    a better architecture at all?
    uniform-kd      uniform width from scratch, with the same distillation
    l1-kd           the L1-pruned network finetuned with the same distillation

The work is cut into units (model × method × budget × seed). Each unit's trained network
is measured interleaved with its dense network the moment it is trained, and its record is
written to the ledger (``bench/results/<mode>/``, kept in the repository): rerunning the
same command resumes after the last finished unit, in another sitting, on another machine.
Once every unit of a seed is in, all its networks are measured again in ONE interleaved call
with the dense network (their architectures rebuilt from the ledger: latency does not depend
on the weights' values), and the report uses those figures. Training runs on an NVIDIA GPU
when there is one (``--train-device``); latency is always measured on the target. Writes
docs/benchmarks.md and docs/img/pareto.png from whatever the ledger holds; run it on an
otherwise idle machine.

    python bench/compare_methods.py --mode quick          # < 30 min on 2 cores
    python bench/compare_methods.py --mode medium --hours 1.5  # a sitting; rerun to go on
    python bench/compare_methods.py --mode full --hours 2 # on a machine with a GPU
    python bench/compare_methods.py --mode full --status  # what is done, what is left
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shlex
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from ledger import Ledger, machine_line, mask_from_text, mask_to_text

from hwdnal.atomic import save_torch
from hwdnal.budget.reach import measure_together
from hwdnal.complexity import params_and_macs
from hwdnal.data import load_data
from hwdnal.devices import open_measurer, usable_here
from hwdnal.distillation import Distillation
from hwdnal.errors import UserError
from hwdnal.interrupt import Interrupted
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
    #: the rows this mode trains (``--methods`` narrows a sitting further)
    methods: tuple[str, ...] = METHODS
    #: the rows that start from trained weights (hwdnal, DNAL, L1) start from a dense
    #: network trained only this many epochs (the same seed) and finetune for the rest of
    #: the total, so that they spend the epochs uniform width spends; None: from the
    #: reference dense network (``epochs_weights``), finetuned ``epochs_finetune`` epochs
    search_after: int | None = None
    #: the finetune lr of those rows (None: hwdnal's default)
    finetune_lr: float | None = None

    def total_epochs(self) -> int:
        return self.epochs_weights + self.epochs_arch + self.epochs_finetune

    def finetune_epochs(self) -> int:
        """What the rows that start from trained weights finetune: the rest of the total
        when they search early (``search_after``)."""
        if self.search_after is None:
            return self.epochs_finetune
        return self.total_epochs() - self.search_after - self.epochs_arch


#: the medium mode's rows: the issue's comparison without the distillation ablations
MEDIUM_METHODS = ("hwdnal", "uniform", "l1", "dnal", "hwdnal-scratch")

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
    # what this 2-core CPU can finish in about 3 hours: 20 000 images, every test image,
    # 20 dense epochs, three seeds; the full mode is for a machine with a GPU
    "medium": Settings(models=("resnet20",), seeds=(0, 1, 2), fractions=(0.5, 0.3),
                       train_subset=20000, test_subset=None, epochs_weights=20, epochs_arch=1,
                       epochs_finetune=4, lambda_tries=3, lambda_tolerance=0.04, calibrate=12,
                       validate=12, grid_points=None, overhead_rounds=8,
                       methods=MEDIUM_METHODS, search_after=6, finetune_lr=0.1),
    # the test's case: everything once, tiny; numbers meaningless
    "smoke": Settings(models=("resnet20",), seeds=(0,), fractions=(0.5,), train_subset=256,
                      test_subset=256, epochs_weights=1, epochs_arch=1, epochs_finetune=1,
                      lambda_tries=1, lambda_tolerance=0.5, calibrate=3, validate=3,
                      grid_points=2, overhead_rounds=1, knobs=(0.3, 0.5, 0.7),
                      search_after=1),
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
    #: the architecture, to rebuild it for the seed's final measurement: a keep mask
    #: (mask_to_text) for hwdnal's and DNAL's rows and uniform width; L1 is rebuilt from knob
    keep: str | None = None
    train_device: str = "cpu"
    #: where latency_ms comes from: "unit" (measured with the dense one right after
    #: training) or "seed" (the seed's final interleaved measurement of all its networks)
    latency_source: str = "unit"
    load_at_measurement: float | None = None
    #: "<method>-<budget>" of this seed whose trained network this one is, bit for bit
    #: (L1 at two budgets whose ratios round to the same channels): trained once, its
    #: accuracy and cost copied, its latency measured like any other row's
    same_network_as: str | None = None


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Two networks with the same tensors under the same names."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)


class Bench:
    def __init__(self, settings: Settings, target: Target, target_arg: str, runs: Path,
                 ledger: Ledger, train_device: str = "cpu", methods: tuple[str, ...] = METHODS,
                 deadline: float = math.inf) -> None:
        self.s = settings
        self.target = target
        self.device = open_measurer(target)  # every measurement of the bench goes here
        self.target_arg = target_arg
        self.runs = runs
        self.ledger = ledger
        self.train_device = train_device
        self.methods = methods
        self.deadline = deadline  # time.monotonic() after which no unit is started
        self.units_done = 0
        self.lambdas: dict[tuple[str, float], float] = {}
        self._data: dict[int, Any] = {}

    # -- shared pieces ------------------------------------------------------------------
    def config(self, model: str, seed: int, **changes: Any) -> SearchConfig:
        s = self.s
        settings: dict[str, Any] = dict(
            model=model, data="fashion-mnist", train_subset=s.train_subset,
            test_subset=s.test_subset, epochs_weights=s.epochs_weights,
            epochs_arch=s.epochs_arch, epochs_finetune=s.epochs_finetune, seed=seed,
            target=self.target_arg, compile=False, device=self.train_device)
        return SearchConfig(**{**settings, **changes})

    def data(self, seed: int):
        if seed not in self._data:
            data = load_data("fashion-mnist", None, None, self.s.train_subset,
                             self.s.test_subset, seed)
            self._data = {seed: data.to_device(self.train_device)
                          if self.train_device != "cpu" else data}
        return self._data[seed]

    def input_shape(self) -> tuple[int, ...]:
        return (self.target.batch, 1, 28, 28)

    def step(self) -> int:
        return self.target.profile.preferred_channel_step

    def fresh(self, model_name: str, seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return create_model(model_name, 10, 1)

    def out_of_time(self) -> bool:
        return time.monotonic() > self.deadline

    # -- per model, once ----------------------------------------------------------------
    def prepare_model(self, model_name: str) -> str:
        """The LUT, the gate overhead and the family latencies: measured once per model
        and kept in the ledger."""
        lut = self.ledger.root / model_name / f"lut-{self.target.name}-28x28.json"
        if self.ledger.read(f"{model_name}/profile.json") is None:
            self.ledger.write(f"{model_name}/profile.json", self.profile(model_name, lut))
            print(f"{model_name}: LUT profiled", flush=True)
        if self.ledger.read(f"{model_name}/overhead.json") is None:
            self.ledger.write(f"{model_name}/overhead.json", self.gate_overhead(model_name))
        if self.ledger.read(f"{model_name}/families.json") is None:
            self.ledger.write(f"{model_name}/families.json", self.measure_families(model_name))
        return str(lut)

    def profile(self, model_name: str, out: Path) -> dict[str, Any]:
        """Profile a fresh LUT (timed, from an empty cache) with held-out validation."""
        from hwdnal.latency.pipeline import profile_model

        started = time.perf_counter()
        result = profile_model(
            self.device, create_model(model_name, 10, 1), model_name, 28, 1, out=out,
            calibrate=self.s.calibrate, validate=self.s.validate,
            grid_points=self.s.grid_points, cache_dir=self.runs / "luts" / "cache",
        )
        validation = result.lut.validation or {}
        return {
            "model": model_name, "target": self.target.name,
            "seconds": time.perf_counter() - started, "grid_points": result.grid_points,
            "networks": result.networks_measured_now,
            "calibrate": self.s.calibrate, "validate": self.s.validate,
            **{k: validation.get(k) for k in ("samples", "median_rel_error", "p95_rel_error",
                                               "max_rel_error")},
        }

    def measure_families(self, model_name: str) -> dict[str, list[dict[str, float]]]:
        """Latency of every uniform width and every L1 ratio (weights do not matter)."""
        from methods import l1_pruned, measure_family, uniform_width

        dense = self.fresh(model_name, 0).eval()
        example = torch.randn(self.input_shape())
        uniform = measure_family(self.device, dense, self.input_shape(),
                                 lambda f: uniform_width(dense, example, f, self.step()),
                                 self.s.knobs)
        l1 = measure_family(self.device, dense, self.input_shape(),
                            lambda r: l1_pruned(dense, example, r, self.step()),
                            [round(1 - k, 2) for k in self.s.knobs])
        return {"uniform": [asdict(c) for c in uniform], "l1": [asdict(c) for c in l1]}

    def gate_overhead(self, model_name: str) -> list[dict[str, Any]]:
        """Per-step time of plain, gates-off and architecture-stage training, interleaved."""
        from gate_overhead import interleaved_steps, overhead_cases

        torch.manual_seed(0)
        x = torch.randn(128, 1, 28, 28).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (128,))
        plain = create_model(model_name, 10, 1).to(memory_format=torch.channels_last)
        samples = interleaved_steps(overhead_cases(plain, x), x, y, self.s.overhead_rounds)
        base = statistics.median(samples["plain"])
        return [{"model": model_name, "case": name, "step_ms": 1000 * statistics.median(values),
                 "relative": statistics.median(values) / base, "steps": len(values)}
                for name, values in samples.items()]

    # -- per model and seed --------------------------------------------------------------
    def dense_unit(self, model_name: str, seed: int) -> torch.nn.Module | None:
        """The dense network of a seed (hwdnal's weight stage), trained once and kept in
        the ledger; None when there is no time left to train it."""
        if self.ledger.dense(model_name, seed) is None:
            if self.out_of_time():
                return None
            run = self.runs / model_name / f"seed{seed}" / "dense"
            result = DnalSearch(self.config(model_name, seed, epochs_arch=0,
                                            epochs_finetune=0), run).run()
            weights = next(st for st in result["stages"] if st["name"] == "weights")
            network = torch.load(run / "dense.pt", weights_only=False)
            self.ledger.save_dense(model_name, seed, {
                "model": model_name, "seed": seed, "accuracy": result["dense"]["accuracy"],
                "params": result["dense"]["params"], "macs": result["dense"]["macs"],
                "stage": {**weights, "device": self.train_device}}, network)
            self.units_done += 1
            print(f"{model_name} seed {seed}: dense network trained "
                  f"({result['dense']['accuracy']:.2%})", flush=True)
        dense = self.fresh(model_name, seed)
        dense.load_state_dict(torch.load(self.ledger.dense_weights(model_name, seed),
                                         weights_only=True))
        return dense.eval()

    def run_seed(self, model_name: str, seed: int, lut: str) -> bool:
        """Every missing unit of a seed, in order; False when the sitting's time ran out."""
        dense = self.dense_unit(model_name, seed)
        if dense is None:
            return False
        units: dict[str, Callable[..., tuple[Entry, torch.nn.Module | None]]] = {
            "hwdnal": self.hwdnal, "hwdnal-kd": self.hwdnal_kd,
            "hwdnal-scratch": self.hwdnal_scratch, "dnal": self.dnal, "uniform": self.uniform,
            "uniform-kd": self.uniform, "l1": self.l1, "l1-kd": self.l1}
        for fraction in self.s.fractions:
            for method in self.methods:
                if self.ledger.unit(model_name, seed, method, fraction) is not None:
                    continue
                if self.out_of_time():
                    return False
                entry, net = units[method](model_name, seed, fraction, dense, lut, method)
                entry.train_device = self.train_device
                if net is not None:
                    self.finish(entry, net, dense, seed)
                self.ledger.save_unit(entry)
                self.units_done += 1
                shown = (f"{entry.accuracy:.2%} at {entry.latency_ms / entry.dense_ms:.1%} of "
                         "dense" if net is not None else f"failed: {entry.failed}")
                print(f"{model_name} seed {seed} {fraction:.0%} {method}: {shown}", flush=True)
        self.measure_seed(model_name, seed, dense)
        return True

    def finish(self, entry: Entry, net: torch.nn.Module, dense: torch.nn.Module,
               seed: int) -> None:
        """Accuracy, size and the latency measured interleaved with the dense network (a
        unit whose network another trained keeps that one's accuracy: ``net`` is untrained)."""
        if entry.same_network_as is None:
            entry.accuracy = evaluate_on(net, self.data(seed))
        net = net.cpu().eval()
        example = torch.randn(self.input_shape())
        entry.params, entry.macs = params_and_macs(net, example)
        entry.load_at_measurement = os.getloadavg()[0]
        d, p = measure_together(self.device, [dense, net], self.input_shape())
        entry.latency_ms, entry.dense_ms = p.median_ms, d.median_ms

    def measure_seed(self, model_name: str, seed: int, dense: torch.nn.Module) -> None:
        """All networks of a finished seed in one interleaved call with the dense one."""
        relative = f"{model_name}/seed{seed}/measured.json"
        records = [self.ledger.unit(model_name, seed, m, f) for f in self.s.fractions
                   for m in self.s.methods]
        if self.ledger.read(relative) is not None or any(r is None for r in records):
            return
        alive = [r for r in records if r is not None and not r["failed"]]
        networks = [self.rebuild(r) for r in alive]
        load = os.getloadavg()[0]
        measured = measure_together(self.device, [dense, *networks], self.input_shape())
        self.ledger.write(relative, {
            "dense_ms": measured[0].median_ms, "load": [load, os.getloadavg()[0]],
            "latency_ms": {f"{r['method']}-{r['fraction']:g}": m.median_ms
                           for r, m in zip(alive, measured[1:], strict=True)}})
        print(f"{model_name} seed {seed}: all {len(alive)} networks measured together",
              flush=True)

    def rebuild(self, record: dict[str, Any]) -> torch.nn.Module:
        """A unit's architecture (fresh weights: latency does not depend on their values)."""
        from methods import l1_pruned, sliced_like

        fresh = self.fresh(record["model"], 0)
        example = torch.randn(self.input_shape())
        if record["keep"] is not None:
            return sliced_like(fresh, example, mask_from_text(record["keep"]))
        return l1_pruned(fresh, example, record["knob"], self.step())

    def teacher(self, dense: torch.nn.Module) -> Distillation:
        return Distillation(copy.deepcopy(dense), self.s.distill, self.s.distill_temperature)

    def total_epochs(self) -> int:
        return self.s.total_epochs()

    def finetune_epochs(self) -> int:
        return self.s.finetune_epochs()

    def finetune_lr(self) -> float:
        return self.s.finetune_lr if self.s.finetune_lr is not None else \
            SearchConfig().finetune_lr

    def start_weights(self, model_name: str, seed: int) -> Path:
        """The dense weights hwdnal, DNAL and L1 start from: the reference dense network's,
        or (``search_after``) a shorter training of it, made once per seed and kept in the
        ledger beside it."""
        if self.s.search_after is None:
            return self.ledger.dense_weights(model_name, seed)
        epochs = self.s.search_after
        path = self.ledger.seed_dir(model_name, seed) / f"dense-{epochs}ep.pt"
        if not path.exists():
            run = self.runs / model_name / f"seed{seed}" / f"dense-{epochs}ep"
            result = DnalSearch(self.config(model_name, seed, epochs_weights=epochs,
                                            epochs_arch=0, epochs_finetune=0), run).run()
            network = torch.load(run / "dense.pt", weights_only=False)
            save_torch(path, network.cpu().state_dict())
            self.ledger.write(f"{model_name}/seed{seed}/dense-{epochs}ep.json", {
                "epochs": epochs, "accuracy": result["dense"]["accuracy"],
                "stage": next(st for st in result["stages"] if st["name"] == "weights")})
            print(f"{model_name} seed {seed}: the {epochs}-epoch dense network the searches "
                  f"start from trained ({result['dense']['accuracy']:.2%})", flush=True)
        return path

    def start_network(self, model_name: str, seed: int) -> torch.nn.Module:
        network = self.fresh(model_name, seed)
        network.load_state_dict(torch.load(self.start_weights(model_name, seed),
                                           weights_only=True))
        return network.eval()

    # -- the units ------------------------------------------------------------------------
    def hwdnal_run(self, model_name: str, seed: int, fraction: float, lut: str,
                   name: str, **changes: Any) -> tuple[dict[str, Any], Path]:
        run = self.runs / model_name / f"seed{seed}" / name
        # only the search finetunes with the mode's recipe; its other runs stop before
        changes = {"epochs_finetune": self.finetune_epochs(),
                   "finetune_lr": self.finetune_lr(), **changes}
        result = DnalSearch(self.config(
            model_name, seed, weights=str(self.start_weights(model_name, seed)),
            epochs_weights=0, budget=f"{fraction * 100:g}%", lut=lut, **changes), run).run()
        return result, run

    def hwdnal(self, model_name: str, seed: int, fraction: float, dense: torch.nn.Module,
               lut: str, method: str) -> tuple[Entry, torch.nn.Module | None]:
        """The search with the latency term (``budget=``), from the dense weights."""
        entry = Entry(model_name, seed, "hwdnal", fraction)
        try:
            result, run = self.hwdnal_run(model_name, seed, fraction, lut, f"hwdnal-{fraction:g}")
        except UserError as error:
            entry.failed = str(error).splitlines()[0]
            return entry, None
        entry.stages = [st for st in result["stages"] if st["name"] != "weights"]
        entry.measurements = len(result["fit_rounds"])
        entry.tries = 1
        entry.keep = mask_to_text(self.pruned_init(run)["keep"])
        return entry, torch.load(run / "pruned.pt", weights_only=False)

    def pruned_init(self, run: Path) -> dict[str, Any]:
        return torch.load(run / "checkpoints" / "pruned_init.pt", weights_only=False,
                          map_location="cpu")

    def hwdnal_found(self, model_name: str, seed: int, fraction: float,
                     lut: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """hwdnal's pruned network before finetuning, and the stages that made it: from
        this sitting's hwdnal run, or (a later sitting) from a search that stops there."""
        base = self.runs / model_name / f"seed{seed}"
        run = base / f"hwdnal-{fraction:g}"
        if not (run / "checkpoints" / "pruned_init.pt").exists():
            _, run = self.hwdnal_run(model_name, seed, fraction, lut,
                                     f"hwdnal-{fraction:g}-found", epochs_finetune=0)
        result = json.loads((run / "result.json").read_text()) \
            if (run / "result.json").exists() else {"stages": []}
        stages = [st for st in result["stages"] if st["name"] in ("architecture", "prune")]
        return self.pruned_init(run), stages

    def hwdnal_kd(self, model_name: str, seed: int, fraction: float, dense: torch.nn.Module,
                  lut: str, method: str) -> tuple[Entry, torch.nn.Module | None]:
        """hwdnal's pruned network finetuned with distillation (``hwdnal search --distill``)."""
        from methods import train_plain

        entry = Entry(model_name, seed, "hwdnal-kd", fraction, tries=1)
        try:
            found, stages = self.hwdnal_found(model_name, seed, fraction, lut)
        except UserError as error:
            entry.failed = str(error).splitlines()[0]
            return entry, None
        c = SearchConfig()
        net = found["model"]
        seconds = train_plain(net, self.data(seed), self.finetune_epochs(), self.finetune_lr(),
                              c.batch_size, c.weight_decay, seed, self.teacher(dense),
                              self.train_device)
        entry.keep = mask_to_text(found["keep"])
        entry.stages = [*stages, {"name": "finetune, distilled", "epochs": self.finetune_epochs(),
                                  "seconds": round(seconds, 2)}]
        return entry, net

    def hwdnal_scratch(self, model_name: str, seed: int, fraction: float,
                       dense: torch.nn.Module, lut: str,
                       method: str) -> tuple[Entry, torch.nn.Module | None]:
        """hwdnal's found architecture, freshly initialised and trained with exactly the
        uniform baseline's recipe: does the search find a better architecture at all?"""
        from methods import sliced_like, train_plain

        entry = Entry(model_name, seed, "hwdnal-scratch", fraction)
        found = self.ledger.unit(model_name, seed, "hwdnal", fraction)
        try:
            keep = mask_from_text(found["keep"]) if found and found["keep"] else \
                self.hwdnal_found(model_name, seed, fraction, lut)[0]["keep"]
        except UserError as error:
            entry.failed = str(error).splitlines()[0]
            return entry, None
        net = sliced_like(self.fresh(model_name, seed), torch.randn(self.input_shape()), keep)
        c = SearchConfig()
        seconds = train_plain(net, self.data(seed), self.total_epochs(), c.lr, c.batch_size,
                              c.weight_decay, seed, device=self.train_device)
        entry.keep = mask_to_text(keep)
        entry.stages = [{"name": "train from scratch", "epochs": self.total_epochs(),
                         "seconds": round(seconds, 2)}]
        return entry, net

    def uniform(self, model_name: str, seed: int, fraction: float, dense: torch.nn.Module,
                lut: str, method: str) -> tuple[Entry, torch.nn.Module | None]:
        """Uniform width from scratch for hwdnal's total epochs (with distillation for
        ``uniform-kd``); the width chosen by measuring."""
        from methods import pick_for_budget, sliced_like, train_plain, uniform_mask

        chosen = pick_for_budget(self._family(model_name, "uniform"), fraction)
        example = torch.randn(self.input_shape())
        fresh = self.fresh(model_name, seed)
        keep = uniform_mask(fresh, example, chosen.knob, self.step())
        net = sliced_like(fresh, example, keep)
        c = SearchConfig()
        taught = method == "uniform-kd"
        seconds = train_plain(net, self.data(seed), self.total_epochs(), c.lr, c.batch_size,
                              c.weight_decay, seed, self.teacher(dense) if taught else None,
                              self.train_device)
        name = "train from scratch, distilled" if taught else "train from scratch"
        return Entry(model_name, seed, method, fraction, knob=chosen.knob,
                     measurements=len(self.s.knobs), keep=mask_to_text(keep),
                     stages=[{"name": name, "epochs": self.total_epochs(),
                              "seconds": round(seconds, 2)}]), net

    def l1(self, model_name: str, seed: int, fraction: float, dense: torch.nn.Module,
           lut: str, method: str) -> tuple[Entry, torch.nn.Module | None]:
        """torch-pruning's L1 magnitude pruner from the dense weights, finetuned like
        hwdnal (with distillation for ``l1-kd``); the ratio chosen by measuring."""
        from methods import l1_pruned, pick_for_budget, train_plain

        chosen = pick_for_budget(self._family(model_name, "l1"), fraction)
        started = time.perf_counter()
        start = self.start_network(model_name, seed)
        net = l1_pruned(start, torch.randn(self.input_shape()), chosen.knob, self.step())
        prune_seconds = time.perf_counter() - started
        twin = self.trained_twin(model_name, seed, fraction, method, start, net)
        if twin is not None:
            # the very network another budget trained (both ratios round to the same
            # channels): training it again from the same start and data order repeats it
            return Entry(model_name, seed, method, fraction, knob=chosen.knob,
                         accuracy=twin["accuracy"], measurements=len(self.s.knobs),
                         stages=twin["stages"],
                         same_network_as=f"{method}-{twin['fraction']:g}"), net
        c = SearchConfig()
        taught = method == "l1-kd"
        seconds = train_plain(net, self.data(seed), self.finetune_epochs(), self.finetune_lr(),
                              c.batch_size, c.weight_decay, seed,
                              self.teacher(dense) if taught else None, self.train_device)
        return Entry(model_name, seed, method, fraction, knob=chosen.knob,
                     measurements=len(self.s.knobs),
                     stages=[{"name": "prune (L1)", "epochs": 0,
                              "seconds": round(prune_seconds, 2)},
                             {"name": "finetune, distilled" if taught else "finetune",
                              "epochs": self.finetune_epochs(),
                              "seconds": round(seconds, 2)}]), net

    def trained_twin(self, model_name: str, seed: int, fraction: float, method: str,
                     start: torch.nn.Module, net: torch.nn.Module) -> dict[str, Any] | None:
        """The unit of ``method`` at another budget of this seed that pruned ``start`` to
        exactly ``net`` (same channels, same weights) and trained it, if there is one."""
        from methods import l1_pruned

        for other in self.s.fractions:
            record = self.ledger.unit(model_name, seed, method, other)
            if other == fraction or record is None or record["failed"] is not None:
                continue
            if record.get("same_network_as") is not None:
                continue  # itself a copy: its source is checked on its own
            twin = l1_pruned(start, torch.randn(self.input_shape()), record["knob"], self.step())
            if same_weights(twin, net):
                return record
        return None

    def _family(self, model_name: str, name: str):
        from methods import Candidate

        return [Candidate(**c) for c in self.ledger.read(f"{model_name}/families.json")[name]]

    def dnal(self, model_name: str, seed: int, fraction: float, dense: torch.nn.Module,
             lut: str, method: str) -> tuple[Entry, torch.nn.Module | None]:
        """DNAL runs (λa alone) until one measures within the tolerance of the budget, then
        the closest is finetuned like hwdnal.

        Runs are shared between the budgets of a seed (the ledger keeps every try's measured
        ratio); the λa chosen for a budget in one seed is the first guess in the next. The
        cost counted for a budget is every architecture run made while tuning for it.
        """
        from methods import train_plain

        tries_file = f"{model_name}/seed{seed}/dnal-tries.json"
        tries: dict[float, dict[str, Any]] = {
            float(k): v for k, v in (self.ledger.read(tries_file) or {}).items()}
        made: list[float] = []
        while len(made) < self.s.lambda_tries:
            if tries and min(abs(t["ratio"] - fraction) for t in tries.values()) <= \
                    self.s.lambda_tolerance:
                break
            lam = self._next_lambda({k: t["ratio"] for k, t in tries.items()}, fraction,
                                    self.lambdas.get((model_name, fraction)))
            if lam in tries:
                break
            run, result = self.dnal_run(model_name, seed, lam)
            pruned = torch.load(run / "pruned.pt", weights_only=False).eval()
            d, p = measure_together(self.device, [dense, pruned], self.input_shape())
            tries[lam] = {"ratio": p.median_ms / d.median_ms, "stages": [
                st for st in result["stages"] if st["name"] in ("architecture", "prune")]}
            self.ledger.write(tries_file, {str(k): v for k, v in tries.items()})
            made.append(lam)
            print(f"  dnal λa={lam:.4g}: {p.median_ms / d.median_ms:.1%} of dense", flush=True)
        lam = min(tries, key=lambda k: abs(tries[k]["ratio"] - fraction))
        self.lambdas[(model_name, fraction)] = lam
        run, _ = self.dnal_run(model_name, seed, lam)  # this sitting's, or run again
        net = torch.load(run / "pruned.pt", weights_only=False)
        c = SearchConfig()
        seconds = train_plain(net, self.data(seed), self.finetune_epochs(), self.finetune_lr(),
                              c.batch_size, c.weight_decay, seed, device=self.train_device)
        return Entry(model_name, seed, "dnal", fraction, knob=lam, tries=len(made),
                     measurements=len(made),
                     keep=mask_to_text(self.pruned_init(run)["keep"]),
                     stages=[*_sum_stages([st for k in made for st in tries[k]["stages"]]),
                             {"name": "finetune", "epochs": self.finetune_epochs(),
                              "seconds": round(seconds, 2)}]), net

    def dnal_run(self, model_name: str, seed: int, lam: float) -> tuple[Path, dict[str, Any]]:
        """The architecture stage with λa alone (no budget): deterministic, so a run lost
        with a sitting's scratch folder is made again identically."""
        run = self.runs / model_name / f"seed{seed}" / f"dnal-{lam:.4g}"
        result = DnalSearch(self.config(
            model_name, seed, weights=str(self.start_weights(model_name, seed)),
            epochs_weights=0, epochs_finetune=0, lambda_a=lam), run).run()
        return run, result

    @staticmethod
    def _next_lambda(tries: dict[float, float], fraction: float, hint: float | None) -> float:
        """Log-linear interpolation between bracketing tries; ×4 steps outside them."""
        if not tries:
            return hint if hint is not None else 2.0
        slow = [(k, r) for k, r in tries.items() if r > fraction]  # need larger λa
        fast = [(k, r) for k, r in tries.items() if r <= fraction]
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


def l1_twins(ledger: Ledger, settings: Settings, model_name: str, step: int) -> int:
    """How many of a seed's L1 budgets pick a ratio that rounds to the channels of an
    earlier budget's pick (:meth:`Bench.trained_twin` reuses those), by the ledger's L1
    family; 0 before the family is measured."""
    from methods import Candidate, l1_pruned, pick_for_budget

    family = (ledger.read(f"{model_name}/families.json") or {}).get("l1")
    if not family or "l1" not in settings.methods:
        return 0
    candidates = [Candidate(**c) for c in family]
    shapes: list[tuple] = []
    for fraction in settings.fractions:
        net = l1_pruned(create_model(model_name, 10, 1).eval(), torch.randn(1, 1, 28, 28),
                        pick_for_budget(candidates, fraction).knob, step)
        shapes.append(tuple(tuple(v.shape) for v in net.state_dict().values()))
    return len(shapes) - len(set(shapes))


def estimate_seconds(settings: Settings, l1_repeats: dict[str, int] | None = None) -> float:
    """Rough wall time on this machine's CPU: images trained (in plain-step equivalents)
    at the measured speed, plus the measuring; ``l1_repeats[model]`` L1 units a seed
    reuses rather than trains (:func:`l1_twins`)."""
    from gate_overhead import step_time

    total = 0.0
    train_images = settings.train_subset or 60000
    for model_name in settings.models:
        torch.manual_seed(0)
        x = torch.randn(128, 1, 28, 28).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (128,))
        net = create_model(model_name, 10, 1).to(memory_format=torch.channels_last)
        step_time(net, list(net.parameters()), x, y, 2)
        # the median of 9 steps: 3 left the estimate anywhere between 1.9 and 3.1 h
        per_image = statistics.median(step_time(net, list(net.parameters()), x, y, 9)) / 128
        n = len(settings.fractions)
        arch, tune = settings.epochs_arch, settings.finetune_epochs()
        total_epochs = settings.total_epochs()
        # a second, shorter dense training when the searches start early
        epochs = float(settings.epochs_weights + (settings.search_after or 0))
        for fraction in settings.fractions:
            # plain-epoch equivalents of one budget's units, measured 2026-12-01 (AMD EPYC,
            # 2 threads): an architecture-stage epoch (gates only, no weight gradients) takes
            # 0.75 of a weight epoch (the demo: 21 s against 29 s); a network pruned to a
            # share f of the dense latency trains at about 0.3 + 0.3 f of the dense step
            # (uniform width 0.7 / 0.5 / 0.35: 0.64 / 0.45 / 0.42); a teacher's forward adds
            # about 1.5
            small = 0.3 + 0.3 * fraction
            per_unit = {"hwdnal": 0.75 * arch + small * tune,
                        "dnal": 0.75 * arch * 2 + small * tune,
                        "uniform": small * total_epochs, "uniform-kd": small * 2.5 * total_epochs,
                        "hwdnal-scratch": small * total_epochs, "l1": small * tune,
                        "l1-kd": small * 2.5 * tune, "hwdnal-kd": small * 2.5 * tune}
            epochs += sum(per_unit[m] for m in settings.methods)
        smallest = 0.3 + 0.3 * min(settings.fractions)  # the later budget's, reused
        epochs -= (l1_repeats or {}).get(model_name, 0) * smallest * tune
        measuring = 60 + 2 * len(settings.knobs) + n * 8 * 15 + 30
        # the step on random images measures about 1.1x a real epoch's per step (the demo's
        # weight epoch: 185 ms per step against 210 here): no extra margin on top of it
        total += len(settings.seeds) * (epochs * train_images * per_image + measuring)
        total += 60 + settings.validate * 2  # profile
    return total


def all_units(settings: Settings) -> list[tuple[str, int, str, float]]:
    """Every unit of a mode, in the order they run (the dense networks counted apart)."""
    return [(m, seed, method, f) for m in settings.models for seed in settings.seeds
            for f in settings.fractions for method in settings.methods]


def collect(ledger: Ledger, settings: Settings, mode: str, target: Target) -> dict[str, Any]:
    """Everything the report needs, from the ledger alone (``--report-only`` reads it)."""
    entries = []
    for record in ledger.units():
        measured = ledger.read(f"{record['model']}/seed{record['seed']}/measured.json")
        key = f"{record['method']}-{record['fraction']:g}"
        if measured and key in measured["latency_ms"]:
            record.update(latency_ms=measured["latency_ms"][key], dense_ms=measured["dense_ms"],
                          latency_source="seed")
        entries.append(record)
    dense = ledger.all_dense()
    for d in dense:
        if "latency_ms" not in d:  # the seed is not finished: its units' dense figures
            paired = [e["dense_ms"] for e in entries if e["model"] == d["model"]
                      and e["seed"] == d["seed"] and e["dense_ms"]]
            if paired:
                d["latency_ms"] = statistics.median(paired)
    sittings = ledger.read("sittings.json") or []
    done = {(e["model"], e["seed"], e["method"], e["fraction"]) for e in entries}
    wanted = all_units(settings)
    others = []
    for t in all_targets():
        ok, why = usable_here(t)
        if t.name != target.name:
            others.append({"target": t.name, "usable": ok, "why": why})
    return {
        "command": f"python bench/compare_methods.py --mode {mode}",
        "mode": mode,
        "date": sittings[-1]["finished"] if sittings else datetime.now().isoformat("T", "seconds"),
        "revision": sittings[-1]["revision"] if sittings else "",
        "machine": "; ".join(dict.fromkeys(s["machine"] for s in sittings)),
        "train_devices": sorted({s["train_device"] for s in sittings}),
        "sittings": sittings,
        "target": {"name": target.name, "threads": target.threads, "batch": target.batch,
                   "description": target.description},
        "settings": asdict(settings),
        "load_before": sittings[0]["load_before"] if sittings else [math.nan],
        "load_after": sittings[-1]["load_after"] if sittings else [math.nan],
        # the latest sitting's: a mode whose settings changed is estimated anew
        "estimate_s": sittings[-1]["estimate_s"] if sittings else math.nan,
        "seconds": sum(s["seconds"] for s in sittings),
        "progress": {"units": len(wanted), "done": len(done & set(wanted)),
                     "dense": len(dense), "dense_total": len(settings.models) * len(
                         settings.seeds)},
        "runs": str(ledger.root),
        "dense": dense,
        "entries": entries,
        "profiles": [p for m in settings.models if (p := ledger.read(f"{m}/profile.json"))],
        "other_targets": others,
        "overhead": [o for m in settings.models for o in ledger.read(f"{m}/overhead.json") or []],
        "families": {m: f for m in settings.models if (f := ledger.read(f"{m}/families.json"))},
    }


def print_status(ledger: Ledger, settings: Settings) -> None:
    units = {(u["model"], u["seed"], u["method"], u["fraction"]) for u in ledger.units()}
    for model in settings.models:
        for seed in settings.seeds:
            done = [u for u in all_units(settings) if u[:2] == (model, seed) and u in units]
            dense = "dense trained" if ledger.dense(model, seed) else "dense not trained"
            total = len(settings.methods) * len(settings.fractions)
            print(f"{model} seed {seed}: {dense}, {len(done)} of {total} units")
    sittings = ledger.read("sittings.json") or []
    print(f"{len(sittings)} sitting(s) so far, {sum(s['seconds'] for s in sittings) / 3600:.1f} h")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=list(MODES), default="quick")
    parser.add_argument("--target", default="cpu", help="target name or .toml file")
    parser.add_argument("--seeds", type=int, nargs="+", help="this sitting: only these seeds")
    parser.add_argument("--models", nargs="+", help="this sitting: only these models")
    parser.add_argument("--methods", nargs="+", choices=METHODS,
                        help="this sitting: only these methods")
    parser.add_argument("--ledger", type=Path,
                        help="finished units (default: bench/results/<mode>, kept in git)")
    parser.add_argument("--runs", type=Path,
                        help="scratch folder for search runs (default: runs/compare-<mode>)")
    parser.add_argument("--hours", type=float, default=math.inf,
                        help="start no unit after this many hours (a sitting); rerun to go on")
    parser.add_argument("--train-device", default="auto",
                        help="auto (cuda when there is one), cpu, cuda or cuda:N; latency is "
                             "always measured on --target")
    parser.add_argument("--status", action="store_true", help="list what is done and stop")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--img-dir", type=Path, default=Path("docs/img"))
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the report from the ledger, train nothing")
    args = parser.parse_args(argv)

    from compare_report import write_report

    full = MODES[args.mode]
    sitting = replace(full, **{k: tuple(v) for k, v in (
        ("seeds", args.seeds), ("models", args.models)) if v})
    target = load_target(args.target)
    ledger = Ledger(args.ledger or Path("bench/results") / args.mode)
    comparable = {k: v for k, v in asdict(full).items()
                  if k not in ("models", "seeds", "methods")}  # units are kept per method
    try:
        ledger.check_settings({"mode": args.mode, **comparable}, target.name)
    except UserError as error:
        print(error, file=sys.stderr)
        return 2
    if args.status:
        print_status(ledger, full)
        return 0
    if args.report_only:
        write_report(collect(ledger, full, args.mode, target), args.out, args.img_dir)
        return 0
    usable, why = usable_here(target)
    if not usable:
        print(f"target {target.name} cannot be measured here: {why}", file=sys.stderr)
        return 2
    device = args.train_device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--train-device {device}: torch sees no CUDA device here; use cpu or auto",
              file=sys.stderr)
        return 2
    runs = args.runs or Path("runs") / f"compare-{args.mode}"
    runs.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    load_before = os.getloadavg()
    step = target.profile.preferred_channel_step
    estimate = estimate_seconds(full, {m: l1_twins(ledger, full, m, step) for m in full.models})
    print(f"mode {args.mode}: {len(all_units(full))} units; all of them would take about "
          f"{estimate / 3600:.1f} h on this machine's CPU; ledger {ledger.root}", flush=True)
    started_at = datetime.now().isoformat("T", "seconds")
    revision = _revision()  # the code this sitting runs (read now: the tree may move on)
    started = time.perf_counter()
    methods = tuple(m for m in full.methods if not args.methods or m in args.methods)
    bench = Bench(sitting, target, args.target, runs, ledger, device, methods,
                  deadline=time.monotonic() + args.hours * 3600)
    stopped = None
    signal.signal(signal.SIGTERM, _interrupt)  # a stopped sitting is recorded as one
    try:
        for model_name in sitting.models:
            lut = bench.prepare_model(model_name)
            if not all(bench.run_seed(model_name, seed, lut) for seed in sitting.seeds):
                stopped = f"the sitting's {args.hours:g} h are up"
                break
    except (KeyboardInterrupt, Interrupted):
        stopped = "interrupted"
    finally:
        ledger.add_sitting({
            "started": started_at, "finished": datetime.now().isoformat("T", "seconds"),
            "seconds": round(time.perf_counter() - started, 1), "units": bench.units_done,
            "revision": revision, "machine": machine_line(), "train_device": device,
            "estimate_s": estimate, "load_before": list(load_before),
            "load_after": list(os.getloadavg()),
            "command": "python bench/compare_methods.py " + " ".join(
                shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))})
    results = collect(ledger, full, args.mode, target)
    ledger.write("results.json", results)
    if results["entries"]:
        write_report(results, args.out, args.img_dir)
    progress = results["progress"]
    print(f"{progress['done']} of {progress['units']} units in {ledger.root}; this sitting "
          f"made {bench.units_done} in {(time.perf_counter() - started) / 60:.1f} min"
          + (f" ({stopped}): rerun the same command to go on" if stopped else ""), flush=True)
    return 130 if stopped == "interrupted" else 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _revision() -> str:
    import subprocess

    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "hwdnal", "bench/*.py"],
                           capture_output=True, text=True).stdout.strip()
    return revision + (" (with uncommitted changes)" if dirty else "")


if __name__ == "__main__":
    sys.exit(main())
