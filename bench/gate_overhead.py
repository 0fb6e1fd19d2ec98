"""Per-step cost of DNAL's gates against plain training of the same model.

Measures one training step (forward, backward, SGD update) of a plain network, of the same
network with gates attached but off, and with soft gates (the architecture stage, weights
frozen), interleaved round by round so that machine noise hits all alike; reports medians.

    python bench/gate_overhead.py --model resnet20 --out docs/bench-gate-overhead.md
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import subprocess
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

from hwdnal.gating.gate import GateMode
from hwdnal.gating.model import GatedModel
from hwdnal.models import create_model


def step_time(model: torch.nn.Module, params: list[torch.nn.Parameter], x: torch.Tensor,
              y: torch.Tensor, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` SGD steps on one batch."""
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times


#: the three training steps a search takes, as the ledgers name them
CASES = ("plain", "gates off", "architecture stage")


def overhead_cases(plain: torch.nn.Module, example: torch.Tensor, names: tuple[str, ...] = CASES
                   ) -> dict[str, tuple[torch.nn.Module, list[torch.nn.Parameter]]]:
    """The plain network, the same with gates attached but off (the weight stage's cost of
    a hook), and with soft gates and frozen weights (the architecture stage: only s learns):
    each with the parameters its step updates."""
    off = GatedModel(copy.deepcopy(plain), example[:2])
    soft = GatedModel(copy.deepcopy(plain), example[:2])
    soft.set_mode(GateMode.SOFT)
    soft.set_delta(100.0)
    for p in soft.model.parameters():
        p.requires_grad_(False)
    steps = [(plain, list(plain.parameters())), (off, list(off.model.parameters())),
             (soft, [soft.gate.s])]
    return dict(zip(names, steps, strict=True))


def interleaved_steps(cases: dict[str, tuple[torch.nn.Module, list[torch.nn.Parameter]]],
                      x: torch.Tensor, y: torch.Tensor, rounds: int, warmup: int = 2
                      ) -> dict[str, list[float]]:
    """Step times of every case, two steps each round by round, so that the machine's noise
    hits all alike (after ``warmup`` steps each)."""
    for model, params in cases.values():
        step_time(model, params, x, y, warmup)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (model, params) in cases.items():
            samples[name] += step_time(model, params, x, y, 2)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--input-size", type=int, default=28)
    parser.add_argument("--in-channels", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("docs/bench-gate-overhead.md"))
    args = parser.parse_args()

    torch.manual_seed(0)
    shape = (args.batch_size, args.in_channels, args.input_size, args.input_size)
    x, y = torch.randn(*shape).contiguous(memory_format=torch.channels_last), torch.randint(
        0, 10, (args.batch_size,))
    plain = create_model(args.model, 10, args.in_channels).to(memory_format=torch.channels_last)
    cases = overhead_cases(plain, x, ("plain network (weight and finetune stages)",
                                      "gates attached, mode off",
                                      "soft gates, weights frozen (architecture stage)"))
    load_before = os.getloadavg()[0]
    samples = interleaved_steps(cases, x, y, args.rounds, warmup=3)

    load_after = os.getloadavg()[0]
    base = statistics.median(samples[next(iter(cases))])
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
    lines = [
        "# Per-step cost of DNAL's gates",
        "",
        f"Command: `python bench/gate_overhead.py --model {args.model} --input-size "
        f"{args.input_size} --in-channels {args.in_channels} --batch-size {args.batch_size} "
        f"--rounds {args.rounds}`",
        "",
        f"Date {date.today()}, revision {revision}, {platform.machine()} "
        f"{platform.processor() or ''}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}. One step = forward, backward, SGD update of a batch; the three "
        "cases are interleaved round by round; medians over "
        f"{2 * args.rounds} steps. Load average {load_before:.2f} before, {load_after:.2f} "
        "after (on 2 cores, anything above ~1 means another process competed: treat the "
        "figures as noise then).",
        "",
        "| case | median step (ms) | relative to plain |",
        "| --- | ---: | ---: |",
    ]
    for name, values in samples.items():
        median = statistics.median(values)
        lines.append(f"| {name} | {median * 1000:.1f} | {median / base:.3f} |")
    lines += [
        "",
        "The weight and finetune stages train the plain network: no hook is attached there.",
        "The architecture stage computes no weight gradients but still back-propagates",
        "through every layer to reach the gates.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
