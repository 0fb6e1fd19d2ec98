"""Training speed of the weight stage against a plain PyTorch loop, measured in one run.

Both loops train the same model with the same batch, SGD (momentum, Nesterov, weight decay,
cosine schedule), mixed-precision setting, channels-last layout and data placement (on a GPU
the uint8 images live on the GPU, cut, normalised, flipped and cropped there), epoch by
epoch in turns so that machine noise hits both alike. The reference is the loop an engineer
writes by hand; hwdnal's is :func:`hwdnal.train.train_epoch`, as the search calls it (with
its progress callback reading values a few times a second). Goal: hwdnal ≤ 1.1× the
reference's epoch time.

    python bench/train_speed.py --device cpu --train-subset 12000 --out docs/train-speed.md
    python bench/train_speed.py --device cuda --out docs/train-speed.md --append
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

from hwdnal.data import DataSpec, load_data, steps_per_epoch
from hwdnal.models import create_model
from hwdnal.train import StepValues, TrainSettings, make_optimizer, train_epoch

PAD = 2


def _optimizer(model: torch.nn.Module, steps: int) -> tuple[torch.optim.Optimizer,
                                                            torch.optim.lr_scheduler.LRScheduler]:
    return make_optimizer(model.parameters(), 0.1, 5e-4, steps)


def reference_epoch(model: torch.nn.Module, data: DataSpec, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, batch_size: int,
                    seed: int, amp: torch.dtype | None, channels_last: bool) -> float:
    """The plain loop: index, normalise, flip and crop, forward, backward, step."""
    images, labels = data.train.images, data.train.labels
    device = images.device
    mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1) * 255
    std = torch.tensor(data.std, device=device).view(1, -1, 1, 1) * 255
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator).to(device)
    total = torch.zeros((), device=device)
    for start in range(0, len(order) - batch_size + 1, batch_size):
        index = order[start : start + batch_size]
        x = (images[index].float() - mean) / std
        flips = (torch.rand(batch_size, generator=generator) < 0.5).to(device, non_blocking=True)
        x = torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)
        dx, dy = torch.randint(0, 2 * PAD + 1, (2,), generator=generator).tolist()
        size = x.shape[-1]
        x = F.pad(x, (PAD,) * 4)[..., dy : dy + size, dx : dx + size]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.detach()
    return float(total)


def hwdnal_epoch(model: torch.nn.Module, data: DataSpec, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, batch_size: int, seed: int,
                 amp: torch.dtype | None, channels_last: bool) -> float:
    """The search's weight-stage epoch, progress reads included (as the CLI refreshes)."""
    last = [0.0]

    def on_step(_step: int, values: StepValues) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.25:
            last[0] = now
            values.read()

    stats = train_epoch(model, data, optimizer, batch_size, seed, scheduler=scheduler,
                        on_step=on_step,
                        settings=TrainSettings(channels_last=channels_last, amp=amp))
    return stats.loss


def _timed(run: Callable[..., float], arguments: tuple, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run(*arguments)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def _revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--rounds", type=int, default=3, help="epochs of each loop, in turns")
    parser.add_argument("--out", type=Path, default=Path("docs/train-speed.md"))
    parser.add_argument("--append", action="store_true",
                        help="add this device's section to --out instead of rewriting it")
    args = parser.parse_args()

    device = torch.device(args.device)
    amp = None
    if args.amp == "bf16" or (args.amp == "auto" and device.type == "cuda"
                              and torch.cuda.is_bf16_supported()):
        amp = torch.bfloat16
    channels_last = not args.no_channels_last
    data = load_data(args.data, train_subset=args.train_subset).to_device(device)
    steps = steps_per_epoch(data, args.batch_size)
    samples = steps * args.batch_size
    torch.manual_seed(0)
    base = create_model(args.model, data.num_classes, data.in_channels)
    if channels_last:
        base = base.to(memory_format=torch.channels_last)
    loops = {"reference": reference_epoch, "hwdnal": hwdnal_epoch}
    state = {}
    for name in loops:
        model = copy.deepcopy(base).to(device).train()
        state[name] = (model, *_optimizer(model, steps * (args.rounds + 1)))
    times: dict[str, list[float]] = {name: [] for name in loops}
    started = time.perf_counter()
    for round_number in range(args.rounds + 1):  # round 0 warms up (allocator, kernels)
        order = list(loops) if round_number % 2 == 0 else list(reversed(loops))
        for name in order:
            model, optimizer, scheduler = state[name]
            seconds = _timed(loops[name], (model, data, optimizer, scheduler, args.batch_size,
                                           round_number, amp, channels_last), device)
            if round_number:
                times[name].append(seconds)
            print(f"round {round_number} {name}: {seconds:.2f} s "
                  f"({samples / seconds:,.0f} samples/s)", flush=True)
    wall = time.perf_counter() - started
    median = {name: statistics.median(values) for name, values in times.items()}
    ratio = median["hwdnal"] / median["reference"]
    command = "python bench/train_speed.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" if not isinstance(v, bool) else f"--{k.replace('_', '-')}"
        for k, v in vars(args).items() if v not in (None, False) and k != "append"
        and not (k == "out" and str(v) == "docs/train-speed.md"))
    section = "\n".join([
        f"## {args.model} on {args.data}, {device.type}: {_device_name(device)}",
        "",
        f"Command: `{command}`",
        "",
        f"Date {date.today()}, revision {_revision()}, torch {torch.__version__}; "
        f"{samples:,} images per epoch, batch {args.batch_size}, "
        f"precision {'bf16 autocast' if amp else 'fp32'}, "
        f"{'channels-last' if channels_last else 'contiguous'}, data on {device.type}; "
        f"{args.rounds} timed epochs of each loop after one warm-up, in turns; "
        f"total {wall / 60:.1f} min.",
        "",
        "| loop | median epoch (s) | samples/s | each epoch (s) |",
        "| --- | ---: | ---: | --- |",
        *(f"| {name} | {median[name]:.2f} | {samples / median[name]:,.0f} | "
          f"{', '.join(f'{t:.2f}' for t in times[name])} |" for name in loops),
        "",
        f"hwdnal / reference: **{ratio:.3f}×** (goal ≤ 1.1×: "
        f"{'met' if ratio <= 1.1 else 'NOT met'}).",
        "",
    ])
    print(section)
    header = ("# Training speed: hwdnal's weight stage against a plain PyTorch loop\n\n"
              "Written by `bench/train_speed.py` (see its docstring for what each loop does). "
              "Each section is one run on one machine; compare ratios within a section.\n\n")
    if args.append and args.out.exists():
        args.out.write_text(args.out.read_text().rstrip() + "\n\n" + section)
    else:
        args.out.write_text(header + section)


if __name__ == "__main__":
    main()
