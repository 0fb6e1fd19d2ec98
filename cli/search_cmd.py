"""`hwdnal search`: run DNAL's staged search into a run directory, with live progress."""

from __future__ import annotations

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
    arch_lr: float = typer.Option(0.2, help="Learning rate of the gate parameters."),
    seed: int = typer.Option(0, help="Seed of initialisation, subsets and batch order."),
    weights: str | None = typer.Option(
        None, help="Start from trained weights; skips the weight stage."
    ),
    device: str = typer.Option("cpu", help="Where to train: cpu, cuda or cuda:N."),
    target: str = typer.Option("cpu", help="Target to measure on: a name (hwdnal targets) "
                               "or a TOML file."),
    budget: str | None = typer.Option(
        None, help="Latency budget on the target: 20ms, 800us, 50% or 0.5x of the dense net."
    ),
    lut: str | None = typer.Option(None, help="Use this LUT instead of profiling first."),
    force_lut: bool = typer.Option(False, help="Accept a LUT measured on another target."),
    channel_step: int | None = typer.Option(
        None, help="Keep channel counts multiples of N (default: the target's preference)."
    ),
    latency_rate: float = typer.Option(0.05, help="Dual-ascent rate of the latency weight."),
    compile: bool = typer.Option(True, help="Measure the result on the target at the end."),
    remote: str | None = remote_option(),
) -> None:
    """Learn which channels to keep with DNAL, prune them physically and finetune."""
    from hwdnal.cli.progress import RichSearchObserver, print_summary
    from hwdnal.interrupt import GracefulStop
    from hwdnal.search import DnalSearch, SearchConfig

    config = SearchConfig(
        model=model, data=data, data_dir=data_dir, input_size=input_size,
        train_subset=train_subset, test_subset=test_subset, epochs_weights=epochs_weights,
        epochs_arch=epochs_arch, epochs_finetune=epochs_finetune, batch_size=batch_size,
        lr=lr, finetune_lr=finetune_lr, arch_lr=arch_lr, lambda_a=lambda_a, seed=seed,
        weights=weights, device=device, target=target, budget=budget, lut=lut,
        force_lut=force_lut, channel_step=channel_step, latency_rate=latency_rate,
        compile=compile, remote=remote,
    )
    _check_positive(epochs_weights=epochs_weights, epochs_arch=epochs_arch,
                    epochs_finetune=epochs_finetune, batch_size=batch_size)
    _check_device(device)
    if budget is not None:
        from hwdnal.budget import parse_budget

        parse_budget(budget)  # a malformed budget fails before any work
    with GracefulStop() as stop, RichSearchObserver() as observer:
        result: dict[str, Any] = DnalSearch(config, out, observer, stop).run()
    print_summary(result, out)


def _check_positive(**values: int) -> None:
    from hwdnal.errors import UserError

    for name, value in values.items():
        minimum = 1 if name in ("batch_size", "epochs_arch") else 0
        if value < minimum:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} must be at least {minimum}, got {value}")


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
