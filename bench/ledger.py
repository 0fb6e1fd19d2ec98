"""The comparison benchmark's record of finished units, kept in the repository.

The full benchmark is days of 2-core CPU or hours of GPU: it runs in sittings. A unit
(model × method × budget × seed) is written here as one JSON file the moment it finishes,
so a later sitting — on this machine or on a GPU workstation, from a fresh clone — starts
where the last one stopped. Only small things are kept: the unit records, the dense weights
of each model and seed (every method starts from or is measured against them), the LUT and
the family latencies. Everything else (search run folders, checkpoints) lives in a scratch
folder that a sitting may lose; a unit then simply runs again.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from hwdnal.atomic import save_torch, write_json
from hwdnal.errors import UserError


def mask_to_text(keep: torch.Tensor) -> str:
    """A keep mask as '<length>:<hex of the packed bits>' (a few hundred bytes, not a list)."""
    bits = keep.bool().flatten().tolist()
    value = 0
    for bit in reversed(bits):
        value = (value << 1) | int(bit)
    return f"{len(bits)}:{value:x}"


def mask_from_text(text: str) -> torch.Tensor:
    length, digits = text.split(":")
    value = int(digits, 16)
    return torch.tensor([(value >> i) & 1 for i in range(int(length))], dtype=torch.bool)


class Ledger:
    """Files under ``root``: ``settings.json``, ``sittings.json`` and, per model,
    ``<model>/{lut,profile,families,overhead}.json`` and
    ``<model>/seed<k>/{dense.json,dense.pt,<method>-<budget>.json,dnal-tries.json,
    measured.json}``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    # -- the settings every unit of the ledger was made with -------------------------------
    def check_settings(self, settings: dict[str, Any], target: str) -> None:
        """Refuse to mix units made with other epochs, subsets or targets."""
        path = self.root / "settings.json"
        wanted = {"settings": _comparable(settings), "target": target}
        if path.exists():
            stored = json.loads(path.read_text())
            if stored != wanted:
                changed = sorted(k for k in {**stored["settings"], **wanted["settings"]}
                                 if stored["settings"].get(k) != wanted["settings"].get(k))
                if stored["target"] != target:
                    changed.append("target")
                raise UserError(
                    f"{self.root} holds units made with other settings ({', '.join(changed)}):"
                    " give another --ledger, or delete that folder to start over")
        else:
            write_json(path, wanted)

    # -- units ----------------------------------------------------------------------------
    def seed_dir(self, model: str, seed: int) -> Path:
        return self.root / model / f"seed{seed}"

    def unit_path(self, model: str, seed: int, method: str, fraction: float) -> Path:
        return self.seed_dir(model, seed) / f"{method}-{fraction:g}.json"

    def unit(self, model: str, seed: int, method: str, fraction: float) -> dict[str, Any] | None:
        path = self.unit_path(model, seed, method, fraction)
        return json.loads(path.read_text()) if path.exists() else None

    def save_unit(self, entry: Any) -> None:
        record = asdict(entry)
        write_json(self.unit_path(record["model"], record["seed"], record["method"],
                                  record["fraction"]), record)

    def units(self) -> list[dict[str, Any]]:
        # not units: DNAL's tries and the shorter dense training (dense-<N>ep.json)
        return [json.loads(p.read_text()) for p in sorted(self.root.glob("*/seed*/*-*.json"))
                if p.name != "dnal-tries.json" and not p.name.startswith("dense-")]

    # -- per model and seed ---------------------------------------------------------------
    def dense(self, model: str, seed: int) -> dict[str, Any] | None:
        path = self.seed_dir(model, seed) / "dense.json"
        return json.loads(path.read_text()) if path.exists() else None

    def save_dense(self, model: str, seed: int, record: dict[str, Any],
                   network: torch.nn.Module) -> None:
        save_torch(self.dense_weights(model, seed), network.cpu().state_dict())
        write_json(self.seed_dir(model, seed) / "dense.json", record)

    def dense_weights(self, model: str, seed: int) -> Path:
        return self.seed_dir(model, seed) / "dense.pt"

    def all_dense(self) -> list[dict[str, Any]]:
        records = []
        for path in sorted(self.root.glob("*/seed*/dense.json")):
            record = json.loads(path.read_text())
            measured = path.parent / "measured.json"
            if measured.exists():
                together = json.loads(measured.read_text())
                record["latency_ms"] = together["dense_ms"]
                record["load_at_measurement"] = together["load"]
            records.append(record)
        return records

    def read(self, relative: str) -> Any:
        path = self.root / relative
        return json.loads(path.read_text()) if path.exists() else None

    def write(self, relative: str, data: Any) -> None:
        write_json(self.root / relative, data)

    # -- sittings -------------------------------------------------------------------------
    def add_sitting(self, record: dict[str, Any]) -> None:
        sittings = self.read("sittings.json") or []
        write_json(self.root / "sittings.json", [*sittings, record])


def _comparable(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings as JSON would give them back (tuples become lists)."""
    return json.loads(json.dumps(settings))


def machine_line() -> str:
    import os

    import onnxruntime
    from hwdnal_agent.device_info import cpu_model

    return (f"{cpu_model()} ({platform.machine()}, {os.cpu_count()} cores), torch "
            f"{torch.__version__} ({torch.get_num_threads()} threads for training), "
            f"onnxruntime {onnxruntime.__version__}")
