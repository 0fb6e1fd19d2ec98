"""Targets: a device plus how to run and time networks on it, read from a TOML file.

Built-in targets live in ``targets/*.toml`` (installed as package data of
``hwdnal.builtin_targets``); ``--target`` also accepts a path to a user's own file. The
fingerprint is what a LUT records so that a table measured on one device and runtime is
never silently used for another.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from hwdnal.errors import UserError

#: fingerprint keys that must agree between a LUT and the target it is used for
MATCH_KEYS = (
    "device", "arch", "cpu_model", "gpu_model", "runtime", "runtime_version", "precision",
    "batch", "threads", "power_mode",
)
#: fingerprint keys that tell machines apart where the OS reports them, shown but not
#: required to match (existing LUTs stay usable; a reused LUT is checked against the device)
INFO_KEYS = ("cpu_cores", "cpu_max_mhz", "cpu_caches", "gpu_max_clocks")
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
    #: where the device is: "" for this machine, else the agent's URL (ssh://, tcp://, exec:)
    remote: str = ""
    #: file holding the agent's shared token (tcp:// agents); HWDNAL_AGENT_TOKEN wins
    token_file: str = ""
    #: the agent's command on the device for ssh:// (default `hwdnal-agent stdio`)
    agent_command: str = ""
    source: str = ""

    def with_remote(self, url: str | None) -> Target:
        """This target measured through the agent at ``url`` (``--remote``); as is for None."""
        if not url:
            return self
        _check_remote(url, "--remote")
        return replace(self, remote=url)

    def suits(self, arch: str, jetson: bool) -> tuple[bool, str]:
        """Whether a device of this architecture (a Jetson or not) can run the target (the
        probing of a machine is :func:`hwdnal.devices.usable_here`'s)."""
        where = "the device" if self.remote else "this machine"
        if self.architectures and arch not in self.architectures:
            return False, (
                f"wrong architecture: {where} is {arch}, the target needs "
                f"{' or '.join(self.architectures)}"
            )
        if self.device == "jetson" and not jetson:
            return False, f"{where} is not a Jetson (no /etc/nv_tegra_release)"
        return True, ""

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
    for key in ("remote", "token_file", "agent_command"):
        if not isinstance(data.get(key, ""), str):
            raise UserError(f"target file {source}: '{key}' must be a string")
    if data.get("remote"):
        _check_remote(data["remote"], f"target file {source}: remote")
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


def _check_remote(url: str, where: str) -> None:
    if not url.startswith(("ssh://", "tcp://", "exec:")):
        raise UserError(
            f"{where} '{url}' is not an agent URL: use ssh://[user@]host[:port], "
            "tcp://host:port or exec:COMMAND"
        )


def device_name(fingerprint: dict[str, Any]) -> Any:
    """The chip a fingerprint names: its GPU where it has one, else its CPU."""
    gpu = fingerprint.get("gpu_model")
    return gpu if gpu not in (None, "none") else fingerprint.get("cpu_model")


def fingerprint_differences(expected: dict[str, Any], found: dict[str, Any]) -> list[str]:
    """The informational keys (:data:`INFO_KEYS`) both report and that differ."""
    return [
        f"{key} {found[key]!r} != {expected[key]!r}"
        for key in INFO_KEYS
        if key in found and key in expected and found[key] != expected[key]
    ]


def fingerprint_mismatches(expected: dict[str, Any], found: dict[str, Any]) -> list[str]:
    """Human-readable differences in the keys that must agree."""
    return [
        f"{key} {found.get(key)!r} != {expected.get(key)!r}"
        for key in MATCH_KEYS
        if found.get(key) != expected.get(key)
    ]
