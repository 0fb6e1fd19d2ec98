"""Graceful stops: SIGINT or SIGTERM finish the current step, save, and leave resumable.

Long jobs (a search, a profile) poll :attr:`GracefulStop.requested` between steps. A second
SIGINT while a stop is pending stops at once (KeyboardInterrupt), for the impatient.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType


class Interrupted(Exception):
    """A job stopped on request after saving its progress."""

    def __init__(self, where: str, signal_number: int) -> None:
        super().__init__(where)
        self.where = where
        self.signal_number = signal_number

    @property
    def exit_code(self) -> int:
        return 128 + self.signal_number


class GracefulStop:
    """Context manager turning SIGINT/SIGTERM into a flag the job polls."""

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_number is not None

    def _handle(self, number: int, _frame: FrameType | None) -> None:
        if self.signal_number is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_number = number

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)  # type: ignore[arg-type]
