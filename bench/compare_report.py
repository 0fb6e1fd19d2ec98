"""docs/benchmarks.md and docs/img/pareto.png from compare_methods' results.json.

Every figure and every verdict sentence is computed here from the measured results; the
only fixed text explains how the numbers were obtained.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

LABELS = {
    "hwdnal": "hwdnal (latency term)",
    "hwdnal-kd": "hwdnal, finetuned with distillation",
    "hwdnal-scratch": "hwdnal's architecture, trained from scratch like uniform width",
    "dnal": "DNAL, λa only (tuned by measuring)",
    "uniform": "uniform width, from scratch",
    "uniform-kd": "uniform width, from scratch with distillation",
    "l1": "L1 magnitude (torch-pruning), finetuned",
    "l1-kd": "L1 magnitude (torch-pruning), finetuned with distillation",
}
KNOB = {"hwdnal": "", "hwdnal-kd": "", "hwdnal-scratch": "", "dnal": "λa", "uniform": "width",
        "uniform-kd": "width", "l1": "ratio", "l1-kd": "ratio"}
#: hwdnal's architecture with another recipe: they separate the search from the recipe
#: (section 6) rather than compete with it
ABLATIONS = ("hwdnal-kd", "hwdnal-scratch")
#: (row, against it, what the difference measures)
CONTRIBUTIONS = (
    ("hwdnal-kd", "hwdnal", "distillation in hwdnal's finetuning"),
    ("uniform-kd", "uniform", "distillation in uniform width's training from scratch"),
    ("l1-kd", "l1", "distillation in L1's finetuning"),
    ("hwdnal", "hwdnal-scratch", "inheriting the dense weights (hwdnal's recipe) instead of "
     "training the found architecture from scratch"),
    ("hwdnal-scratch", "uniform", "the found architecture instead of uniform width, both "
     "trained from scratch alike"),
    ("hwdnal", "dnal", "the latency term and budget fit instead of λa alone"),
)
MIN_GAP = 0.002  # accuracy differences under 0.2 pp are ties whatever the spread
LATENCY_GAP = 0.03  # landed latencies further apart than 3% of dense are called out
#: a row whose mean measured latency is more than this share over its budget missed it (a
#: baseline whose family cannot reach the budget trains its fastest member): a loss for it
BUDGET_SLACK = 0.05


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _pm(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "—"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


class Table:
    """The results indexed by model, budget and method (failed runs kept apart)."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.r = results
        self.entries = results["entries"]
        self.models = list(dict.fromkeys(e["model"] for e in self.entries))
        self.fractions = sorted({e["fraction"] for e in self.entries}, reverse=True)
        self.methods = [m for m in LABELS if any(e["method"] == m for e in self.entries)]

    def cells(self) -> Iterator[tuple[str, str, float]]:
        """(model, method, budget) of every table row, in the report's order."""
        for model in self.models:
            for method in self.methods:
                for fraction in self.fractions:
                    yield model, method, fraction

    def runs(self, model: str, fraction: float, method: str) -> list[dict[str, Any]]:
        return [e for e in self.entries if e["model"] == model and e["fraction"] == fraction
                and e["method"] == method and not e["failed"]]

    def failed(self, model: str, fraction: float, method: str) -> list[dict[str, Any]]:
        return [e for e in self.entries if e["model"] == model and e["fraction"] == fraction
                and e["method"] == method and e["failed"]]

    def acc(self, model: str, fraction: float, method: str) -> list[float]:
        return [e["accuracy"] for e in self.runs(model, fraction, method)]

    def ratio(self, model: str, fraction: float, method: str) -> list[float]:
        return [e["latency_ms"] / e["dense_ms"] for e in self.runs(model, fraction, method)]

    def macs_ratio(self, model: str, fraction: float, method: str) -> list[float]:
        dense = {d["seed"]: d["macs"] for d in self.r["dense"] if d["model"] == model}
        return [e["macs"] / dense[e["seed"]] for e in self.runs(model, fraction, method)]

    def dense(self, model: str) -> list[dict[str, Any]]:
        return [d for d in self.r["dense"] if d["model"] == model and "latency_ms" in d]


def write_report(results: dict[str, Any], out: Path, img_dir: Path) -> None:
    table = Table(results)
    img_dir.mkdir(parents=True, exist_ok=True)
    plots = []
    for model in table.models:
        plots.append(img_dir / f"pareto-{model}.png")
        pareto_plot(table, model, plots[-1])
    s = results["settings"]
    seeds = s["seeds"]
    lines = [
        "# Benchmarks: hwdnal against the alternatives, at equal measured latency",
        "",
        "Generated by `bench/compare_methods.py` (`make bench-quick`, `make bench-medium`, "
        "`make bench`); no figure "
        "here is typed by hand. Command:",
        "",
        f"    {results['command']}",
        "",
        *provenance(results),
        "- latency: median on the target, shown as a percentage of the dense network's. Each "
        "network is measured interleaved with its seed's dense network as soon as it is "
        "trained; once every unit of a seed is in, all its networks are measured again in "
        "ONE interleaved call with the dense one (architectures rebuilt from the ledger: "
        "latency does not depend on the weights' values), and those figures are shown; "
        f"± is the sample standard deviation over the {len(seeds)} seed(s)",
        "",
        "Methods, all from the same data, seed and training recipe (SGD, Nesterov momentum, "
        "cosine learning rate, weight decay):",
        "",
        "- **hwdnal**: the search with the latency term and `budget=`, from the dense "
        "weights; architecture stage, fit to the budget measured on the target, finetune.",
        "- **DNAL, λa only**: the same search without a budget; λa is tuned per budget by "
        f"running the architecture stage (at most {s['lambda_tries']} runs per budget, "
        "shared between budgets) and measuring the pruned network, until it lands within "
        f"{s['lambda_tolerance']:.0%} of dense of the budget; the closest is finetuned.",
        "- **uniform width**: the same fraction of every coupled-channel group kept (a "
        "multiple of the target's channel step), the fraction chosen by measuring "
        f"{len(s['knobs'])} widths; trained from scratch for hwdnal's total epochs "
        f"({s['epochs_weights'] + s['epochs_arch'] + s['epochs_finetune']}).",
        "- **L1 magnitude**: torch-pruning's `BasePruner` with `MagnitudeImportance(p=1)`, "
        "one ratio for every group, the classifier left whole, rounded to the channel "
        f"step; the ratio chosen by measuring {len(s['knobs'])} ratios; from the dense "
        "weights, finetuned for hwdnal's finetune epochs.",
        f"- **The weights they inherit**: {recipe_line(s)}.",
        "- **… with distillation** (the -kd rows): the same training, the loss blended with "
        f"the dense network's softened logits (α = {s['distill']}, T = "
        f"{s['distill_temperature']}; `hwdnal search --distill`).",
        "- **hwdnal's architecture, from scratch**: the keep mask hwdnal found, freshly "
        "initialised and trained exactly like uniform width — the row that says whether the "
        "search found a better architecture at all, apart from the recipe.",
        "",
        "## Verdict",
        "",
        *verdict(table),
        "",
        "## 1. Accuracy at equal measured latency",
        "",
        *accuracy_tables(table),
        "## 2. Pareto front",
        "",
        *[f"![{plot.stem}: top-1 against measured latency]({_relative(plot, out.parent)})\n"
          for plot in plots],
        "",
        "Mean over seeds; error bars are one standard deviation in both directions; the "
        "star is the dense network.",
        "",
        "## 3. Realised speedup: measured latency against MACs",
        "",
        *speedup_table(table),
        "## 4. Latency-model fidelity",
        "",
        *fidelity_table(results),
        "## 5. Cost",
        "",
        *cost_tables(table),
        "## 6. What each part of the recipe contributes",
        "",
        *contribution_table(table),
        "",
        "The architecture stage's own ablations, each change measured against the one before "
        "it on one set of dense weights (which part lets the stage see what a channel is "
        "worth, where its mask lands against the budget, how much the fit changes): "
        "[arch-stage.md](arch-stage.md), written by `python bench/arch_ablation.py`; where "
        "the stage ends (its best late mask under the aim, or the last one), each pair on "
        "one trajectory: [arch-stage-ends-on.md](arch-stage-ends-on.md). The "
        "finetune recipe's variants (lr, length, distillation, the split of the epochs) on "
        "the very networks this ledger pruned: [recipe.md](recipe.md), written by `python "
        "bench/recipe_ablation.py`; which channels a group keeps, and the spread of one "
        "finetune: `python bench/channel_choice.py`; both read in "
        "[arch-stage-findings.md](arch-stage-findings.md).",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


def inherited_recipe(s: dict[str, Any]) -> tuple[int, int, float | None]:
    """(epochs of the dense network hwdnal, DNAL and L1 start from, their finetune epochs,
    their finetune lr or None for hwdnal's default): the settings' ``search_after``."""
    total = s["epochs_weights"] + s["epochs_arch"] + s["epochs_finetune"]
    start = s.get("search_after")
    if start is None:
        return s["epochs_weights"], s["epochs_finetune"], s.get("finetune_lr")
    return start, total - start - s["epochs_arch"], s.get("finetune_lr")


def recipe_line(s: dict[str, Any]) -> str:
    start, tune, lr = inherited_recipe(s)
    lr_text = f" at lr {lr:g}" if lr is not None else ""
    if s.get("search_after") is None:
        return (f"hwdnal, DNAL and L1 start from the dense network and finetune {tune} "
                f"epochs{lr_text}")
    return (f"hwdnal, DNAL and L1 search early: they start from the same seed's dense "
            f"network trained only {start} epochs and finetune {tune}{lr_text}, so that "
            f"their total ({start}+{s['epochs_arch']}+{tune}) equals uniform width's; the "
            f"{s['epochs_weights']}-epoch dense network is the reference")


def provenance(results: dict[str, Any]) -> list[str]:
    """Where, when and how long: one line per sitting, and how much of the mode is done."""
    s = results["settings"]
    lines = [
        f"- data: Fashion-MNIST 28×28, {s['train_subset'] or 60000} training images (a "
        f"deterministic subset per seed), {s['test_subset'] or 10000} test images; epochs: "
        f"weights {s['epochs_weights']}, architecture {s['epochs_arch']}, finetune "
        f"{s['epochs_finetune']}; seeds {', '.join(map(str, s['seeds']))}; "
        f"{recipe_line(s)}",
        f"- target `{results['target']['name']}`: {results['target']['description']}, batch "
        f"{results['target']['batch']}, {results['target']['threads']} thread(s)",
    ]
    progress = results.get("progress")
    if progress:
        complete = progress["done"] == progress["units"]
        lines.append(
            f"- progress: {progress['done']} of {progress['units']} units "
            f"(model × method × budget × seed) and {progress['dense']} of "
            f"{progress['dense_total']} dense networks"
            + ("" if complete else " — **incomplete: every figure below is provisional**"))
    sittings = results.get("sittings")
    if sittings is None:  # a report written by one uninterrupted run
        return [*lines, f"- date: {results['date']}; revision: {results['revision']}",
                f"- machine: {results['machine']}",
                f"- wall time {results['seconds'] / 60:.1f} min"]
    lines.append(f"- wall time {results['seconds'] / 3600:.2f} h in {len(sittings)} "
                 f"sitting(s) (all of the mode estimated, at the latest sitting, at "
                 f"{results['estimate_s'] / 3600:.1f} h of this machine's CPU):")
    for i, sitting in enumerate(sittings, 1):
        lines.append(
            f"  {i}. {sitting['started']} → {sitting['finished']}, revision "
            f"{sitting['revision']}, training on {sitting['train_device']}: "
            f"{sitting['units']} unit(s) in {sitting['seconds'] / 60:.0f} min; load average "
            f"(1 min) {sitting['load_before'][0]:.2f} before, {sitting['load_after'][0]:.2f} "
            f"after; machine: {sitting['machine']}; `{sitting['command']}`")
    measured = [f"{d['model']} seed {d['seed']}: {d['load_at_measurement'][0]:.2f} / "
                f"{d['load_at_measurement'][1]:.2f}" for d in results["dense"]
                if "load_at_measurement" in d]
    if measured:
        lines.append("- load average (1 min) just before / after each seed's final "
                     "measurement: " + "; ".join(measured))
    return lines


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path.resolve())


# -- verdict -------------------------------------------------------------------------------
def missed_budget(table: Table, model: str, fraction: float, method: str) -> bool:
    """No network of ``method`` at this budget, only failures, or one measured over it."""
    if not table.runs(model, fraction, method):
        return bool(table.failed(model, fraction, method))
    return mean_std(table.ratio(model, fraction, method))[0] > fraction * (1 + BUDGET_SLACK)


def compare(table: Table, model: str, fraction: float, other: str,
            ours: str = "hwdnal") -> dict[str, Any] | None:
    """The verdict's rule: a row that missed the budget loses to one that met it; between
    two that met it (or two that missed it) the mean top-1 decides, beyond the seeds'
    spread."""
    a, x = table.acc(model, fraction, ours), table.acc(model, fraction, other)
    missed_a, missed_x = (missed_budget(table, model, fraction, m) for m in (ours, other))
    if not (a or missed_a) or not (x or missed_x) or not (a or x):
        return None
    (ma, sa), (mx, sx) = mean_std(a), mean_std(x)
    threshold = max(sa + sx, MIN_GAP) if a and x else MIN_GAP
    gap = ma - mx if a and x else math.nan
    if missed_a != missed_x:
        outcome = "loses" if missed_a else "wins"
    else:
        outcome = "wins" if gap > threshold else "loses" if gap < -threshold else "ties"
    return {"outcome": outcome, "gap": gap, "threshold": threshold, "a": ma, "x": mx,
            "missed_a": missed_a, "missed_x": missed_x,
            "x_at_a": on_curve(table, model, other,
                               mean_std(table.ratio(model, fraction, ours))[0]),
            "lat_a": mean_std(table.ratio(model, fraction, ours))[0],
            "lat_x": mean_std(table.ratio(model, fraction, other))[0],
            "macs_a": mean_std(table.macs_ratio(model, fraction, ours))[0],
            "macs_x": mean_std(table.macs_ratio(model, fraction, other))[0]}


def on_curve(table: Table, model: str, method: str, latency: float) -> float | None:
    """``method``'s mean top-1 interpolated at ``latency`` along its budgets (None outside)."""
    points = sorted((mean_std(table.ratio(model, f, method))[0],
                     mean_std(table.acc(model, f, method))[0]) for f in table.fractions
                    if table.runs(model, f, method))
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 <= latency <= x1 and x1 > x0:
            return y0 + (y1 - y0) * (latency - x0) / (x1 - x0)
    return None


def reasons(table: Table, model: str, fraction: float, other: str,
            c: dict[str, Any]) -> list[str]:
    """What the numbers say about why (facts only, no speculation)."""
    s = table.r["settings"]
    why = []
    for method, missed, latency in (("hwdnal", c["missed_a"], c["lat_a"]),
                                    (other, c["missed_x"], c["lat_x"])):
        name = "hwdnal" if method == "hwdnal" else "it"
        if missed and math.isnan(latency):
            why.append(f"{name} made no network within the budget (failed; counted as a loss "
                       f"for {name})")
        elif missed:
            why.append(f"{name} measured {latency:.0%} of dense, over the {fraction:.0%} budget "
                       f"(counted as a loss for {name})")
    if math.isnan(c["lat_a"]) or math.isnan(c["lat_x"]):
        return why
    if c["lat_x"] > c["lat_a"] + LATENCY_GAP:
        why.append(f"it ran slower than hwdnal ({c['lat_x']:.0%} vs {c['lat_a']:.0%} of dense), "
                   "which favours it")
    elif c["lat_x"] < c["lat_a"] - LATENCY_GAP:
        why.append(f"it ran faster than hwdnal ({c['lat_x']:.0%} vs {c['lat_a']:.0%} of dense), "
                   "which favours hwdnal")
    if abs(c["lat_x"] - c["lat_a"]) > LATENCY_GAP and c["x_at_a"] is not None:
        why.append(f"interpolated along its other budgets to hwdnal's latency it would reach "
                   f"{c['x_at_a']:.1%} ({100 * (c['a'] - c['x_at_a']):+.1f} pp for hwdnal)")
    if c["lat_a"] > fraction and not c["missed_a"]:
        why.append(f"hwdnal's final measurement is over the budget ({c['lat_a']:.0%})")
    if abs(c["macs_a"] - c["macs_x"]) > 0.05:
        more = "more" if c["macs_a"] > c["macs_x"] else "fewer"
        why.append(f"hwdnal's network keeps {more} MACs ({c['macs_a']:.0%} vs "
                   f"{c['macs_x']:.0%} of dense)")
    if other == "dnal":
        tries = [e["tries"] for e in table.runs(model, fraction, "dnal")]
        why.append(f"DNAL spent {statistics.fmean(tries):.1f} architecture run(s) per seed "
                   "on this budget to choose λa, hwdnal one")
    if other == "uniform" and c["outcome"] != "wins":
        why.append(f"uniform width trains every weight for "
                   f"{s['epochs_weights'] + s['epochs_arch'] + s['epochs_finetune']} epochs at "
                   f"its final size; hwdnal's pruned network is finetuned for "
                   f"{inherited_recipe(s)[1]}")
    return why


def verdict(table: Table) -> list[str]:
    lines, counts = [], {"wins": 0, "ties": 0, "loses": 0}
    s = table.r["settings"]
    for model in table.models:
        for fraction in table.fractions:
            for failed in table.failed(model, fraction, "hwdnal"):
                lines.append(f"- **{model} at {fraction:.0%}, seed {failed['seed']}: hwdnal "
                             f"failed** — {failed['failed']}")
            for other in table.methods:
                if other in ABLATIONS or other == "hwdnal":
                    continue  # hwdnal's own variants: section 6
                c = compare(table, model, fraction, other)
                if c is None:
                    continue
                counts[c["outcome"]] += 1
                why = reasons(table, model, fraction, other, c)
                gap = (f" ({100 * c['gap']:+.1f} pp; spread {100 * c['threshold']:.1f} pp)"
                       if not math.isnan(c["gap"]) else "")
                lines.append(
                    f"- {model} at {fraction:.0%}: **hwdnal {c['outcome']}** against "
                    f"{LABELS[other]}: {_top1(c['a'])} vs {_top1(c['x'])} top-1{gap}"
                    + (f"; {'; '.join(why)}" if why else "") + ".")
    total = sum(counts.values())
    head = [
        f"**Over {total} comparisons (model × budget × method), hwdnal wins {counts['wins']}, "
        f"ties {counts['ties']} and loses {counts['loses']}.** A comparison is a win or a loss "
        "only when the difference of the mean top-1 exceeds the sum of the two standard "
        f"deviations over seeds (and {100 * MIN_GAP:.1f} pp); otherwise it is a tie.",
        "",
    ]
    progress = table.r.get("progress")
    if progress and progress["done"] < progress["units"]:
        head += [
            f"**Provisional**: {progress['done']} of {progress['units']} units are in the "
            "ledger; comparisons with fewer seeds than the mode's have a smaller spread than "
            "the finished benchmark will. Rerun the command to go on.",
            "",
        ]
    if (s["train_subset"] or 60000) < 60000 or s["epochs_weights"] < 10:
        head += [
            f"These are {table.r.get('mode', 'quick')}-mode numbers: "
            f"{s['train_subset'] or 60000} training images and "
            f"{s['epochs_weights']}+{s['epochs_arch']}+{s['epochs_finetune']} epochs "
            f"({inherited_recipe(s)[0]}+{s['epochs_arch']}+{inherited_recipe(s)[1]} for the "
            "rows that inherit weights) leave "
            f"every network short of what it could reach, and {len(s['seeds'])} seed(s) give "
            "a rough spread; the full mode (`make bench`) trains on all images for longer.",
            "",
        ]
    return head + lines


def _top1(value: float) -> str:
    return "no network" if math.isnan(value) else f"{value:.1%}"


# -- tables --------------------------------------------------------------------------------
def contribution_table(table: Table) -> list[str]:
    """Pairs of rows that differ in one thing, judged by the verdict's rule."""
    lines = ["Each line compares two rows that differ in one part of the recipe; the "
             "difference is called a gain or a loss by the verdict's rule (beyond the sum of "
             "the standard deviations and 0.2 pp), else no measurable effect.", "",
             "| model | budget | what changes | top-1 with (%) | top-1 without (%) | "
             "Δ (pp) | effect |", "| --- | ---: | --- | ---: | ---: | ---: | --- |"]
    for model in table.models:
        for fraction in table.fractions:
            for row, base, what in CONTRIBUTIONS:
                c = compare(table, model, fraction, base, ours=row)
                if c is None or math.isnan(c["gap"]):
                    continue
                effect = {"wins": "gain", "loses": "loss", "ties": "none measurable"}
                said = effect[c["outcome"]]
                if c["missed_a"] != c["missed_x"]:  # decided by the budget, not the top-1
                    said += (" (without it the budget is missed)" if c["missed_x"]
                             else " (with it the budget is missed)")
                lines.append(f"| {model} | {fraction:.0%} | {what} | {100 * c['a']:.1f} | "
                             f"{100 * c['x']:.1f} | {100 * c['gap']:+.1f} | {said} |")
    return [*lines, ""]


def accuracy_tables(table: Table) -> list[str]:
    lines = []
    for model in table.models:
        dense = table.dense(model)
        dense_ms = [d["latency_ms"] for d in dense]
        lines += [
            f"### {model}",
            "",
            "| budget | method | chosen | measured latency (% of dense) | top-1 (%) | "
            "Δ top-1 vs hwdnal (pp) | MACs kept (%) | within budget |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | :---: |",
            f"| — | dense (reference) | — | 100 ({statistics.fmean(dense_ms):.3f} ms) | "
            f"{_pm([d['accuracy'] for d in dense])} | | 100 | |",
        ]
        for fraction in table.fractions:
            base = mean_std(table.acc(model, fraction, "hwdnal"))[0]
            for method in table.methods:
                runs = table.runs(model, fraction, method)
                failed = table.failed(model, fraction, method)
                if not runs:
                    lines.append(f"| {fraction:.0%} | {LABELS[method]} | — | failed "
                                 f"({len(failed)} seed(s)) | — | — | — | no |")
                    continue
                knobs = sorted({e["knob"] for e in runs if e["knob"] is not None})
                chosen = f"{KNOB[method]} " + ", ".join(f"{k:.3g}" for k in knobs) if knobs \
                    else "budget"
                acc = table.acc(model, fraction, method)
                delta = "" if method == "hwdnal" or math.isnan(base) else \
                    f"{100 * (statistics.fmean(acc) - base):+.1f}"
                within = sum(r <= fraction for r in table.ratio(model, fraction, method))
                note = f" ({len(failed)} failed)" if failed else ""
                lines.append(
                    f"| {fraction:.0%} | {LABELS[method]} | {chosen} | "
                    f"{_pm(table.ratio(model, fraction, method))} | {_pm(acc)} | {delta} | "
                    f"{_pm(table.macs_ratio(model, fraction, method), digits=0)} | "
                    f"{within}/{len(runs)}{note} |")
        lines.append("")
    return lines


def speedup_table(table: Table) -> list[str]:
    lines = [
        "Speedup = dense latency / pruned latency (measured); MACs reduction = dense MACs / "
        "pruned MACs. Their quotient is the share of the MACs reduction that turns into "
        "speed on this target (1 = all of it).",
        "",
        "| model | method | budget | speedup (×) | MACs reduction (×) | speedup / MACs "
        "reduction |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for model, method, fraction in table.cells():
        lat = table.ratio(model, fraction, method)
        macs = table.macs_ratio(model, fraction, method)
        if not lat:
            continue
        speed = statistics.fmean(1 / r for r in lat)
        reduction = statistics.fmean(1 / m for m in macs)
        lines.append(f"| {model} | {LABELS[method]} | {fraction:.0%} | {speed:.2f} | "
                     f"{reduction:.2f} | {speed / reduction:.2f} |")
    return [*lines, ""]


def fidelity_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "The LUT each run used was profiled at the start of the benchmark, from an empty "
        "measurement cache; its calibrated prediction is compared with the measured median "
        "of random sub-networks held out from the calibration.",
        "",
        "| target | model | held-out sub-networks | median error | p95 error | max error |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for p in results["profiles"]:
        def pct(key: str, p: dict[str, Any] = p) -> str:
            return "—" if p.get(key) is None else f"{100 * p[key]:.1f}%"

        lines.append(f"| {p['target']} | {p['model']} 28×28 | {p.get('samples') or 0} | "
                     f"{pct('median_rel_error')} | {pct('p95_rel_error')} | "
                     f"{pct('max_rel_error')} |")
    for other in results["other_targets"]:
        state = "usable here but not measured in this run" if other["usable"] else \
            f"not available on this machine: {other['why']}"
        lines.append(f"| {other['target']} | — | — | {state} | | |")
    return [*lines, ""]


def cost_tables(table: Table) -> list[str]:
    r = table.r
    lines = [
        "### Per method and budget (mean over seeds)",
        "",
        "Seconds are wall time on this machine. *Measurements* are whole-network latency "
        "measurements spent choosing the architecture: hwdnal's fit rounds; DNAL's runs "
        "(one per λa tried); the candidates of the uniform and L1 families (measured once per "
        "model and shared by all budgets and seeds). The dense network's weight stage, "
        "shared by hwdnal, DNAL and L1, is listed once below.",
        "",
        "| model | method | budget | stages: epochs, seconds | total (s) | measurements |",
        "| --- | --- | ---: | --- | ---: | ---: |",
    ]
    for model, method, fraction in table.cells():
        runs = table.runs(model, fraction, method)
        if not runs:
            continue
        names = list(dict.fromkeys(st["name"] for e in runs for st in e["stages"]))
        parts, total = [], 0.0
        for name in names:
            found = [st for e in runs for st in e["stages"] if st["name"] == name]
            seconds = sum(st["seconds"] for st in found) / len(runs)
            epochs = sum(st["epochs"] for st in found) / len(runs)
            total += seconds
            parts.append(f"{name}: {epochs:g} ep, {seconds:.0f} s")
        measurements = statistics.fmean(e["measurements"] for e in runs)
        lines.append(f"| {model} | {LABELS[method]} | {fraction:.0%} | "
                     f"{'; '.join(parts)} | {total:.0f} | {measurements:.1f} |")
    shared = [e for e in r["entries"] if e.get("same_network_as")]
    for model, method, fraction, source in sorted({
            (e["model"], e["method"], e["fraction"], e["same_network_as"]) for e in shared}):
        seeds = sorted(e["seed"] for e in shared if (e["model"], e["method"], e["fraction"],
                                                     e["same_network_as"])
                       == (model, method, fraction, source))
        lines += ["", f"{model}, {LABELS[method]} at {fraction:.0%}: on seed(s) "
                  f"{', '.join(map(str, seeds))} its ratio rounds to the very channels of "
                  f"`{source}`; that network was trained once (the same start and data order "
                  "would repeat it bit for bit), its accuracy and cost stand in both rows, "
                  "and its latency is measured in both."]
    lines += ["", "| model | dense weight stage: epochs | seconds (mean over seeds) |",
              "| --- | ---: | ---: |"]
    for model in table.models:
        dense = [d for d in r["dense"] if d["model"] == model]
        lines.append(f"| {model} | {dense[0]['stage']['epochs']} | "
                     f"{statistics.fmean(d['stage']['seconds'] for d in dense):.0f} |")
    lines += ["", "### Profiling the target (once per model)", "",
              "| model | target | seconds | layer grid measurements | whole networks measured "
              "(dense + calibration + held-out) |", "| --- | --- | ---: | ---: | ---: |"]
    for p in r["profiles"]:
        lines.append(f"| {p['model']} | {p['target']} | {p['seconds']:.0f} | "
                     f"{p['grid_points']} | {p['networks']} |")
    lines += ["", "### Per-step overhead of gated training", "",
              "One step = forward, backward and SGD update of a batch of 128; the three cases "
              "interleaved round by round, median over the steps.", "",
              "| model | case | median step (ms) | relative to plain | steps |",
              "| --- | --- | ---: | ---: | ---: |"]
    for o in r["overhead"]:
        lines.append(f"| {o['model']} | {o['case']} | {o['step_ms']:.1f} | "
                     f"{o['relative']:.2f} | {o['steps']} |")
    return [*lines, ""]


# -- the plot ------------------------------------------------------------------------------
def pareto_plot(table: Table, model: str, path: Path) -> None:
    """One model's accuracy against measured latency, every method, mean ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 1, figsize=(7.2, 5.0), squeeze=False)
    markers = {"hwdnal": "o", "hwdnal-kd": "P", "hwdnal-scratch": "X", "dnal": "s",
               "uniform": "^", "uniform-kd": "v", "l1": "D", "l1-kd": "d"}
    for axis in axes[0]:
        for method in table.methods:
            points = []
            for fraction in table.fractions:
                lat, acc = table.ratio(model, fraction, method), table.acc(model, fraction, method)
                if lat:
                    points.append((*mean_std(lat), *mean_std(acc)))
            points.sort()
            if not points:
                continue
            axis.errorbar([100 * p[0] for p in points], [100 * p[2] for p in points],
                          xerr=[100 * p[1] for p in points], yerr=[100 * p[3] for p in points],
                          marker=markers[method], capsize=3, label=LABELS[method])
        dense = table.dense(model)
        if dense:
            axis.plot([100], [100 * statistics.fmean(d["accuracy"] for d in dense)], "k*",
                      markersize=12, label="dense")
        for fraction in table.fractions:
            axis.axvline(100 * fraction, color="grey", linestyle=":", linewidth=0.8)
        axis.set_xlabel("measured latency (% of dense, target "
                        f"{table.r['target']['name']})")
        axis.set_ylabel("top-1 accuracy (%)")
        axis.set_title(f"{model}, Fashion-MNIST ({len(table.r['settings']['seeds'])} seeds)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
