"""Which channels of a model are coupled, and therefore share one gate.

Torch-Pruning's DependencyGraph traces the model once and tells, for the output channels of
each convolution or linear layer, every other tensor dimension that must be removed with
them (BatchNorms, the next layer's inputs, the other branches of a residual addition, the
slices of a concatenation, depthwise convolutions). Each such *dependency group* gets one
gate per channel. Grouped convolutions add one more constraint torch-pruning leaves to its
callers: every convolution group must keep the same channel positions, so the gates of the
channels at one position in each convolution group are tied together here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch_pruning as tp
from torch import nn

from hwdnal.gating.plan import ChannelPlan, GateGroup, LayerChannels
from hwdnal.gating.tracing import trace
from hwdnal.layers import PARAMETRIC, channel_count, is_depthwise_conv, is_grouped_conv


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[object, object] = {}

    def find(self, x: object) -> object:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: object, b: object) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def build_channel_plan(model: nn.Module, example_input: torch.Tensor) -> ChannelPlan:
    """Trace ``model`` and assign one gate to every removable channel (coupled ones share)."""
    graph, found, dep_groups = trace(model, example_input)
    names = {module: name for name, module in model.named_modules()}

    # Where each (module, space, channel) lives: which dependency group and root channel.
    where: dict[tuple[int, str, int], tuple[int, int]] = {}
    unsafe_groups: set[int] = set()
    roots: list[tuple[nn.Module, Callable]] = []
    sizes: list[int] = []
    for g, group in enumerate(dep_groups):
        root_item = group[0]
        roots.append((root_item.dep.target.module, root_item.dep.handler))
        sizes.append(len(root_item.idxs))
        for item in group:
            module, handler = item.dep.target.module, item.dep.handler
            if module in found.shuffles or module in found.splits:
                for idx, root_idx in zip(item.idxs, item.root_idxs, strict=True):
                    where[(id(module), "x", int(idx))] = (g, int(root_idx))
                continue
            if not isinstance(module, PARAMETRIC):
                if isinstance(module, nn.Module) and any(
                    True for _ in module.parameters(recurse=False)
                ):
                    unsafe_groups.add(g)  # a parametric layer we cannot account for
                continue
            spaces = ["out"] if graph.is_out_channel_pruning_fn(handler) else ["in"]
            if is_depthwise_conv(module):
                spaces = ["in", "out"]
            for space in spaces:
                for idx, root_idx in zip(item.idxs, item.root_idxs, strict=True):
                    where[(id(module), space, int(idx))] = (g, int(root_idx))

    # Tie the channels at one position of every group of a grouped convolution.
    # The same for the channels of one shuffle group (after the shuffle: adjacent ones) and
    # of one chunk: the forward code splits the pruned tensor into equal parts again.
    ties = _UnionFind()
    fixed: set[tuple[int, int]] = set()
    modules = dict(model.named_modules())

    def tie(key: object, space: str, positions: list[list[int]]) -> None:
        for tied in positions:
            owners = [where.get((key, space, p)) for p in tied]
            if any(owner is None for owner in owners):
                fixed.update(owner for owner in owners if owner is not None)
                continue
            for owner in owners[1:]:
                ties.union(owners[0], owner)

    for module in modules.values():
        if not is_grouped_conv(module):
            continue
        for space in ("in", "out"):
            per_group = channel_count(module, space) // module.groups
            tie(id(module), space, [[p + k * per_group for k in range(module.groups)]
                                    for p in range(per_group)])
    for op, (groups, per_group) in found.shuffles.items():
        tie(id(op), "x", [[k * groups + j for j in range(groups)] for k in range(per_group)])
    for op, pieces in found.splits.items():
        if len(set(pieces)) == 1:
            tie(id(op), "x", [[j + k * pieces[0] for k in range(len(pieces))]
                              for j in range(pieces[0])])
        else:  # sizes written in the forward code: none of these channels can go
            tie(id(op), "x", [[j, -1] for j in range(sum(pieces))])
    for g in unsafe_groups:
        fixed.update((g, j) for j in range(sizes[g]))

    # Dependency groups linked by ties become one gate group; each tie class one gate.
    group_links = _UnionFind()
    for g in range(len(dep_groups)):
        group_links.find(g)
        for j in range(sizes[g]):
            root = ties.find((g, j))
            group_links.union(root[0], g)  # type: ignore[index]
    members: dict[object, list[int]] = {}
    for g in range(len(dep_groups)):
        members.setdefault(group_links.find(g), []).append(g)

    fixed_classes = {ties.find(f) for f in fixed}
    gate_groups: list[GateGroup] = []
    gate_of: dict[tuple[int, int], int] = {}
    for linked in members.values():
        start = sum(group.size for group in gate_groups)
        class_index: dict[object, int] = {}
        for g in linked:
            for j in range(sizes[g]):
                cls = ties.find((g, j))
                if cls in fixed_classes:
                    continue
                class_index.setdefault(cls, start + len(class_index))
                gate_of[(g, j)] = class_index[cls]
        if len(class_index) < 2:  # a single channel can never be removed
            for g in linked:
                for j in range(sizes[g]):
                    gate_of.pop((g, j), None)
            continue
        gate_groups.append(
            GateGroup(name=names.get(roots[linked[0]][0], "?"), start=start, size=len(class_index))
        )
        gate_groups[-1].roots.extend(roots[g] for g in linked)
        gate_groups[-1].dependency_groups.extend(linked)

    num_gates = sum(group.size for group in gate_groups)
    for gate_group in gate_groups:
        for g in gate_group.dependency_groups:
            gate_group.root_gate_index.append(
                torch.tensor([gate_of.get((g, j), num_gates) for j in range(sizes[g])])
            )

    def gate_index(module: nn.Module, space: str) -> torch.Tensor:
        index = []
        for channel in range(channel_count(module, space)):
            owner = where.get((id(module), space, channel))
            index.append(gate_of.get(owner, num_gates) if owner is not None else num_gates)
        return torch.tensor(index, dtype=torch.long)

    layers: dict[str, LayerChannels] = {}
    norms: dict[str, LayerChannels] = {}
    sites: dict[str, LayerChannels] = {}
    for name, module in modules.items():
        if not isinstance(module, PARAMETRIC):
            continue
        channels = LayerChannels(
            name=name,
            module=module,
            in_gate_index=gate_index(module, "in"),
            out_gate_index=gate_index(module, "out"),
        )
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            layers[name] = channels
        else:
            norms[name] = channels
        if bool((channels.out_gate_index < num_gates).any()) and _gate_after(module, graph):
            sites[name] = channels
    ungated: dict[str, str] = {}
    for name, site in sites.items():
        node = graph.module2node.get(site.module)
        if node is None or isinstance(site.module, nn.modules.batchnorm._BatchNorm):
            continue
        for out in node.outputs:
            if isinstance(out.module, nn.modules.batchnorm._BatchNorm) and names.get(
                out.module
            ) in sites:
                ungated[names[out.module]] = name
    return ChannelPlan(
        groups=gate_groups, layers=layers, norms=norms, gate_sites=sites, num_gates=num_gates,
        graph=graph, ungated_inputs=ungated,
    )


def _gate_after(module: nn.Module, graph: tp.DependencyGraph) -> bool:
    """Gates sit after each BatchNorm, and after a layer only when no BatchNorm follows it."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return True
    node = graph.module2node.get(module)
    if node is None or not node.outputs:
        return True
    return not all(
        isinstance(out.module, nn.modules.batchnorm._BatchNorm) for out in node.outputs
    )
