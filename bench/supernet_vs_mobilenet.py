"""DNAL on the ProxylessNAS supernet against MobileNetV2 at the same measured latency.

1. ``mobilenet_v2_cifar`` is trained (the engine's loop) for as many epochs as the supernet
   search spends in all its stages, and measured on the target: its latency is the budget.
2. ``hwdnal search --model proxyless_supernet_cifar --budget <that latency>ms`` runs as a
   user would run it (the CLI, in a subprocess): profile, weights, architecture, fit by
   measuring, prune, finetune, compile.
3. Both final networks are measured on the target, alone in alternating calls and once
   interleaved, and evaluated on the same test images; docs/supernets.md is written from
   the numbers (none typed by hand).

Run it alone on the machine (it measures latency):

    python bench/supernet_vs_mobilenet.py --train-subset 4000 --epochs-weights 3 \\
        --epochs-arch 2 --epochs-finetune 3
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hwdnal.budget.measure import MEASUREMENT_CALLS, final_latency
from hwdnal.budget.reach import measure_together
from hwdnal.budget.target import TargetLatency
from hwdnal.complexity import params_and_macs
from hwdnal.devices import open_measurer
from hwdnal.models import create_model
from hwdnal.search import DnalSearch, SearchConfig
from hwdnal.targets import load_target
from hwdnal.train import evaluate


def step_cost(name: str, batch: int, repeats: int = 3) -> tuple[float, float]:
    """Median seconds of one training step (forward, backward, SGD) on this CPU, and the
    process's peak resident memory afterwards (GiB)."""
    import resource

    from gate_overhead import step_time

    torch.manual_seed(0)
    x = torch.randn(batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    net = create_model(name, 10, 1).to(memory_format=torch.channels_last)
    step_time(net, list(net.parameters()), x, y, 1)
    seconds = statistics.median(step_time(net, list(net.parameters()), x, y, repeats))
    return seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="cpu")
    parser.add_argument("--train-subset", type=int, default=4000)
    parser.add_argument("--test-subset", type=int, default=None)
    parser.add_argument("--epochs-weights", type=int, default=3)
    parser.add_argument("--epochs-arch", type=int, default=2)
    parser.add_argument("--epochs-finetune", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64,
                        help="the supernet's activations at 128 need about 14 GiB of memory")
    parser.add_argument("--runs", type=Path, default=Path("runs/supernet"))
    parser.add_argument("--out", type=Path, default=Path("docs/supernets.md"))
    parser.add_argument("--recheck", type=int, metavar="ROUNDS",
                        help="measure the two final networks of --runs again, ROUNDS "
                             "interleaved calls, and append the figures to --out")
    args = parser.parse_args(argv)
    if args.recheck:
        return recheck(args)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    started = time.perf_counter()
    target = load_target(args.target)
    device = open_measurer(target)
    shape = (target.batch, 1, 28, 28)
    load_before = os.getloadavg()[0]

    costs = {name: step_cost(name, args.batch_size) for name in ("mobilenet_v2_cifar",
                                                                 "proxyless_supernet_cifar")}
    print(f"training step (batch {args.batch_size}): {costs}", flush=True)

    # 1. the baseline, trained as long as the whole search, and its latency: the budget
    total = args.epochs_weights + args.epochs_arch + args.epochs_finetune
    baseline_started = time.perf_counter()
    baseline = DnalSearch(SearchConfig(
        model="mobilenet_v2_cifar", data="fashion-mnist", train_subset=args.train_subset,
        test_subset=args.test_subset, epochs_weights=total, epochs_arch=0, epochs_finetune=0,
        seed=args.seed, batch_size=args.batch_size, target=args.target, compile=False),
        args.runs / "mobilenet").run()
    baseline_seconds = time.perf_counter() - baseline_started
    mobilenet = torch.load(args.runs / "mobilenet" / "dense.pt", weights_only=False).eval()
    # measured alone, one network at a time, as a deployed network runs (three calls, the
    # median); interleaved figures are printed beside them (bursts of at least 20 ms, which
    # measure two small networks as alone: docs/design.md, *Measurement noise*)
    alone = [measure_together(device, [mobilenet], shape)[0].median_ms for _ in range(3)]
    budget_ms = statistics.median(alone)
    print(f"mobilenet_v2_cifar: {baseline['dense']['accuracy']:.2%}, {budget_ms:.4f} ms",
          flush=True)

    # 2. the search, as a user runs it
    search_out = args.runs / "search"
    command = ["hwdnal", "search", "--model", "proxyless_supernet_cifar", "--data",
               "fashion-mnist", "--target", args.target, "--budget", f"{budget_ms:.4f}ms",
               "--train-subset", str(args.train_subset), "--epochs-weights",
               str(args.epochs_weights), "--epochs-arch", str(args.epochs_arch),
               "--epochs-finetune", str(args.epochs_finetune), "--seed", str(args.seed),
               "--batch-size", str(args.batch_size),
               "--out", str(search_out)]
    if args.test_subset:
        command += ["--test-subset", str(args.test_subset)]
    search_started = time.perf_counter()
    executable = Path(sys.executable).parent / "hwdnal"  # the CLI beside this interpreter
    subprocess.run([str(executable), *command[1:]], check=True)
    search_seconds = time.perf_counter() - search_started
    result = json.loads((search_out / "result.json").read_text())

    # 3. both final networks, alone in alternating calls (the median of three) and once
    #    interleaved, on the same test images
    chosen = torch.load(search_out / "pruned.pt", weights_only=False).eval()
    calls = [[measure_together(device, [net], shape)[0] for net in (mobilenet, chosen)]
             for _ in range(3)]
    measured = [sorted((c[k] for c in calls), key=lambda m: m.median_ms)[1] for k in range(2)]
    interleaved = measure_together(device, [mobilenet, chosen], shape)
    from hwdnal.data import load_data

    data = load_data("fashion-mnist", None, None, args.train_subset, args.test_subset,
                     args.seed)
    example = torch.randn(shape)
    rows = {
        "mobilenet_v2_cifar": {"accuracy": evaluate(mobilenet, data),
                               "latency_ms": measured[0].median_ms,
                               "size": params_and_macs(mobilenet, example)},
        "proxyless_supernet_cifar, searched": {"accuracy": evaluate(chosen, data),
                                               "latency_ms": measured[1].median_ms,
                                               "size": params_and_macs(chosen, example)},
    }
    supernet_size = params_and_macs(create_model("proxyless_supernet_cifar", 10, 1).eval(),
                                    example)
    write_doc(args, command, result, rows, costs, budget_ms, baseline_seconds,
              search_seconds, supernet_size, load_before,
              time.perf_counter() - started,
              [m.median_ms for m in interleaved])
    print(f"wrote {args.out}", flush=True)
    return 0


def recheck(args: argparse.Namespace) -> int:
    """The final networks measured again side by side, several times: is the budget met
    on repeated measurement, or only on the search's own?"""
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    device = open_measurer(load_target(args.target))
    mobilenet = torch.load(args.runs / "mobilenet" / "dense.pt", weights_only=False).eval()
    chosen = torch.load(args.runs / "search" / "pruned.pt", weights_only=False).eval()
    result = json.loads((args.runs / "search" / "result.json").read_text())
    load = os.getloadavg()[0]
    shape = (1, 1, 28, 28)
    dense = torch.load(args.runs / "search" / "dense.pt", weights_only=False).eval()
    # the search's own verdict taken again: the searched network interleaved with its dense
    # supernet in MEASUREMENT_CALLS calls, their median against the budget
    as_searched = TargetLatency(target=device.target, measurer=device, input_shape=shape,
                                channel_step=1, dense_ms=None)
    rounds, verdicts = [], []
    for _ in range(args.recheck):  # interleaved (the search's way), then each alone
        together = measure_together(device, [mobilenet, chosen], shape)
        alone = [measure_together(device, [net], shape)[0] for net in (mobilenet, chosen)]
        rounds.append((together, alone))
        verdicts.append(final_latency(dense, chosen, as_searched))
    lines = ["", "## Measured again", "",
             f"`python bench/supernet_vs_mobilenet.py --recheck {args.recheck}` "
             f"({datetime.now():%Y-%m-%d %H:%M}, load average before {load:.2f}): the two "
             f"final networks, {args.recheck} calls that time them interleaved (in bursts, "
             "as the search measures), each followed by one call per network "
             "alone (how a deployed network runs: one network, back to back).", "",
             "| call | mobilenet_v2_cifar (ms) | searched supernet (ms) | searched / mobilenet "
             "| alone: mobilenet (ms) | alone: searched (ms) | alone: ratio |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    ratios, alone_ratios = [], []
    for k, ((m, s), (m1, s1)) in enumerate(rounds, 1):
        ratios.append(s.median_ms / m.median_ms)
        alone_ratios.append(s1.median_ms / m1.median_ms)
        lines.append(f"| {k} | {m.median_ms:.4f} | {s.median_ms:.4f} | {ratios[-1]:.3f} | "
                     f"{m1.median_ms:.4f} | {s1.median_ms:.4f} | {alone_ratios[-1]:.3f} |")
    budget = result["budget_ms"]
    lines += ["", f"The search's own verdict taken again {args.recheck} times (the searched "
              f"network interleaved with the dense supernet in {MEASUREMENT_CALLS} calls, "
              f"the median against the budget {budget:.4f} ms, as `hwdnal search` judges "
              "it):", "",
              "| repeat | calls (ms) | median (ms) | within the budget |",
              "| ---: | --- | ---: | :---: |"]
    for k, (_, pruned_ms, calls) in enumerate(verdicts, 1):
        lines.append(f"| {k} | {', '.join(f'{c:.4f}' for _, c in calls)} | "
                     f"{pruned_ms.median_ms:.4f} | "
                     f"{'yes' if pruned_ms.median_ms <= budget else '**no**'} |")
    single = [c for _, _, calls in verdicts for _, c in calls]
    lines += ["", f"Met in {sum(v[1].median_ms <= budget for v in verdicts)} of "
              f"{len(verdicts)} verdicts; {sum(c > budget for c in single)} of {len(single)} "
              "single calls were over the budget."]
    compiled = result["compiled"][result["target"]["name"]]
    median, median_alone = statistics.median(ratios), statistics.median(alone_ratios)
    if median <= 1.0 and median_alone <= 1.0:
        verdict = "On repeated measurement the budget holds, interleaved and alone (medians)."
    elif median_alone <= 1.0:
        verdict = ("The budget holds where each network runs alone, as deployed, but not "
                   "interleaved with MobileNetV2: the searched network, with its parallel "
                   "branches, loses more to the caches the other network evicts between "
                   "bursts.")
    else:
        verdict = "**On repeated measurement the budget is not reliably met.**"
    lines += ["", f"Searched / MobileNetV2: median {median:.3f} interleaved (slower in "
              f"{sum(r > 1.0 for r in ratios)} of {len(ratios)} calls), {median_alone:.3f} "
              f"alone (slower in {sum(r > 1.0 for r in alone_ratios)} of "
              f"{len(alone_ratios)}). The search's own compile measurement gave "
              f"{compiled['median_ms']:.4f} ms median (p90 {compiled['p90_ms']:.4f} ms) "
              f"against the budget {result['budget_ms']:.4f} ms. " + verdict, ""]
    with args.out.open("a") as handle:
        handle.write("\n".join(lines))
    print("\n".join(lines))
    return 0


def write_doc(args: argparse.Namespace, command: list[str], result: dict, rows: dict,
              costs: dict[str, float], budget_ms: float, baseline_seconds: float,
              search_seconds: float, supernet_size: tuple[int, int], load_before: float,
              seconds: float, interleaved_ms: list[float]) -> None:
    from ledger import machine_line

    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
    stages = {s["name"]: s for s in result["stages"]}
    blocks = result["blocks"]
    dropped = sum(len(b["dropped"]) for b in blocks)
    removed = sum(1 for b in blocks if b["removed"])
    kept_candidates = sum(len(b["kept"]) for b in blocks)
    mob, sup = rows["mobilenet_v2_cifar"], rows["proxyless_supernet_cifar, searched"]
    gap = 100 * (sup["accuracy"] - mob["accuracy"])
    ratio = sup["latency_ms"] / mob["latency_ms"]
    images = args.train_subset or 60000
    steps = -(-images // args.batch_size)
    lut = result.get("lut_check") or {}
    lines = [
        "# DNAL on a stochastic supernet: ProxylessNAS blocks against MobileNetV2",
        "",
        "Generated by `bench/supernet_vs_mobilenet.py`; no figure here is typed by hand. "
        "Command:",
        "",
        "    python bench/supernet_vs_mobilenet.py " + " ".join(
            shlex.quote(a) for a in (sys.argv[1:])),
        "",
        f"- date {datetime.now():%Y-%m-%d %H:%M}, revision {revision}; machine: "
        f"{machine_line()}; wall time {seconds / 60:.0f} min; load average before "
        f"{load_before:.2f}",
        f"- target `{result['target']['name']}` (latency measured there, batch 1)",
        f"- **training scale: small.** {images} Fashion-MNIST training images (28×28), "
        f"test on {args.test_subset or 10000} images; the search spends "
        f"{args.epochs_weights} + {args.epochs_arch} + {args.epochs_finetune} epochs "
        "(weights, architecture, finetune), and MobileNetV2 is trained from scratch for "
        f"all {args.epochs_weights + args.epochs_arch + args.epochs_finetune} of them. Both "
        "networks are far from converged; the comparison says what the search delivers at "
        "this budget of training, not what it reaches at ImageNet scale.",
        "",
        "## How it was run",
        "",
        "MobileNetV2 (CIFAR layout) was trained and measured first; its measured latency is "
        "the supernet's absolute budget. Latencies here are measured one network at a time "
        "(the median of three calls), as a deployed network runs; interleaved figures "
        "stand beside them (see *Measured again*). The search is the CLI, exactly:",
        "",
        "    " + " ".join(shlex.quote(c) for c in command),
        "",
        f"The supernet: {len(blocks)} searchable layers, each with the six MBConv "
        "candidates k{3,5,7} × e{3,6} summed, plus the identity where the layer's input and "
        f"output shapes match ({sum(1 for b in blocks if b['residual'])} of the "
        f"{len(blocks)} layers). DNAL's gates sit on every candidate's expanded channels; a "
        "candidate whose channels all end at 0 is dropped, a residual layer whose candidates "
        "all end at 0 is removed.",
        "",
        "## Result",
        "",
        "| network | top-1 (%) | measured latency (ms) | parameters | MACs (M) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, row in rows.items():
        lines.append(f"| {name} | {100 * row['accuracy']:.2f} | {row['latency_ms']:.4f} | "
                     f"{row['size'][0]:,} | {row['size'][1] / 1e6:.1f} |")
    lines.append(f"| the whole supernet (before the search) | | | {supernet_size[0]:,} | "
                 f"{supernet_size[1] / 1e6:.1f} |")
    verdict = ("more accurate than" if gap > 0.2 else "less accurate than" if gap < -0.2
               else "as accurate as (within 0.2 pp)")
    pruned = result["pruned"]
    drift = result.get("device_drift")
    final_calls = pruned.get("latency_calls_ms") or []
    of_calls = (f" (the median of {len(final_calls)} calls: "
                f"{', '.join(f'{c:.4f}' for c in final_calls)} ms)" if len(final_calls) > 1
                else "")
    own = (f"the search's own final measurement: {pruned['latency_ms']:.4f} ms{of_calls} "
           f"against the budget {budget_ms:.4f} ms, "
           f"{'met' if result.get('budget_met') else 'NOT met'}")
    if drift is not None and abs(drift - 1) >= 0.01:
        own += (f"; the device then ran {100 * (drift - 1):+.0f}% against the search's start "
                "(the dense supernet measured alongside), so at the start's speed "
                f"{pruned['latency_ms'] / drift:.4f} ms, "
                f"{'met' if result.get('budget_met_at_start_speed') else 'NOT met'}")
    lines += [
        "",
        f"Measured alone, the searched network runs at {ratio:.0%} of MobileNetV2's "
        f"latency ({own}) and is **{verdict} MobileNetV2** ({gap:+.2f} pp top-1), from one "
        f"seed. Timed interleaved in one call, MobileNetV2 {interleaved_ms[0]:.4f} ms and "
        f"the searched network {interleaved_ms[1]:.4f} ms "
        f"({interleaved_ms[1] / interleaved_ms[0]:.0%}).",
        "",
        f"The search dropped {dropped} of {6 * len(blocks)} candidate blocks and removed "
        f"{removed} of {len(blocks)} layers; {kept_candidates} candidates survive, "
        f"{sum(1 for b in blocks if len(b['kept']) > 1)} layers keep several in parallel.",
        "",
        "| layer | residual | kept: candidate (expanded channels kept/of) | dropped |",
        "| --- | :---: | --- | --- |",
    ]
    for b in blocks:
        kept = ", ".join(f"{k['candidate']} ({k['channels']}/{k['of']})" for k in b["kept"])
        lines.append(f"| {b['layer']} | {'yes' if b['residual'] else 'no'} | "
                     f"{kept or '**removed**'} | {', '.join(b['dropped'])} |")
    lines += [
        "",
        "## Latency of parallel branches",
        "",
        "The LUT sums every layer of every surviving candidate: ONNX Runtime on the CPU runs "
        "a layer's branches one after the other, so their latencies add up. A candidate "
        "that vanishes takes its whole cost along (its layers' entries are multiplied by the "
        "candidate's block gate, 0 once every channel is off). The calibration sub-networks "
        "drop whole candidates as a search does, so the fitted scale and offset are those of "
        "networks with missing branches. The check against whole-network measurements:",
        "",
    ]
    for r in result["fit_rounds"]:
        calls = r.get("calls_ms") or [r["measured_ms"]]
        judged = (f"{' / '.join(f'{c:.4f}' for c in calls)} ms in {len(calls)} calls, "
                  "judged by the worst" if len(calls) > 1 else f"{r['measured_ms']:.4f} ms")
        lines.append(f"- fit round {r['round']}: predicted {r['predicted_ms']:.4f} ms, "
                     f"measured {judged} "
                     f"({100 * (r['predicted_ms'] / r['measured_ms'] - 1):+.1f}%), budget "
                     f"{r['budget_ms']:.4f} ms, "
                     f"{'within it' if r['measured_ms'] <= r['budget_ms'] else 'over it'}")
    if lut:
        lines.append(f"- the LUT's check of the dense supernet: {json.dumps(lut)}")
    if pruned.get("predicted_latency_ms") and pruned.get("latency_ms"):
        lines.append(f"- the final network: predicted {pruned['predicted_latency_ms']:.4f} ms, "
                     f"measured {pruned['latency_ms']:.4f} ms")
    lines += [
        "",
        "## What the weights stage costs",
        "",
        "Every candidate of every layer trains in the weights stage, so a step of the "
        "supernet costs what six MobileNetV2-sized blocks per layer cost:",
        "",
        f"| network | seconds per training step (batch {args.batch_size}, this CPU, 2 "
        "threads) | relative | peak memory of the process so far (GiB) |",
        "| --- | ---: | ---: | ---: |",
    ]
    base = costs["mobilenet_v2_cifar"][0]
    for name, (value, memory) in costs.items():
        lines.append(f"| {name} | {value:.2f} | {value / base:.1f}× | {memory:.1f} |")
    full_epoch = costs["proxyless_supernet_cifar"][0] * -(-60000 // args.batch_size)
    lines += [
        "",
        f"Here: {steps} steps per epoch; the whole search took {search_seconds / 60:.1f} min "
        f"(weights {stages['weights']['seconds'] / 60:.1f} min, architecture "
        f"{stages['architecture']['seconds'] / 60:.1f} min, fit to the budget and pruning "
        f"{stages['prune']['seconds'] / 60:.1f} min, finetune "
        f"{stages['finetune']['seconds'] / 60:.1f} min; profile and calibration included in "
        f"the total), MobileNetV2's training {baseline_seconds / 60:.1f} min. One epoch of "
        f"all 60 000 images would take the supernet about {full_epoch / 3600:.1f} h on this "
        "CPU: train it on an NVIDIA GPU (`--device cuda`, or torchrun on several) and keep "
        "the CPU for what it is the target of. At batch 128 the supernet's activations "
        "take about 14 GiB of memory on 28×28 images (every candidate keeps its own), hence "
        f"batch {args.batch_size} here.",
        "",
    ]
    args.out.write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
