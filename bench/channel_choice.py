"""Which channels a group keeps, and how much of a gap one finetune's data order makes.

At 50% the medium mode's seed 0 left hwdnal 0.36 pp behind L1 (torch-pruning, uniform
ratio, L1-magnitude channels), both finetuned 18 epochs from the same 6-epoch dense weights.
The two networks differ in two things: the widths (hwdnal's stage moved three groups) and
which channels of a group survive (the gates' order against weight magnitude). This script
separates them, and measures the noise the comparison stands on:

- ``own``: hwdnal's network as the ledger's unit pruned it (the control);
- ``magnitude``: hwdnal's widths, each group's channels chosen by torch-pruning's group L1
  magnitude (item 2 of the issue: a within-group signal that is not zero-sum);
- ``uniform-gates``: uniform width's counts, channels chosen by hwdnal's learned gates;
- ``own-order1``: the control finetuned with another data order (the seed of the finetune's
  shuffling and BatchNorm recalibration), all else equal: the spread one unit carries.

Every line starts from the ledger's ``dense-6ep.pt`` and is finetuned by the medium mode's
recipe (18 epochs, lr 0.1, SGD + cosine); top-1 on all 10 000 test images.

    python bench/channel_choice.py --out bench/results/recipe/channel-choice-seed0.json
    # ~5 min a line, alone
"""

from __future__ import annotations

import copy
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

VARIANTS = ("own", "magnitude", "uniform-gates", "own-order1")


def magnitude_scores(gated) -> torch.Tensor:
    """torch-pruning's group L1 magnitude of every gated channel (coupled layers summed)."""
    import torch_pruning as tp

    importance = tp.importance.MagnitudeImportance(p=1)
    plan = gated.plan
    scores = torch.zeros(plan.num_gates + 1)
    for group in plan.groups:
        for (module, prune_fn), gate_index in zip(group.roots, group.root_gate_index,
                                                  strict=True):
            dependent = plan.graph.get_pruning_group(module, prune_fn,
                                                     idxs=list(range(len(gate_index))))
            scores.index_add_(0, gate_index.long(), importance(dependent).detach().float())
    return scores[:-1]


def same_counts(gated, counts_from: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """A keep mask with ``counts_from``'s count in every group, the top ``scores`` kept."""
    keep = torch.zeros_like(counts_from)
    for group in gated.plan.groups:
        count = int(counts_from[group.start : group.stop].sum())
        order = torch.argsort(scores[group.start : group.stop], descending=True)
        keep[group.start + order[:count]] = True
    return keep


def main(argv: list[str] | None = None) -> int:
    from recipe_ablation import ledger_parser

    parser = ledger_parser(__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    from ledger import mask_from_text
    from methods import sliced_like, uniform_mask
    from recipe_ablation import RECIPES, append_row, finetuned_accuracy

    from hwdnal.data import load_data
    from hwdnal.gating.model import GatedModel
    from hwdnal.models import create_model
    from hwdnal.targets import load_target

    settings = json.loads((args.ledger / "settings.json").read_text())["settings"]
    seed_dir = args.ledger / args.model / f"seed{args.seed}"

    def weights(name: str) -> torch.nn.Module:
        net = create_model(args.model, 10, 1)
        net.load_state_dict(torch.load(seed_dir / name, weights_only=True, map_location="cpu"))
        return net.eval()

    start, dense = weights("dense-6ep.pt"), weights("dense.pt")
    example = torch.zeros(1, 1, 28, 28)
    gated = GatedModel(copy.deepcopy(start), example)
    unit = json.loads((seed_dir / f"hwdnal-{args.fraction:g}.json").read_text())
    own = mask_from_text(unit["keep"])
    found = args.runs / args.model / f"seed{args.seed}" / f"hwdnal-{args.fraction:g}"
    gates = torch.load(found / "checkpoints" / "architecture.pt", weights_only=False,
                       map_location="cpu")["gate"]["s"].float()
    step = load_target("cpu").profile.preferred_channel_step
    masks: dict[str, Callable[[], torch.Tensor]] = {
        "own": lambda: own,
        "own-order1": lambda: own,
        "magnitude": lambda: same_counts(gated, own, magnitude_scores(gated)),
        "uniform-gates": lambda: same_counts(
            gated, uniform_mask(start, example, args.fraction, step), gates),
    }
    data = load_data("fashion-mnist", None, None, settings["train_subset"],
                     settings["test_subset"], args.seed)
    recipe = RECIPES["lr10-18ep"]
    results = json.loads(args.out.read_text()) if args.out.exists() else []
    done = {(r["fraction"], r["variant"]) for r in results}
    for variant in args.variants.split(","):
        if (args.fraction, variant) in done:
            continue
        keep = masks[variant]()
        net = sliced_like(start, example, keep)  # the 6-epoch weights, cut to ``keep``
        order = args.seed + (1 if variant.endswith("order1") else 0)
        before, after, seconds = finetuned_accuracy(net, dense, data, recipe, order)
        row = {"fraction": args.fraction, "variant": variant, "recipe": recipe.name,
               "same_channels_as_own": round(float((keep == own).float().mean()), 4),
               "kept": int(keep.sum()), "before": before, "accuracy": after,
               "seconds": round(seconds, 1), "when": time.strftime("%Y-%m-%d %H:%M")}
        append_row(args.out, results, row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
