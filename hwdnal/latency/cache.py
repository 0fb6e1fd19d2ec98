"""Measurements kept on disk as they are taken: profiles resume, and models share layers.

One cache file per target fingerprint (so a cache is never reused on another device or
runtime). It maps a measurement key (layer geometry and channels, or a whole sub-network)
to its median and p90. Writes are atomic: a profile killed at any moment loses at most the
measurements taken since the last flush.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from hwdnal_agent.timing import Measurement

from hwdnal.atomic import write_json
from hwdnal.targets import MATCH_KEYS

SCHEMA = "hwdnal-measurement-cache"
VERSION = 1


def fingerprint_id(fingerprint: dict[str, Any]) -> str:
    """Short hash of the fingerprint keys that must match."""
    text = json.dumps({k: fingerprint.get(k) for k in MATCH_KEYS}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class MeasurementCache:
    def __init__(self, path: str | Path, fingerprint: dict[str, Any], flush_every_s: float = 5.0):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.flush_every_s = flush_every_s
        self.points: dict[str, dict[str, float]] = {}
        self._dirty = False
        self._last_flush = time.monotonic()
        self._load()

    @classmethod
    def for_target(cls, folder: str | Path, fingerprint: dict[str, Any]) -> MeasurementCache:
        name = f"{fingerprint.get('target', 'target')}-{fingerprint_id(fingerprint)}.json"
        return cls(Path(folder) / name, fingerprint)

    def _load(self) -> None:
        """Read what an earlier (maybe interrupted) run measured; ignore a foreign or bad file."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if (
            isinstance(data, dict) and data.get("schema") == SCHEMA
            and data.get("version") == VERSION
            and data.get("fingerprint_id") == fingerprint_id(self.fingerprint)
            and isinstance(data.get("points"), dict)
        ):
            self.points = {
                k: v for k, v in data["points"].items()
                if isinstance(v, dict) and isinstance(v.get("median_ms"), (int, float))
            }

    def __contains__(self, key: str) -> bool:
        return key in self.points

    def __len__(self) -> int:
        return len(self.points)

    def get(self, key: str) -> Measurement | None:
        point = self.points.get(key)
        if point is None:
            return None
        median = float(point["median_ms"])
        return Measurement(median, float(point.get("p90_ms", median)), int(point.get("samples", 0)))

    def put(self, key: str, measurement: Measurement) -> None:
        self.points[key] = measurement.to_dict()
        self._dirty = True
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        if not self._dirty:
            return
        write_json(self.path, {
            "schema": SCHEMA, "version": VERSION,
            "fingerprint_id": fingerprint_id(self.fingerprint),
            "fingerprint": self.fingerprint, "points": self.points,
        })
        self._dirty = False
        self._last_flush = time.monotonic()
