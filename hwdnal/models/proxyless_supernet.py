"""Stochastic supernets in the ProxylessNAS layout (Cai et al. 2019), searched by DNAL.

Every searchable layer holds M parallel candidate blocks — mobile inverted bottlenecks
(MBConv) with kernel 3/5/7 and expansion 3/6 by default — whose outputs are summed; where the
layer's input and output shapes match, the input is added too (the identity candidate, i.e.
the residual path). DNAL's gates sit on every candidate's expanded channels
(:class:`MixedLayer` is a :class:`~hwdnal.gating.blocks.CandidateLayer`, which is how the
gating core finds the blocks without knowing this family): a candidate
whose channels all end at 0 is an operation not chosen and is removed; a residual layer whose
candidates all end at 0 is a layer removed (it becomes the identity). Candidates that survive
together stay summed, as DNAL allows.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from hwdnal.errors import UserError
from hwdnal.models.cifar_mobilenetv2 import conv_bn

#: (kernel, expansion) of every candidate of a searchable layer: ProxylessNAS's space
DEFAULT_CANDIDATES: tuple[tuple[int, int], ...] = ((3, 3), (3, 6), (5, 3), (5, 6), (7, 3), (7, 6))

#: output channels, searchable layers, first stride (ProxylessNAS's mobile supernet)
_STAGES = [(24, 4, 2), (40, 4, 2), (80, 4, 2), (96, 4, 1), (192, 4, 2), (320, 1, 1)]
#: the same widths for 28-32 px inputs: stride 1 in the stem and the first stage, as in
#: ``mobilenet_v2_cifar``, so a 32x32 image ends at 4x4
_CIFAR_STAGES = [(24, 4, 1), (40, 4, 2), (80, 4, 2), (96, 4, 1), (192, 4, 2), (320, 1, 1)]


class MBConv(nn.Module):
    """Expand (1x1), depthwise (k x k), project (1x1); no residual of its own (the layer
    adds it once for all candidates)."""

    def __init__(self, inp: int, out: int, stride: int, kernel: int, expansion: int) -> None:
        super().__init__()
        hidden = inp * expansion
        self.kernel, self.expansion = kernel, expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += conv_bn(inp, hidden, 1, 1)
        layers += conv_bn(hidden, hidden, kernel, stride, groups=hidden)
        layers += conv_bn(hidden, out, 1, 1, act=False)
        self.block = nn.Sequential(*layers)

    @property
    def expanded(self) -> nn.Conv2d:
        """The layer whose output channels are the block's gated (expanded) channels."""
        return self.block[0]

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class MixedLayer(nn.Module):
    """Parallel candidate blocks, summed; plus the input where the shapes allow."""

    def __init__(self, inp: int, out: int, stride: int,
                 candidates: Sequence[tuple[int, int]]) -> None:
        super().__init__()
        self.residual = stride == 1 and inp == out
        self.candidates = nn.ModuleDict({
            f"k{kernel}e{expansion}": MBConv(inp, out, stride, kernel, expansion)
            for kernel, expansion in candidates})

    def candidate_ops(self) -> nn.ModuleDict:
        """The candidates, for the gating core (:class:`hwdnal.gating.blocks.CandidateLayer`)."""
        return self.candidates

    def keep_only(self, names: Sequence[str]) -> None:
        """Remove every candidate not in ``names`` (physical pruning of dropped blocks)."""
        if not names and not self.residual:
            raise ValueError("a layer without a residual path must keep one candidate")
        for name in list(self.candidates):
            if name not in names:
                del self.candidates[name]

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor | None = None
        for candidate in self.candidates.values():
            y = candidate(x)
            out = y if out is None else out + y
        if out is None:  # every candidate dropped: the layer is the identity
            return x
        return x + out if self.residual else out


class ProxylessSupernet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3,
                 candidates: Sequence[tuple[int, int]] = DEFAULT_CANDIDATES,
                 stages: Sequence[tuple[int, int, int]] = tuple(_STAGES), stem_stride: int = 2,
                 stem: int = 32, first: int = 16, last: int = 1280) -> None:
        super().__init__()
        candidates = check_candidates(candidates)
        layers: list[nn.Module] = [*conv_bn(in_channels, stem, 3, stem_stride),
                                   MBConv(stem, first, 1, 3, 1)]
        channels = first
        for out, repeats, stride in stages:
            for i in range(repeats):
                layers.append(MixedLayer(channels, out, stride if i == 0 else 1, candidates))
                channels = out
        layers += conv_bn(channels, last, 1, 1)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def check_candidates(candidates: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    pairs = tuple((int(k), int(e)) for k, e in candidates)
    if not pairs:
        raise UserError("a supernet needs at least one candidate block: give kernel x "
                        "expansion pairs such as 3x3,5x6")
    for kernel, expansion in pairs:
        if kernel < 1 or kernel % 2 == 0 or expansion < 2:
            raise UserError(f"candidate {kernel}x{expansion}: the kernel must be odd and the "
                            "expansion at least 2 (kernel x expansion, e.g. 3x6)")
    if len(set(pairs)) != len(pairs):
        raise UserError("the candidate list names a block twice: give each kernel x "
                        "expansion pair once")
    return pairs


def parse_candidates(text: str) -> tuple[tuple[int, int], ...]:
    """``"3x3,5x6"`` → ((3, 3), (5, 6)), the form of ``--candidates``."""
    pairs = []
    for item in text.replace(" ", "").split(","):
        kernel, sep, expansion = item.partition("x")
        if not sep or not kernel.isdigit() or not expansion.isdigit():
            raise UserError(f"--candidates: '{item}' is not kernel x expansion; write e.g. "
                            "3x3,3x6,5x6")
        pairs.append((int(kernel), int(expansion)))
    return check_candidates(pairs)


def proxyless_supernet_cifar(num_classes: int = 10, in_channels: int = 3,
                             candidates: Sequence[tuple[int, int]] = DEFAULT_CANDIDATES
                             ) -> ProxylessSupernet:
    """The supernet for 28-32 px inputs (21 searchable layers)."""
    return ProxylessSupernet(num_classes, in_channels, candidates, _CIFAR_STAGES, stem_stride=1)


def proxyless_supernet(num_classes: int = 1000, in_channels: int = 3,
                       candidates: Sequence[tuple[int, int]] = DEFAULT_CANDIDATES
                       ) -> ProxylessSupernet:
    """The 224 px layout (21 searchable layers, output stride 32)."""
    return ProxylessSupernet(num_classes, in_channels, candidates, _STAGES, stem_stride=2)


def mixed_layers(model: nn.Module) -> dict[str, MixedLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, MixedLayer)}


def describe_blocks(model: nn.Module, supernet: nn.Module | None = None
                    ) -> list[dict[str, object]]:
    """For every searchable layer of ``model`` (a pruned supernet): the candidates kept with
    their expanded channels (and, given the ``supernet`` it came from, out of how many),
    the candidates dropped, and whether the layer was removed — ``result.json``'s
    ``blocks``."""
    before = mixed_layers(supernet) if supernet is not None else {}
    blocks = []
    for name, layer in mixed_layers(model).items():
        original = before.get(name)
        kept = []
        for key, block in layer.candidates.items():
            entry: dict[str, object] = {"candidate": key, "kernel": block.kernel,
                                        "expansion": block.expansion,
                                        "channels": int(block.expanded.out_channels)}
            if original is not None:
                entry["of"] = int(original.candidates[key].expanded.out_channels)
            kept.append(entry)
        dropped = [key for key in (original.candidates if original is not None else [])
                   if key not in layer.candidates]
        blocks.append({"layer": name, "residual": layer.residual, "kept": kept,
                       "dropped": dropped, "removed": not kept})
    return blocks


__all__ = ["DEFAULT_CANDIDATES", "MBConv", "MixedLayer", "ProxylessSupernet",
           "describe_blocks", "mixed_layers", "parse_candidates", "proxyless_supernet",
           "proxyless_supernet_cifar"]
