"""Progress as plain lines, for pipes, CI logs and nohup: one full line per event, in order.

Under a terminal the live bars of :mod:`hwdnal.cli.progress` redraw in place; written to a
pipe, rich would hold that display until the end and cut it to 80 columns. Here every
event (a stage starting, an epoch's summary, a fit round, a stage finishing) is one line,
written and flushed when it happens, never wrapped or shortened.
"""

from __future__ import annotations

import re
import sys
import time
from typing import TextIO

from hwdnal.observer import SearchObserver

_MARKUP = re.compile(r"\[/?[a-z ]*\]")  # rich's [bold]…[/] in the library's messages


def plain(text: str) -> str:
    """``text`` without rich markup."""
    return _MARKUP.sub("", text)


def metrics_text(values: dict[str, float]) -> str:
    shown = []
    for key, value in values.items():
        if key == "epoch" or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        shown.append(f"{key} {value:.0f}" if key in ("kept", "delta") and value >= 10
                     else f"{key} {value:.4g}")
    return "  ".join(shown)


class PlainLog:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr

    def line(self, text: str) -> None:
        self.stream.write(plain(text).rstrip("\n") + "\n")
        self.stream.flush()


class CountLines:
    """A long count (a profile's layer grid) as a line at each tenth, not at every batch."""

    def __init__(self, log: PlainLog, label: str) -> None:
        self.log, self.label = log, label
        self.shown = -1
        self.total = 0

    def update(self, done: int, total: int, what: str = "") -> None:
        tenth = 10 * done // max(total, 1)
        if total != self.total:
            self.total, self.shown = total, -1
        if tenth > self.shown or done >= total:
            if done >= total and self.shown == 10:
                return
            self.shown = 10 if done >= total else tenth
            detail = f" ({what})" if what and what not in self.label else ""
            self.log.line(f"{self.label}: {done}/{total}{detail}")


class PlainSearchObserver(SearchObserver):
    def __init__(self, log: PlainLog | None = None) -> None:
        self.log = log or PlainLog()
        self._epochs: dict[str, int] = {}
        self._epoch_started = time.monotonic()
        self._counts: dict[str, CountLines] = {}

    def __enter__(self) -> PlainSearchObserver:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def stage_started(
        self, stage: str, epochs: int, steps: int, first_epoch: int, first_step: int = 0
    ) -> None:
        self._epochs[stage] = epochs
        self._epoch_started = time.monotonic()
        if stage == "prune":
            self.log.line("prune: started, removing channels whose gate is 0")
        elif epochs == 0 or first_epoch >= epochs:
            return
        elif first_epoch or first_step:
            self.log.line(f"{stage}: resuming at epoch {first_epoch + 1}/{epochs}, "
                          f"step {first_step + 1}/{steps}")
        elif stage in ("compile",):
            self.log.line(f"{stage}: started")
        else:
            self.log.line(f"{stage}: started, {epochs} epoch(s) of {steps} steps")

    def epoch_finished(self, stage: str, epoch: int, summary: dict[str, float]) -> None:
        seconds = time.monotonic() - self._epoch_started
        self._epoch_started = time.monotonic()
        epochs = self._epochs.get(stage, epoch + 1)
        self.log.line(f"{stage}: epoch {epoch + 1}/{epochs}  {metrics_text(summary)}  "
                      f"({seconds:.1f} s)")

    def stage_finished(self, stage: str, seconds: float) -> None:
        self.log.line(f"{stage}: finished in {seconds:.1f} s")

    def message(self, text: str) -> None:
        self.log.line(text)

    def profiling(self, done: int, total: int, what: str) -> None:
        label = "calibrate: whole networks" if what == "whole networks" else "profile: layer grid"
        if label not in self._counts:
            self._counts[label] = CountLines(self.log, label)
        self._counts[label].update(done, total, what)
