"""What a layer is, for latency purposes, apart from its channel counts.

Two layers with the same :class:`LayerGeometry` (operator, kernel, stride, padding,
dilation, grouping, input spatial size) cost the same for the same channel counts, so
they share measurements, within one model and across models. A geometry can also build
the one-layer probe network that the profiler times at any (in, out) channel pair.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from hwdnal.layers import is_depthwise_conv

_CONV_OPS = {1: "conv1d", 2: "conv2d", 3: "conv3d"}


@dataclass(frozen=True)
class LayerGeometry:
    op: str  # conv1d | conv2d | conv3d | linear
    kind: str  # dense | depthwise | grouped
    groups: int  # the fixed group count of a grouped conv; 1 otherwise
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    dilation: tuple[int, ...]
    padding_mode: str
    bias: bool
    input_size: tuple[int, ...]  # spatial size (conv) or the middle dims (linear)

    def key(self) -> str:
        """A stable, readable identifier (used in caches and LUT files)."""
        if self.op == "linear":
            middle = "x".join(map(str, self.input_size)) or "-"
            return f"linear mid{middle} bias{int(self.bias)}"
        kind = {"dense": "", "depthwise": "-dw"}.get(self.kind, f"-g{self.groups}")
        pad = self.padding if isinstance(self.padding, str) else "x".join(map(str, self.padding))
        mode = "" if self.padding_mode == "zeros" else f" {self.padding_mode}"
        return (
            f"{self.op}{kind} k{'x'.join(map(str, self.kernel))} s{'x'.join(map(str, self.stride))}"
            f" p{pad} d{'x'.join(map(str, self.dilation))}{mode} bias{int(self.bias)}"
            f" in{'x'.join(map(str, self.input_size))}"
        )

    @property
    def channel_multiple(self) -> int:
        """Channel counts of a grouped conv stay multiples of its group count."""
        return self.groups if self.kind == "grouped" else 1

    def build(self, in_channels: int, out_channels: int) -> nn.Module:
        """A one-layer network with these channel counts (random weights, eval mode)."""
        if self.op == "linear":
            layer: nn.Module = nn.Linear(in_channels, out_channels, bias=self.bias)
        else:
            conv = {"conv1d": nn.Conv1d, "conv2d": nn.Conv2d, "conv3d": nn.Conv3d}[self.op]
            groups = self.groups
            if self.kind == "depthwise":
                groups = in_channels = out_channels
            padding: Any = self.padding if isinstance(self.padding, str) else tuple(self.padding)
            layer = conv(
                in_channels, out_channels, self.kernel, stride=self.stride, padding=padding,
                dilation=self.dilation, groups=groups, bias=self.bias,
                padding_mode=self.padding_mode,
            )
        return layer.eval()

    def input_shape(self, batch: int, in_channels: int) -> tuple[int, ...]:
        if self.op == "linear":
            return (batch, *self.input_size, in_channels)
        return (batch, in_channels, *self.input_size)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerGeometry:
        fields = dict(data)
        for key in ("kernel", "stride", "dilation", "input_size"):
            fields[key] = tuple(int(v) for v in fields[key])
        if not isinstance(fields["padding"], str):
            fields["padding"] = tuple(int(v) for v in fields["padding"])
        return cls(**fields)


@dataclass(frozen=True)
class LayerInfo:
    """One conv or linear layer of a model: its geometry and its channel range."""

    name: str
    geometry: LayerGeometry
    in_channels: int
    out_channels: int
    min_in: int  # channels of the input that no gate can remove
    min_out: int
    out_elements_per_channel: int  # batch x output spatial size: memory traffic per channel

    @property
    def depthwise(self) -> bool:
        return self.geometry.kind == "depthwise"


def geometry_of(module: nn.Module, input_shape: tuple[int, ...]) -> LayerGeometry:
    """The geometry of a conv or linear module seen with an input of ``input_shape``."""
    if isinstance(module, nn.Linear):
        return LayerGeometry(
            op="linear", kind="dense", groups=1, kernel=(), stride=(), padding=(),
            dilation=(), padding_mode="zeros", bias=module.bias is not None,
            input_size=tuple(int(d) for d in input_shape[1:-1]),
        )
    if not isinstance(module, nn.modules.conv._ConvNd) or module.transposed:
        raise TypeError(f"no latency geometry for {type(module).__name__}")
    dims = len(module.kernel_size)
    if is_depthwise_conv(module):
        kind, groups = "depthwise", 1
    elif module.groups > 1:
        kind, groups = "grouped", module.groups
    else:
        kind, groups = "dense", 1
    padding = module.padding if isinstance(module.padding, str) else tuple(module.padding)
    return LayerGeometry(
        op=_CONV_OPS[dims], kind=kind, groups=groups, kernel=tuple(module.kernel_size),
        stride=tuple(module.stride), padding=padding, dilation=tuple(module.dilation),
        padding_mode=module.padding_mode, bias=True,  # BatchNorm folds into a bias when deployed
        input_size=tuple(int(d) for d in input_shape[2:]),
    )


def layer_shapes(
    model: nn.Module, example_input: torch.Tensor
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """(input, output) shapes of every conv/linear layer the forward pass reaches (first call
    wins)."""
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            def hook(_m: nn.Module, inputs: tuple, output: torch.Tensor, name: str = name) -> None:
                shapes.setdefault(name, (tuple(inputs[0].shape), tuple(output.shape)))

            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return shapes
