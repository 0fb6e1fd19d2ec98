"""What a search tells whoever watches it (the CLI draws it, tests record it). Torch-free."""

from __future__ import annotations


class SearchObserver:
    """Receives progress; the CLI draws it, tests may record it. All methods optional."""

    def stage_started(
        self, stage: str, epochs: int, steps: int, first_epoch: int, first_step: int = 0
    ) -> None: ...

    def step(self, stage: str, done: int, values: dict[str, float]) -> None:
        """``done`` steps of the epoch are finished; called a few times a second."""

    def epoch_finished(self, stage: str, epoch: int, summary: dict[str, float]) -> None: ...

    def stage_finished(self, stage: str, seconds: float) -> None: ...

    def message(self, text: str) -> None: ...

    def profiling(self, done: int, total: int, what: str) -> None: ...
