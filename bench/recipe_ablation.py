"""The finetune recipe, measured: which lr, length and distillation recover a pruned network.

The medium mode's first seed left hwdnal's pruned networks (before finetuning) in its run
folders. This script finetunes those very networks, and L1's network at the knob the ledger
chose, under each recipe variant, from the same starting weights and with the same data
order, and writes one table of top-1 accuracy on all 10 000 test images. Only the recipe
differs between the lines, so the table says what the recipe is worth and whether it helps
hwdnal more than the L1 baseline that is finetuned "like hwdnal".

    python bench/recipe_ablation.py --runs runs/compare-medium --ledger bench/results/medium \\
        --out bench/results/recipe/seed0.json        # ~2 min per line and budget, alone

Latency does not change with the recipe, so nothing is measured here.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


@dataclass(frozen=True)
class Recipe:
    name: str
    lr: float
    epochs: int
    #: the share α of the distillation term (0: labels alone)
    distill: float = 0.0
    temperature: float = 4.0


RECIPES = {
    "today": Recipe("today", 0.02, 4),
    "kd": Recipe("kd", 0.02, 4, distill=0.5),
    "lr05": Recipe("lr05", 0.05, 4),
    "lr05-kd": Recipe("lr05-kd", 0.05, 4, distill=0.5),
    "lr10-kd": Recipe("lr10-kd", 0.1, 4, distill=0.5),
    "lr05-kd9": Recipe("lr05-kd9", 0.05, 4, distill=0.9),
    "lr10": Recipe("lr10", 0.1, 4),
    "lr05-8ep": Recipe("lr05-8ep", 0.05, 8),
    "lr05-kd-8ep": Recipe("lr05-kd-8ep", 0.05, 8, distill=0.5),
    "lr10-18ep": Recipe("lr10-18ep", 0.1, 18),
}


def finetuned_accuracy(start: torch.nn.Module, dense: torch.nn.Module, data, recipe: Recipe,
                       seed: int) -> tuple[float, float, float]:
    """(accuracy before, after, seconds) of ``start`` finetuned by ``recipe``."""
    from methods import train_plain

    from hwdnal.distillation import Distillation
    from hwdnal.search import SearchConfig
    from hwdnal.train import evaluate, recalibrate_batchnorm

    defaults = SearchConfig()
    net = copy.deepcopy(start).cpu()
    recalibrate_batchnorm(net, data, defaults.batch_size, seed=seed * 1000 + 700)
    before = evaluate(net, data)
    teacher = (Distillation(copy.deepcopy(dense), recipe.distill, recipe.temperature)
               if recipe.distill > 0 else None)
    seconds = train_plain(net, data, recipe.epochs, recipe.lr, defaults.batch_size,
                          defaults.weight_decay, seed, teacher)
    return before, evaluate(net, data), seconds


def markdown(rows: list[dict], source: Path) -> str:
    """The table of a results file: one line per recipe, a column per network finetuned."""
    columns = sorted({(r["method"], r["fraction"]) for r in rows}, key=lambda c: (-c[1], c[0]))
    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    found = {(r["method"], r["fraction"], r["recipe"]): r for r in rows}
    head = [f"{m} at {f:.0%}" for m, f in columns]
    lines = [
        "| recipe | lr | epochs | distillation α | " + " | ".join(head) + " |",
        "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in head) + " |"]
    for name in recipes:
        r = RECIPES[name]
        cells = [f"{100 * found[(m, f, name)]['accuracy']:.2f}" if (m, f, name) in found
                 else "" for m, f in columns]
        lines.append(f"| {name} | {r.lr:g} | {r.epochs} | {r.distill:g} | "
                     + " | ".join(cells) + " |")
    before = [f"{100 * found[(m, f, recipes[0])]['before']:.2f}"
              if (m, f, recipes[0]) in found else "" for m, f in columns]
    lines.append("| (before finetuning, BatchNorm recalibrated) | | | | "
                 + " | ".join(before) + " |")
    return ("Top-1 (%) on all 10 000 test images after finetuning the same pruned networks "
            f"(written by `python bench/recipe_ablation.py --out {source} --doc ...` from "
            "that file).\n\n" + "\n".join(lines) + "\n")


def ledger_parser(description: str) -> argparse.ArgumentParser:
    """The options of a script that reworks the medium ledger's networks: where its runs
    and ledger are, which model and seed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "compare-medium")
    parser.add_argument("--ledger", type=Path, default=ROOT / "bench" / "results" / "medium")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = ledger_parser(__doc__.splitlines()[0])
    parser.add_argument("--fractions", default="0.5,0.3")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--methods", default="hwdnal,l1")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--start-weights", type=Path, default=None,
                        help="L1 prunes these dense weights (a state dict) instead of the "
                             "ledger's: the early-search recipe's shorter dense training")
    parser.add_argument("--doc", type=Path, default=None,
                        help="write the table of --out's rows to this markdown file and stop")
    args = parser.parse_args(argv)
    if args.doc is not None:
        args.doc.write_text(markdown(json.loads(args.out.read_text()), args.out))
        return 0

    from methods import l1_pruned

    from hwdnal.data import load_data
    from hwdnal.models import create_model
    from hwdnal.targets import load_target

    settings = json.loads((args.ledger / "settings.json").read_text())["settings"]
    seed_dir = args.ledger / args.model / f"seed{args.seed}"
    dense = create_model(args.model, 10, 1)
    dense.load_state_dict(torch.load(seed_dir / "dense.pt", weights_only=True,
                                     map_location="cpu"))
    dense.eval()
    data = load_data("fashion-mnist", None, None, settings["train_subset"],
                     settings["test_subset"], args.seed)
    results = json.loads(args.out.read_text()) if args.out.exists() else []
    done = {(r["method"], r["fraction"], r["recipe"]) for r in results}
    for fraction in (float(f) for f in args.fractions.split(",")):
        for method in args.methods.split(","):
            if method == "hwdnal":
                found = args.runs / args.model / f"seed{args.seed}" / f"hwdnal-{fraction:g}"
                start = torch.load(found / "checkpoints" / "pruned_init.pt",
                                   weights_only=False, map_location="cpu")["model"]
            else:
                knob = json.loads((seed_dir / f"l1-{fraction:g}.json").read_text())["knob"]
                step = load_target("cpu").profile.preferred_channel_step  # as the ledger
                source = dense
                if args.start_weights is not None:
                    source = create_model(args.model, 10, 1)
                    source.load_state_dict(torch.load(args.start_weights, weights_only=True))
                start = l1_pruned(source.eval(), torch.randn(1, 1, 28, 28), knob, step)
            for name in args.recipes.split(","):
                if (method, fraction, name) in done:
                    continue
                recipe = RECIPES[name]
                before, after, seconds = finetuned_accuracy(start, dense, data, recipe,
                                                            args.seed)
                row = {"method": method, "fraction": fraction, "recipe": name,
                       **asdict(recipe), "before": before, "accuracy": after,
                       "seconds": round(seconds, 1), "when": time.strftime("%Y-%m-%d %H:%M")}
                append_row(args.out, results, row)
    return 0


def append_row(out: Path, results: list[dict], row: dict) -> None:
    """Print one finished line and rewrite ``out`` with it, so a stopped run keeps it."""
    print(json.dumps(row), flush=True)
    results.append(row)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
