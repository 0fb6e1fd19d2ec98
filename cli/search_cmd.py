"""`hwdnal search`: run DNAL's staged search into a run directory, with live progress."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer

from hwdnal.cli.remote_option import remote_option


def register(app: typer.Typer) -> None:
    app.command("search")(search)


def search(
    out: Path = typer.Option(..., "--out", help="Run directory (created; re-run to resume)."),
    model: str = typer.Option("resnet20", help="Model name, torchvision name or pkg.mod:factory."),
    data: str = typer.Option(
        "fashion-mnist", help="fashion-mnist, mnist, cifar10, imagefolder or synthetic."
    ),
    data_dir: str | None = typer.Option(None, help="Folder holding the dataset files."),
    input_size: int | None = typer.Option(None, help="Resize inputs to N×N."),
    epochs_weights: int = typer.Option(4, help="Epochs of the weight stage (gates off)."),
    epochs_arch: int = typer.Option(2, help="Epochs of the architecture stage (δ: 1 → 1e4)."),
    epochs_finetune: int = typer.Option(3, help="Epochs of finetuning the pruned network."),
    lambda_a: float = typer.Option(
        0.1, help="Weight λa of DNAL's sparsity term (its pressure grows with the steps)."
    ),
    batch_size: int = typer.Option(128, help="Batch size of every stage."),
    train_subset: int | None = typer.Option(None, help="Train on N examples only."),
    test_subset: int | None = typer.Option(None, help="Evaluate on N held-out examples only."),
    lr: float = typer.Option(0.1, help="Learning rate of the weight stage."),
    finetune_lr: float = typer.Option(0.02, help="Learning rate of finetuning."),
    arch_lr: float | None = typer.Option(
        None, help="Learning rate of the gate parameters [default: 0.05 with Adam, 0.2 with SGD]."
    ),
    arch_optimizer: str = typer.Option(
        "adam", help="Optimizer of the gate parameters: adam, shared-adam (one second moment "
        "for all gates: a gate pushed harder moves faster) or sgd (momentum 0.9)."
    ),
    arch_batchnorm: str = typer.Option(
        "running", help="BatchNorm in the architecture stage: running (the dense network's "
        "statistics, so the loss sees a group's width) or batch (batch statistics)."
    ),
    gate_init: float = typer.Option(
        3.0, help="Gate parameter s at the start of the architecture stage (3: all open)."
    ),
    arch_momentum: float = typer.Option(
        0.0, min=0.0, max=0.999, help="Adam's β1 for the gate parameters."
    ),
    latency_control: str = typer.Option(
        "switch", help="The latency weight: switch (10 over the budget, 0 under) or dual "
        "(dual ascent at --latency-rate)."
    ),
    latency_switch_on: str = typer.Option(
        "mask", help="What the switch judges against the budget: mask (the architecture of "
        "the open gates now) or soft (the soft gates' prediction, which lags it)."
    ),
    latency_gradient: str = typer.Option(
        "secant", help="The latency term's gradient: secant (a channel's average cost in the "
        "LUT) or local (the LUT's slope, flat at full width on CPUs)."
    ),
    seed: int = typer.Option(0, help="Seed of initialisation, subsets and batch order."),
    weights: str | None = typer.Option(
        None, help="Start from trained weights (a state dict, or a dict with 'model' or "
        "'state_dict'); skips the weight stage."
    ),
    trust_weights_pickle: bool = typer.Option(
        False, help="Also accept a --weights file holding a whole pickled module. Risk: "
        "loading it runs code from the file; only for files you trust."
    ),
    skip_bad_images: bool = typer.Option(
        False, help="imagefolder: leave out (and count) image files that cannot be read."
    ),
    device: str = typer.Option("cpu", help="Where to train: cpu, cuda or cuda:N."),
    target: str = typer.Option("cpu", help="Target to measure on: a name (hwdnal targets) "
                               "or a TOML file."),
    budget: str | None = typer.Option(
        None, help="Latency budget on the target: 20ms, 800us, 50% or 0.5x of the dense net."
    ),
    lut: str | None = typer.Option(None, help="Use this LUT instead of profiling first."),
    force_lut: bool = typer.Option(False, help="Accept a LUT measured on another target."),
    lut_tolerance: float = typer.Option(
        0.10, min=0.0, help="A reused LUT whose prediction for the dense network is off the "
        "device's measurement by more than this fraction is recalibrated (or re-profiled)."
    ),
    channel_step: int | None = typer.Option(
        None, help="Keep channel counts multiples of N (default: the target's preference)."
    ),
    latency_rate: float | None = typer.Option(
        None, help="Dual-ascent rate of the latency weight [default: 10 / the architecture "
        "stage's steps]."
    ),
    compile: bool = typer.Option(True, help="Measure the result on the target at the end."),
    remote: str | None = remote_option(),
    amp: str = typer.Option(
        "auto", help="Mixed precision of the forward passes: auto (bf16 on a GPU that has "
        "it, full precision on the CPU), bf16 or off."
    ),
    torch_compile: bool = typer.Option(
        False, help="Compile the training graphs with torch.compile (minutes to start, "
        "faster steps on a GPU)."
    ),
    distill: float = typer.Option(
        0.0, help="Finetune from the dense network's softened logits too, with this share "
        "α in [0, 1] (knowledge distillation; 0: from the labels alone)."
    ),
    distill_temperature: float = typer.Option(
        4.0, help="Temperature T of the distillation's softened logits."
    ),
    sync_batchnorm: bool = typer.Option(
        False, help="Under torchrun on GPUs: BatchNorm statistics over the global batch "
        "(for small per-GPU batches)."
    ),
    candidates: str | None = typer.Option(
        None, help="Supernets only: the candidate blocks of every searchable layer as "
        "kernel x expansion pairs, e.g. 3x3,3x6,5x6 (default: k3/5/7 x e3/6)."
    ),
) -> None:
    """Learn which channels to keep with DNAL, prune them physically and finetune.

    Data-parallel on several GPUs or processes: torchrun --nproc-per-node N --no-python
    hwdnal search ... (--batch-size is then the global batch; rank 0 measures and writes).
    """
    from hwdnal.cli.progress import print_summary, search_observer
    from hwdnal.distributed import Cluster
    from hwdnal.interrupt import GracefulStop
    from hwdnal.search import DnalSearch, SearchConfig, SearchObserver

    config = SearchConfig(
        model=model, data=data, data_dir=data_dir, input_size=input_size,
        train_subset=train_subset, test_subset=test_subset, skip_bad_images=skip_bad_images,
        epochs_weights=epochs_weights, epochs_arch=epochs_arch, epochs_finetune=epochs_finetune,
        batch_size=batch_size, lr=lr, finetune_lr=finetune_lr, arch_lr=arch_lr,
        arch_optimizer=arch_optimizer, arch_batchnorm=arch_batchnorm, gate_init=gate_init,
        arch_momentum=arch_momentum, latency_control=latency_control,
        latency_switch_on=latency_switch_on, latency_gradient=latency_gradient,
        lambda_a=lambda_a, seed=seed, weights=weights,
        trust_weights_pickle=trust_weights_pickle, device=device, target=target, budget=budget,
        lut=lut, force_lut=force_lut, channel_step=channel_step, latency_rate=latency_rate,
        compile=compile, remote=remote, lut_tolerance=lut_tolerance, amp=amp,
        torch_compile=torch_compile, sync_batchnorm=sync_batchnorm, distill=distill,
        distill_temperature=distill_temperature, candidates=candidates,
    )
    check_options(config)
    if candidates is not None:
        from hwdnal.models import parse_candidates_for

        parse_candidates_for(model, candidates)  # a malformed list fails before any work
    _check_device(device)
    if budget is not None:
        from hwdnal.budget import parse_budget

        parse_budget(budget)  # a malformed budget fails before any work
    cluster = Cluster.from_environment(device)
    try:
        if not cluster.is_main:  # rank 0 draws the progress and prints the summary
            with GracefulStop() as stop:
                DnalSearch(config, out, SearchObserver(), stop, cluster).run()
            return
        with GracefulStop() as stop, search_observer() as observer:
            result: dict[str, Any] = DnalSearch(config, out, observer, stop, cluster).run()
    finally:
        cluster.close()
    print_summary(result, out)


#: numeric options: (flag, smallest value, whether the smallest is allowed); None is unset
_LIMITS = {
    "input_size": ("--input-size", 1, True),
    "train_subset": ("--train-subset", 1, True),
    "test_subset": ("--test-subset", 1, True),
    "epochs_weights": ("--epochs-weights", 0, True),
    "epochs_arch": ("--epochs-arch", 1, True),
    "epochs_finetune": ("--epochs-finetune", 0, True),
    "batch_size": ("--batch-size", 1, True),
    "lr": ("--lr", 0, False),
    "finetune_lr": ("--finetune-lr", 0, False),
    "arch_lr": ("--arch-lr", 0, False),
    "lambda_a": ("--lambda-a", 0, True),
    "channel_step": ("--channel-step", 1, True),
    "latency_rate": ("--latency-rate", 0, True),
    "distill": ("--distill", 0, True),
    "distill_temperature": ("--distill-temperature", 0, False),
}


def check_options(config: Any) -> None:
    """Every numeric option in range (one line naming it), before anything is touched."""
    for name, (flag, minimum, inclusive) in _LIMITS.items():
        value = getattr(config, name, None)
        if value is not None:
            check_number(flag, value, minimum, inclusive)
    from hwdnal.errors import UserError

    if getattr(config, "distill", 0) > 1:
        raise UserError(f"--distill is a share between 0 and 1, got {config.distill}")
    gate_optimizers = ("adam", "shared-adam", "sgd")
    for flag, name, allowed in (("--arch-optimizer", "arch_optimizer", gate_optimizers),
                                ("--arch-batchnorm", "arch_batchnorm", ("running", "batch")),
                                ("--latency-control", "latency_control", ("switch", "dual")),
                                ("--latency-switch-on", "latency_switch_on", ("mask", "soft")),
                                ("--latency-gradient", "latency_gradient",
                                 ("secant", "local"))):
        value = getattr(config, name, allowed[0])
        if value not in allowed:
            raise UserError(f"{flag} must be {' or '.join(allowed)}, got '{value}'")
    if not math.isfinite(getattr(config, "gate_init", 0.0)):
        raise UserError(f"--gate-init must be a finite number, got {config.gate_init}")


def check_number(flag: str, value: float, minimum: float, inclusive: bool = True) -> None:
    """Refuse ``value`` below ``minimum`` (or equal to it when not ``inclusive``) or not finite."""
    from hwdnal.errors import UserError

    ok = math.isfinite(value) and (value >= minimum if inclusive else value > minimum)
    if not ok:
        bound = f"at least {minimum}" if inclusive else f"greater than {minimum}"
        raise UserError(f"{flag} must be {bound}, got {value}")


def _check_device(device: str) -> None:
    import torch

    from hwdnal.errors import UserError

    if device == "cpu":
        return
    if not device.startswith("cuda"):
        raise UserError(f"--device {device} is not supported: use cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for, but torch sees no CUDA GPU here: "
                        "use --device cpu")
