"""Progress for the search: live bars under a terminal, plain lines otherwise; a final table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from hwdnal.cli.plain_log import PlainSearchObserver
from hwdnal.observer import SearchObserver
from hwdnal.report import removed_blocks_text

console = Console(stderr=True)


def live_display() -> bool:
    """Whether progress may redraw in place: stderr is a terminal (rich's own test, which
    also honours FORCE_COLOR and TTY_COMPATIBLE)."""
    return console.is_terminal


def search_observer() -> RichSearchObserver | PlainSearchObserver:
    """Live bars under a terminal; one plain line per event in a pipe, a CI log or nohup."""
    return RichSearchObserver() if live_display() else PlainSearchObserver()


def progress_bars(label: str, detail: str, on: Console) -> Progress:
    """hwdnal's live bars: a label, the bar, done/total, elapsed and remaining, a detail."""
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn(detail), console=on, transient=False)


class RichSearchObserver(SearchObserver):
    def __init__(self) -> None:
        self.progress = progress_bars("[bold]{task.fields[stage]:<12}[/] {task.description}",
                                      "{task.fields[metrics]}", console)
        self._task: Any = None
        self._stage = ""
        self._epochs = 0
        self._steps = 0
        self._epoch = 0
        self._step = 0
        self._profile_tasks: dict[str, Any] = {}

    def __enter__(self) -> RichSearchObserver:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def stage_started(
        self, stage: str, epochs: int, steps: int, first_epoch: int, first_step: int = 0
    ) -> None:
        self._stage, self._epochs, self._steps, self._epoch = stage, epochs, steps, first_epoch
        if stage == "prune":
            console.print("[bold]prune[/]        removing channels whose gate is 0")
            return
        if epochs == 0 or first_epoch >= epochs:
            return
        if first_epoch or first_step:
            console.print(f"[bold]{stage}[/] resuming at epoch {first_epoch + 1}/{epochs}, "
                          f"step {first_step + 1}/{steps}")
        self._new_bar()
        self._step = first_step

    def _new_bar(self) -> None:
        self._step = 0
        self._task = self.progress.add_task(
            f"epoch {self._epoch + 1}/{self._epochs}", total=self._steps,
            stage=self._stage, metrics="",
        )

    def step(self, stage: str, done: int, values: dict[str, float]) -> None:
        self._step = done
        if self._task is None:
            return
        shown = []
        for key in ("loss", "acc", "sparsity", "latency_ms", "delta", "kept"):
            if key in values:
                value = values[key]
                shown.append(f"{key} {value:.0f}" if key in ("kept", "delta") and value >= 10
                             else f"{key} {value:.3f}")
        self.progress.update(self._task, completed=self._step, metrics="  ".join(shown))

    def epoch_finished(self, stage: str, epoch: int, summary: dict[str, float]) -> None:
        if self._task is not None:
            self.progress.update(self._task, completed=self._steps)
        self._epoch = epoch + 1
        if self._epoch < self._epochs:
            self._new_bar()
        else:
            self._task = None

    def stage_finished(self, stage: str, seconds: float) -> None:
        console.print(f"[green]✓[/] {stage} finished in {seconds:.1f} s")

    def message(self, text: str) -> None:
        console.print(text)

    def profiling(self, done: int, total: int, what: str) -> None:
        """Latency profiling (before the search, when no LUT exists yet)."""
        stage = "profile" if what != "whole networks" else "calibrate"
        if self._profile_tasks.get(stage) is None:
            self._profile_tasks[stage] = self.progress.add_task(
                what[:30], total=max(total, 1), stage=stage, metrics="")
        self.progress.update(self._profile_tasks[stage], completed=done, total=max(total, 1),
                             description=what[:30])


def print_summary(result: dict[str, Any], out: Path) -> None:
    """Dense against pruned: accuracy, parameters, MACs (and latency once measured)."""
    table = Table(title=f"hwdnal search — {result['model']} on {result['data']}")
    table.add_column("")
    table.add_column("dense", justify="right")
    table.add_column("pruned", justify="right")
    table.add_column("ratio", justify="right")
    dense, pruned = result["dense"], result["pruned"]
    rows = [("top-1 accuracy", "accuracy", "{:.2%}"), ("parameters", "params", "{:,}"),
            ("MACs", "macs", "{:,}"), ("latency (ms)", "latency_ms", "{:.3f}")]
    for label, key, fmt in rows:
        if dense.get(key) is None or pruned.get(key) is None:
            continue
        ratio = pruned[key] / dense[key] if dense[key] else float("nan")
        ratio_text = f"{pruned[key] - dense[key]:+.2%}" if key == "accuracy" else f"{ratio:.2f}x"
        table.add_row(label, fmt.format(dense[key]), fmt.format(pruned[key]), ratio_text)
    kept = sum(g["kept"] for g in result["groups"])
    total = sum(g["total"] for g in result["groups"])
    out_console = Console() if live_display() else Console(width=200)
    out_console.print(table)
    out_console.print(f"channels kept {kept}/{total} in {len(result['groups'])} groups"
                      f"{removed_blocks_text(result)}; run directory {out} (result.json, "
                      "pruned.pt)")
