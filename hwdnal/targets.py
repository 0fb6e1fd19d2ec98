"""Targets: a device plus how to run and time networks on it, read from a TOML file.

Built-in targets live in ``targets/*.toml`` (installed as package data of
``hwdnal.builtin_targets``); ``--target`` also accepts a path to a user's own file. The
fingerprint is what a LUT records so that a table measured on one device and runtime is
never silently used for another.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from hwdnal import __version__
from hwdnal.errors import UserError

#: fingerprint keys that must agree between a LUT and the target it is used for
MATCH_KEYS = (
    "device", "arch", "cpu_model", "gpu_model", "runtime", "runtime_version", "precision",
    "batch", "threads",
)
_RUNTIMES = ("onnxruntime", "tensorrt", "torch-cuda")
_DEVICES = ("cpu", "cuda", "jetson")


@dataclass(frozen=True)
class ProfileSettings:
    """How `hwdnal profile` samples this target (grid and sample counts)."""

    grid_step: int = 8
    grid_points: int = 8
    preferred_channel_step: int = 8
    layer_warmup: int = 3
    layer_iterations: int = 15
    layer_min_seconds: float = 0.1
    calibrate: int = 12
    validate: int = 0


@dataclass(frozen=True)
class Target:
    name: str
    runtime: str
    device: str
    precision: str = "fp32"
    batch: int = 1
    threads: int = 1
    warmup: int = 10
    iterations: int = 60
    min_seconds: float = 1.0
    description: str = ""
    architectures: tuple[str, ...] = ()
    profile: ProfileSettings = field(default_factory=ProfileSettings)
    source: str = ""

    def usable(self) -> tuple[bool, str]:
        """Whether this machine can measure the target, and if not why."""
        from hwdnal import runtimes

        machine = platform.machine().lower()
        if self.architectures and machine not in self.architectures:
            return False, (
                f"wrong architecture: this machine is {machine}, the target needs "
                f"{' or '.join(self.architectures)}"
            )
        if self.device == "jetson" and not Path("/etc/nv_tegra_release").exists():
            return False, "not a Jetson (no /etc/nv_tegra_release)"
        return runtimes.check(self.runtime)

    def create_runtime(self):
        """The runtime that compiles and times networks for this target."""
        from hwdnal import runtimes

        ok, why = self.usable()
        if not ok:
            raise UserError(f"target '{self.name}' is not usable on this machine: {why}")
        return runtimes.create(self.runtime, precision=self.precision, threads=self.threads)

    def measure(self, network: Any, input_shape: tuple[int, ...], runtime: Any = None) -> Any:
        """Compile ``network`` (module or ONNX) for this target and time it with the target's
        warm-up, iterations and minimum time; returns a ``Measurement`` (median, p90)."""
        from hwdnal.runtimes.measure import measure

        runtime = runtime or self.create_runtime()
        compiled = runtime.compile(network, input_shape)
        return measure(compiled, self.warmup, self.iterations, self.min_seconds)

    def fingerprint(self) -> dict[str, Any]:
        """What identifies measurements taken for this target on this machine (computed
        without starting the runtime, so listing and checking LUTs stays cheap)."""
        from hwdnal import runtimes
        from hwdnal.runtimes._common import gpu_name
        from hwdnal.runtimes.ort import cpu_model

        version = runtimes.installed_version(self.runtime)
        gpu = gpu_name() if self.device != "cpu" else "none"
        return {
            "target": self.name,
            "device": self.device,
            "arch": platform.machine().lower(),
            "cpu_model": cpu_model(),
            "gpu_model": gpu,
            "runtime": self.runtime,
            "runtime_version": version,
            "precision": self.precision,
            "batch": self.batch,
            "threads": self.threads,
            "hwdnal_version": __version__,
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["architectures"] = list(self.architectures)
        return data


def _builtin_folder() -> Any:
    """Installed package data, or the checkout's targets/ when run from source (PYTHONPATH)."""
    try:
        return resources.files("hwdnal.builtin_targets")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "targets"


def builtin_names() -> list[str]:
    folder = _builtin_folder()
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_target(name_or_path: str | Path) -> Target:
    """A built-in target by name, or a target file by path."""
    text_name = str(name_or_path)
    if text_name in builtin_names():
        resource = _builtin_folder() / f"{text_name}.toml"
        return parse_target(resource.read_text(encoding="utf-8"), source=f"built-in {text_name}")
    path = Path(text_name)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise UserError(f"target file {path} does not exist")
        return parse_target(path.read_text(encoding="utf-8"), source=str(path))
    raise UserError(
        f"unknown target '{text_name}': use one of {', '.join(builtin_names())} or the path "
        "to a .toml target file"
    )


def all_targets() -> list[Target]:
    return [load_target(name) for name in builtin_names()]


def parse_target(text: str, source: str = "<string>") -> Target:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"target file {source} is not valid TOML: {error}") from error
    for key in ("name", "runtime", "device"):
        if not isinstance(data.get(key), str):
            raise UserError(f"target file {source} needs a string '{key}'")
    if data["runtime"] not in _RUNTIMES:
        raise UserError(
            f"target file {source}: runtime '{data['runtime']}' is not one of "
            f"{', '.join(_RUNTIMES)}"
        )
    if data["device"] not in _DEVICES:
        raise UserError(
            f"target file {source}: device '{data['device']}' is not one of {', '.join(_DEVICES)}"
        )
    known = {f for f in Target.__dataclass_fields__ if f not in ("profile", "source")}
    unknown = set(data) - known - {"profile"}
    if unknown:
        raise UserError(f"target file {source}: unknown keys {', '.join(sorted(unknown))}")
    profile_data = data.get("profile", {})
    unknown = set(profile_data) - set(ProfileSettings.__dataclass_fields__)
    if unknown:
        raise UserError(
            f"target file {source}: unknown [profile] keys {', '.join(sorted(unknown))}"
        )
    try:
        profile = ProfileSettings(
            **{k: float(v) if k.endswith("seconds") else int(v) for k, v in profile_data.items()}
        )
        fields = {k: v for k, v in data.items() if k != "profile"}
        fields["architectures"] = tuple(str(a).lower() for a in fields.get("architectures", ()))
        for key in ("batch", "threads", "warmup", "iterations"):
            if key in fields:
                fields[key] = int(fields[key])
        if "min_seconds" in fields:
            fields["min_seconds"] = float(fields["min_seconds"])
        target = Target(**fields, profile=profile, source=source)
    except (TypeError, ValueError) as error:
        raise UserError(f"target file {source} has a bad value: {error}") from error
    if target.batch < 1 or target.threads < 1 or target.iterations < 1 or target.warmup < 0:
        raise UserError(f"target file {source}: batch, threads and iterations must be >= 1")
    if profile.grid_step < 1 or profile.grid_points < 1:
        raise UserError(f"target file {source}: grid_step and grid_points must be >= 1")
    return target


def fingerprint_mismatches(expected: dict[str, Any], found: dict[str, Any]) -> list[str]:
    """Human-readable differences in the keys that must agree."""
    return [
        f"{key} {found.get(key)!r} != {expected.get(key)!r}"
        for key in MATCH_KEYS
        if found.get(key) != expected.get(key)
    ]
