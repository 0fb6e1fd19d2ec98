"""The run directory: configuration, stage progress and checkpoints of one search.

Everything is written atomically, so a run killed at any moment resumes from the last
finished epoch. A run directory remembers the configuration that created it; re-running
with a different configuration is refused rather than mixing two searches.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hwdnal import __version__
from hwdnal.atomic import save_torch, write_json
from hwdnal.errors import UserError
from hwdnal.results import Result

RUN_FORMAT = 1
#: configuration keys that may change between a run and its resumption
RESUMABLE_CHANGES = {"out", "debug"}


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self._lock: int | None = None

    def lock(self) -> None:
        """Hold an exclusive lock on the run for this process's lifetime (or :meth:`unlock`).

        Two searches writing one run directory would interleave checkpoints; the second is
        refused instead.
        """
        lock_path = self.path / ".lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(
                f"{self.path} is in use by another hwdnal search (pid {holder}): wait for it "
                "to finish, or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock = fd

    def unlock(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            os.close(self._lock)
            self._lock = None

    # -- configuration -------------------------------------------------------------------
    def open(self, config: dict[str, Any], defaults: dict[str, Any] | None = None) -> bool:
        """Create the run, or check it matches ``config``; returns True when resuming.

        A setting the stored config lacks (written by an older hwdnal) counts as its value in
        ``defaults``: adding an option with a default does not orphan earlier runs."""
        config_path = self.path / "config.json"
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.checkpoints.mkdir(exist_ok=True)
        except OSError as error:
            raise UserError(
                f"cannot create run directory {self.path}: {error.strerror}; choose a "
                "writable --out"
            ) from None
        self.lock()
        if not config_path.exists():
            write_json(config_path, {"format": RUN_FORMAT, "hwdnal": __version__, **config})
            return False
        stored = self._read_json(config_path)
        if stored.get("format") != RUN_FORMAT:
            raise UserError(
                f"{self.path} was written by an incompatible hwdnal (run format "
                f"{stored.get('format')}, this is {RUN_FORMAT}): use a new --out"
            )
        defaults = defaults or {}
        different = sorted(
            key for key in set(stored) | set(config)
            if key not in RESUMABLE_CHANGES | {"format", "hwdnal"}
            and stored.get(key, defaults.get(key)) != config.get(key)
        )
        if different and not self._has_progress():
            # nothing was computed under the old settings (it failed at once): start afresh
            write_json(config_path, {"format": RUN_FORMAT, "hwdnal": __version__, **config})
            return False
        if different:
            changes = ", ".join(f"{k}: {stored.get(k)!r} -> {config.get(k)!r}" for k in different)
            raise UserError(
                f"{self.path} holds a run with other settings ({changes}); re-run with the "
                "same options to resume, or choose a new --out"
            )
        return True

    def _has_progress(self) -> bool:
        return (self.path / "state.json").exists() or any(self.checkpoints.glob("*.pt"))

    # -- progress ------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        path = self.path / "state.json"
        return self._read_json(path) if path.exists() else {"finished": [], "stages": []}

    def save_state(self, state: dict[str, Any]) -> None:
        write_json(self.path / "state.json", state)

    def save_checkpoint(self, name: str, payload: dict[str, Any]) -> Path:
        return save_torch(self.checkpoints / f"{name}.pt", payload)

    def load_checkpoint(self, name: str) -> dict[str, Any] | None:
        path = self.checkpoints / f"{name}.pt"
        if not path.exists():
            return None
        import torch

        try:
            return torch.load(path, weights_only=False)
        except Exception as error:
            raise UserError(
                f"checkpoint {path} is corrupt ({type(error).__name__}): delete it to redo "
                "that stage from its start"
            ) from None

    def write_result(self, result: Result) -> Path:
        return write_json(self.path / "result.json", result)

    def read_result(self) -> Result:
        """The finished run's result.json (what compile and report start from)."""
        path = self.path / "result.json"
        if not path.is_file():
            raise UserError(
                f"{self.path} holds no finished run (no result.json): run `hwdnal search` first"
            )
        return self._read_json(path, fix="", what="a hwdnal result")  # type: ignore[return-value]

    def update_result(self, change: Callable[[Result], None]) -> Result:
        """Read result.json, let ``change`` modify it, write it back atomically."""
        result = self.read_result()
        change(result)
        self.write_result(result)
        return result

    def read_config(self) -> dict[str, Any]:
        """config.json: what the search was asked to do."""
        return self._read_json(self.path / "config.json", fix="", what="a hwdnal run config")

    @staticmethod
    def _read_json(path: Path, fix: str = ": use a new --out",
                   what: str = "a hwdnal run file") -> dict[str, Any]:
        """A JSON object from the run directory, or one line that says what is wrong."""
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise UserError(f"{path} is unreadable ({error}){fix}") from None
        if not isinstance(data, dict):
            raise UserError(f"{path} is not {what}{fix}")
        return data
