"""DNAL searches at realistic scale: full data, tens of epochs, several λa from one dense net.

Trains the dense network once, then runs the architecture, prune and finetune stages for
each λa from those weights, and writes a table of dense against pruned accuracy, params and
MACs. Meant for a GPU (`--device cuda`); on 2 CPU cores use the README's demo instead.

    python bench/search_at_scale.py --model resnet20 --device cuda \
        --epochs-weights 30 --epochs-arch 5 --epochs-finetune 15 --lambda-a 0.5 1 2 4 \
        --out docs/search-at-scale.md
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

from hwdnal.search import DnalSearch, SearchConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs-weights", type=int, default=30)
    parser.add_argument("--epochs-arch", type=int, default=5)
    parser.add_argument("--epochs-finetune", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lambda-a", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--runs", type=Path, default=Path("runs/at-scale"))
    parser.add_argument("--out", type=Path, default=Path("docs/search-at-scale.md"))
    args = parser.parse_args()

    common = dict(model=args.model, data=args.data, data_dir=args.data_dir,
                  batch_size=args.batch_size, device=args.device,
                  epochs_arch=args.epochs_arch, epochs_finetune=args.epochs_finetune,
                  compile=False)  # accuracy at scale; latency is measured elsewhere
    rows = []
    started = time.perf_counter()
    dense_run = args.runs / "dense"
    first = DnalSearch(SearchConfig(**common, epochs_weights=args.epochs_weights,
                                    lambda_a=args.lambda_a[0]), args.runs / f"la{args.lambda_a[0]}")
    rows.append((args.lambda_a[0], first.run()))
    dense_run = first.run_dir.path / "dense.pt"
    for lambda_a in args.lambda_a[1:]:
        config = SearchConfig(**common, epochs_weights=0, lambda_a=lambda_a,
                              weights=str(dense_run), trust_weights_pickle=True)
        rows.append((lambda_a, DnalSearch(config, args.runs / f"la{lambda_a}").run()))
    total = time.perf_counter() - started

    device_name = (torch.cuda.get_device_name(0) if args.device.startswith("cuda")
                   else platform.processor() or platform.machine())
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
    dense = rows[0][1]["dense"]
    lines = [
        f"# DNAL at scale: {args.model} on {args.data}",
        "",
        f"Command: `python {' '.join(sys.argv)}`",
        "",
        f"Date {date.today()}, revision {revision or 'uncommitted'}, device {device_name}, "
        f"torch {torch.__version__}; total {total / 60:.1f} min. The dense network trains "
        f"once ({args.epochs_weights} epochs); each λa then runs the architecture stage "
        f"({args.epochs_arch} epochs, δ 1 → 1e4), pruning and finetuning "
        f"({args.epochs_finetune} epochs) from those weights. Accuracy is top-1 on the "
        "held-out test split.",
        "",
        "| λa | top-1 | Δ top-1 | params | MACs | channels kept | arch + finetune (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| dense | {dense['accuracy']:.4f} | | {dense['params']:,} | {dense['macs']:,} | | |",
    ]
    for lambda_a, result in rows:
        pruned = result["pruned"]
        kept = sum(g["kept"] for g in result["groups"])
        total_channels = sum(g["total"] for g in result["groups"])
        seconds = sum(s["seconds"] for s in result["stages"] if s["name"] != "weights")
        lines.append(
            f"| {lambda_a} | {pruned['accuracy']:.4f} | "
            f"{pruned['accuracy'] - dense['accuracy']:+.4f} | {pruned['params']:,} "
            f"({pruned['params'] / dense['params']:.0%}) | {pruned['macs']:,} "
            f"({pruned['macs'] / dense['macs']:.0%}) | {kept}/{total_channels} | {seconds:.0f} |"
        )
    lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
