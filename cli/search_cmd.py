"""`hwdnal search`: run DNAL's staged search into a run directory, with live progress."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from hwdnal.cli.remote_option import remote_option
from hwdnal.config import SearchConfig

#: the CLI's defaults are the library's
DEFAULTS = SearchConfig()


def register(app: typer.Typer) -> None:
    app.command("search")(search)


def search(
    out: Path = typer.Option(..., "--out", help="Run directory (created; re-run to resume)."),
    model: str = typer.Option(
        DEFAULTS.model,
        help="Model name, torchvision name or pkg.mod:factory."
    ),
    data: str = typer.Option(
        DEFAULTS.data,
        help="fashion-mnist, mnist, cifar10, imagefolder or synthetic."
    ),
    data_dir: str | None = typer.Option(
        DEFAULTS.data_dir,
        help="Folder holding the dataset files."
    ),
    input_size: int | None = typer.Option(DEFAULTS.input_size, help="Resize inputs to N×N."),
    epochs_weights: int = typer.Option(
        DEFAULTS.epochs_weights,
        help="Epochs of the weight stage (gates off)."
    ),
    epochs_arch: int = typer.Option(
        DEFAULTS.epochs_arch,
        help="Epochs of the architecture stage (δ: 1 → 1e4)."
    ),
    epochs_finetune: int = typer.Option(
        DEFAULTS.epochs_finetune,
        help="Epochs of finetuning the pruned network."
    ),
    lambda_a: float = typer.Option(
        DEFAULTS.lambda_a,
        help="Weight λa of DNAL's sparsity term (its pressure grows with the steps)."
    ),
    batch_size: int = typer.Option(DEFAULTS.batch_size, help="Batch size of every stage."),
    train_subset: int | None = typer.Option(
        DEFAULTS.train_subset,
        help="Train on N examples only."
    ),
    test_subset: int | None = typer.Option(
        DEFAULTS.test_subset,
        help="Evaluate on N held-out examples only."
    ),
    lr: float = typer.Option(DEFAULTS.lr, help="Learning rate of the weight stage."),
    finetune_lr: float = typer.Option(DEFAULTS.finetune_lr, help="Learning rate of finetuning."),
    arch_lr: float | None = typer.Option(
        DEFAULTS.arch_lr,
        help="Learning rate of the gate parameters (default: with Adam, 3 x --gate-init over the "
        "stage's steps; 0.2 with SGD)."
    ),
    arch_optimizer: str = typer.Option(
        DEFAULTS.arch_optimizer,
        help="Optimizer of the gate parameters: adam, shared-adam (one second moment for all "
        "gates: a gate pushed harder moves faster) or sgd (momentum 0.9)."
    ),
    arch_batchnorm: str = typer.Option(
        DEFAULTS.arch_batchnorm,
        help="BatchNorm in the architecture stage: running (the dense network's statistics, so the"
        " loss sees a group's width) or batch (batch statistics)."
    ),
    gate_init: float = typer.Option(
        DEFAULTS.gate_init,
        help="Gate parameter s at the start of the architecture stage (3: all open)."
    ),
    arch_momentum: float = typer.Option(
        DEFAULTS.arch_momentum, min=0.0, max=0.999,
        help="Adam's β1 for the gate parameters."
    ),
    latency_control: str = typer.Option(
        DEFAULTS.latency_control,
        help="The latency weight: switch (10 over the budget, 0 under) or dual (dual ascent at "
        "--latency-rate)."
    ),
    latency_switch_on: str = typer.Option(
        DEFAULTS.latency_switch_on,
        help="What the switch judges against the budget: mask (the architecture of the open gates "
        "now) or soft (the soft gates' prediction, which lags it)."
    ),
    arch_ends_on: str = typer.Option(
        DEFAULTS.arch_ends_on,
        help="With a budget, the architecture the stage ends on: best (the late one nearest "
        "under the budget by the LUT) or last (the last step's)."
    ),
    latency_gradient: str = typer.Option(
        DEFAULTS.latency_gradient,
        help="The latency term's gradient: secant (a channel's average cost in the LUT) or local "
        "(the LUT's slope, flat at full width on CPUs)."
    ),
    seed: int = typer.Option(
        DEFAULTS.seed,
        help="Seed of initialisation, subsets and batch order."
    ),
    weights: str | None = typer.Option(
        DEFAULTS.weights,
        help="Start from trained weights (a state dict, or a dict with 'model' or 'state_dict'); "
        "skips the weight stage."
    ),
    trust_weights_pickle: bool = typer.Option(
        DEFAULTS.trust_weights_pickle,
        help="Also accept a --weights file holding a whole pickled module. Risk: loading it runs "
        "code from the file; only for files you trust."
    ),
    skip_bad_images: bool = typer.Option(
        DEFAULTS.skip_bad_images,
        help="imagefolder: leave out (and count) image files that cannot be read."
    ),
    device: str = typer.Option(DEFAULTS.device, help="Where to train: cpu, cuda or cuda:N."),
    target: str = typer.Option(
        DEFAULTS.target,
        help="Target to measure on: a name (hwdnal targets) or a TOML file."
    ),
    budget: str | None = typer.Option(
        DEFAULTS.budget,
        help="Latency budget on the target: 20ms, 800us, 50% or 0.5x of the dense net."
    ),
    lut: str | None = typer.Option(DEFAULTS.lut, help="Use this LUT instead of profiling first."),
    force_lut: bool = typer.Option(
        DEFAULTS.force_lut,
        help="Accept a LUT measured on another target."
    ),
    lut_tolerance: float = typer.Option(
        DEFAULTS.lut_tolerance, min=0.0,
        help="A reused LUT whose prediction for the dense network is off the device's measurement "
        "by more than this fraction is recalibrated (or re-profiled)."
    ),
    channel_step: int | None = typer.Option(
        DEFAULTS.channel_step,
        help="Keep channel counts multiples of N (default: the target's preference)."
    ),
    latency_rate: float | None = typer.Option(
        DEFAULTS.latency_rate,
        help="Dual-ascent rate of the latency weight (default: 10 / the architecture stage's "
        "steps)."
    ),
    compile: bool = typer.Option(
        DEFAULTS.compile,
        help="Measure the result on the target at the end."
    ),
    remote: str | None = remote_option(),
    amp: str = typer.Option(
        DEFAULTS.amp,
        help="Mixed precision of the forward passes: auto (bf16 on a GPU that has it, full "
        "precision on the CPU), bf16 or off."
    ),
    torch_compile: bool = typer.Option(
        DEFAULTS.torch_compile,
        help="Compile the training graphs with torch.compile (minutes to start, faster steps on a "
        "GPU)."
    ),
    distill: float = typer.Option(
        DEFAULTS.distill,
        help="Finetune from the dense network's softened logits too, with this share α in [0, 1] "
        "(knowledge distillation; 0: from the labels alone)."
    ),
    distill_temperature: float = typer.Option(
        DEFAULTS.distill_temperature,
        help="Temperature T of the distillation's softened logits."
    ),
    sync_batchnorm: bool = typer.Option(
        DEFAULTS.sync_batchnorm,
        help="Under torchrun on GPUs: BatchNorm statistics over the global batch (for small "
        "per-GPU batches)."
    ),
    candidates: str | None = typer.Option(
        DEFAULTS.candidates,
        help="Supernets only: the candidate blocks of every searchable layer as kernel x expansion"
        " pairs, e.g. 3x3,3x6,5x6 (default: k3/5/7 x e3/6)."
    ),
) -> None:
    """Learn which channels to keep with DNAL, prune them physically and finetune.

    Data-parallel on several GPUs or processes: torchrun --nproc-per-node N --no-python
    hwdnal search ... (--batch-size is then the global batch; rank 0 measures and writes).
    """
    from hwdnal.cli.progress import print_summary, search_observer
    from hwdnal.distributed import Cluster
    from hwdnal.interrupt import GracefulStop
    from hwdnal.search import DnalSearch, SearchObserver

    config = SearchConfig(
        model=model, data=data, data_dir=data_dir, input_size=input_size,
        train_subset=train_subset, test_subset=test_subset, skip_bad_images=skip_bad_images,
        epochs_weights=epochs_weights, epochs_arch=epochs_arch, epochs_finetune=epochs_finetune,
        batch_size=batch_size, lr=lr, finetune_lr=finetune_lr, arch_lr=arch_lr,
        arch_optimizer=arch_optimizer, arch_batchnorm=arch_batchnorm, gate_init=gate_init,
        arch_momentum=arch_momentum, latency_control=latency_control,
        latency_switch_on=latency_switch_on, arch_ends_on=arch_ends_on,
        latency_gradient=latency_gradient,
        lambda_a=lambda_a, seed=seed, weights=weights,
        trust_weights_pickle=trust_weights_pickle, device=device, target=target, budget=budget,
        lut=lut, force_lut=force_lut, channel_step=channel_step, latency_rate=latency_rate,
        compile=compile, remote=remote, lut_tolerance=lut_tolerance, amp=amp,
        torch_compile=torch_compile, sync_batchnorm=sync_batchnorm, distill=distill,
        distill_temperature=distill_temperature, candidates=candidates,
    )
    config.validate()  # a malformed option fails before any work
    _check_device(device)
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
