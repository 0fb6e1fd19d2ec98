"""Which channels of a model are coupled, and therefore share one gate.

Torch-Pruning's DependencyGraph traces the model once and tells, for the output channels of
each convolution or linear layer, every other tensor dimension that must be removed with
them (BatchNorms, the next layer's inputs, the other branches of a residual addition, the
slices of a concatenation, depthwise convolutions). Each such *dependency group* gets one
gate per channel. Grouped convolutions add one more constraint torch-pruning leaves to its
callers: every convolution group must keep the same channel positions, so the gates of the
channels at one position in each convolution group are tied together here.

Two patterns torch-pruning 1.6 maps wrongly are mapped here before it builds its groups
(see :func:`_trace`): a channel shuffle (``view -> transpose/permute -> view``, ShuffleNet's
``channel_shuffle``) becomes an exact permutation of the channel indices, and ``chunk`` /
``split`` on the channel dimension map each piece by its real position. Both keep the
forward code's arithmetic fixed, so the channels at one position in every shuffle group, and
in every equal-size chunk, are tied like those of a grouped convolution. A pattern that still
cannot be mapped is refused with a :class:`~hwdnal.errors.UserError` naming the layer.

The result, :class:`ChannelPlan`, is pure bookkeeping: for every gate it knows which
channels of which layer it guards. It knows nothing of training or latency.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import _helpers, ops
from torch_pruning.dependency import index_mapping as tp_index_mapping
from torch_pruning.dependency.node import Node

from hwdnal.errors import UserError
from hwdnal.layers import PARAMETRIC, channel_count, is_depthwise_conv, is_grouped_conv


@dataclass
class GateGroup:
    """One set of coupled channels with its own slice of the gate vector."""

    name: str
    start: int
    size: int
    #: torch-pruning groups (root module and its out-channel pruning function) that this
    #: gate group prunes, with, for each, the gate index of every root channel.
    roots: list[tuple[nn.Module, Callable]] = field(default_factory=list)
    root_gate_index: list[torch.Tensor] = field(default_factory=list)
    dependency_groups: list[int] = field(default_factory=list)

    @property
    def stop(self) -> int:
        return self.start + self.size


@dataclass
class LayerChannels:
    """For each input and output channel of one layer, the index of its gate.

    Index ``num_gates`` means "no gate": the channel is always kept (model inputs, class
    logits, channels that cannot be removed safely).
    """

    name: str
    module: nn.Module
    in_gate_index: torch.Tensor
    out_gate_index: torch.Tensor


@dataclass
class ChannelPlan:
    groups: list[GateGroup]
    layers: dict[str, LayerChannels]
    norms: dict[str, LayerChannels]
    #: modules after whose output a gate acts, with the gate index of each output channel
    gate_sites: dict[str, LayerChannels]
    num_gates: int
    graph: tp.DependencyGraph
    #: BatchNorms whose layer is gated too (it also feeds other layers): name of the
    #: BatchNorm -> name of that layer. The BatchNorm reads the layer's ungated output, so
    #: that its channels are gated once, after it.
    ungated_inputs: dict[str, str] = field(default_factory=dict)


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


def output_layers(graph: tp.DependencyGraph) -> list[nn.Module]:
    """Convolutions and linear layers whose outputs reach no other parametric layer.

    These produce the network's outputs (class logits); their output channels are the task's,
    never pruned.
    """
    found = []
    for module, node in graph.module2node.items():
        if not isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            continue
        stack, seen, feeds_layer = list(node.outputs), set(), False
        while stack and not feeds_layer:
            nxt = stack.pop()
            if id(nxt) in seen:
                continue
            seen.add(id(nxt))
            if isinstance(nxt.module, PARAMETRIC):
                feeds_layer = True
            else:
                stack.extend(nxt.outputs)
        if not feeds_layer:
            found.append(module)
    return found


class _PermutationMapping:
    """Index mapping through a fixed channel permutation: channel ``i`` goes to ``perm[i]``."""

    def __init__(self, perm: list[int]) -> None:
        self.perm = perm

    def __call__(self, idxs: list) -> list:
        return [_helpers._HybridIndex(idx=self.perm[i.idx], root_idx=i.root_idx) for i in idxs]


class _Ungroupable(Exception):
    def __init__(self, node: Node, why: str) -> None:
        super().__init__(why)
        self.node = node
        self.why = why


@dataclass
class _Patterns:
    """The channel shuffles and channel splits found while tracing, by their graph op."""

    #: shuffle head (the first view): (groups, channels per group)
    shuffles: dict[nn.Module, tuple[int, int]] = field(default_factory=dict)
    #: split op: the channel count of every piece, in order
    splits: dict[nn.Module, list[int]] = field(default_factory=dict)


def _single_output(node: Node) -> Node | None:
    return node.outputs[0] if len(node.outputs) == 1 else None


def _shuffle_groups(node: Node) -> tuple[int, int, list[Node]] | None:
    """(groups, channels per group, the shuffle's nodes) when ``node`` starts a shuffle."""
    size_in = getattr(node.grad_fn, "_saved_self_sym_sizes", None)
    if size_in is None or len(size_in) < 2 or len(node.inputs) != 1:
        return None
    swap = _single_output(node)
    if swap is None:
        return None
    name = swap.grad_fn.name() if swap.grad_fn is not None else ""
    if "TransposeBackward" in name:
        if {swap.grad_fn._saved_dim0, swap.grad_fn._saved_dim1} != {1, 2}:
            return None
    elif "PermuteBackward" in name:
        dims = list(swap.grad_fn._saved_dims)
        if dims[:3] != [0, 2, 1] or dims[3:] != list(range(3, len(dims))):
            return None
    else:
        return None
    chain, tail = [swap], _single_output(swap)
    while tail is not None and tail.type == ops.OPTYPE.ELEMENTWISE and tail.grad_fn is not None \
            and "CloneBackward" in tail.grad_fn.name():
        chain.append(tail)
        tail = _single_output(tail)
    if tail is None or tail.type != ops.OPTYPE.RESHAPE:
        return None
    size_mid = getattr(tail.grad_fn, "_saved_self_sym_sizes", None)
    if size_mid is None or len(size_mid) != len(size_in) + 1:
        return None
    per_group, groups = int(size_mid[1]), int(size_mid[2])
    if groups * per_group != int(size_in[1]) or list(size_mid[3:]) != list(size_in[2:]):
        return None
    if size_mid[0] != size_in[0]:
        return None
    return groups, per_group, [*chain, tail]


def _set_mapping(source: Node, target: Node, mapping: object) -> None:
    for dep in source.dependencies:
        if dep.target == target:
            dep.index_mapping[0] = mapping


def _map_shuffle(node: Node, groups: int, per_group: int) -> None:
    channels = groups * per_group
    forward = [(c % per_group) * groups + c // per_group for c in range(channels)]
    backward = [0] * channels
    for c, p in enumerate(forward):
        backward[p] = c
    source = node.inputs[0]
    _set_mapping(source, node, _PermutationMapping(forward))
    _set_mapping(node, source, _PermutationMapping(backward))


def _map_split(node: Node) -> list[int] | None:
    """Map a split on the channel dimension piece by piece; its pieces' sizes, or None."""
    grad_fn = node.grad_fn
    sizes = getattr(grad_fn, "_saved_self_sym_sizes", None)
    if sizes is None or getattr(grad_fn, "_saved_dim", None) not in (1, 1 - len(sizes)):
        return None
    total = int(sizes[1])
    if hasattr(grad_fn, "_saved_split_sizes"):
        pieces = [int(p) for p in grad_fn._saved_split_sizes]
    elif hasattr(grad_fn, "_saved_split_size"):
        step = int(grad_fn._saved_split_size)
        pieces = [min(step, total - k) for k in range(0, total, step)]
    else:
        return None
    offsets = [0]
    for piece in pieces:
        offsets.append(offsets[-1] + piece)
    piece_of: list[int] = []
    for out in node.outputs:
        used = {nr for fn, nr in (out.grad_fn.next_functions if out.grad_fn else ())
                if fn is grad_fn}
        if len(used) != 1:
            raise _Ungroupable(out, "takes several pieces of one channel split at once")
        piece_of.append(used.pop())
    if sorted(piece_of) != list(range(len(pieces))):
        raise _Ungroupable(node, "splits its channels into pieces that are not all used")
    # torch-pruning reads split sizes by output position: list the outputs in piece order
    node.outputs[:] = [out for _, out in sorted(zip(piece_of, node.outputs, strict=True),
                                                key=lambda pair: pair[0])]
    for k, out in enumerate(node.outputs):
        span = offsets[k : k + 2]
        _set_mapping(node, out, tp_index_mapping._SplitIndexMapping(offset=span, reverse=False))
        _set_mapping(out, node, tp_index_mapping._SplitIndexMapping(offset=span, reverse=True))
    node.module.split_sizes = list(pieces)
    node.module.offsets = offsets
    return pieces


@contextmanager
def _hwdnal_index_mapping(found: _Patterns) -> Iterator[None]:
    """While tracing: map shuffles and splits exactly, and name what cannot be mapped."""
    original = tp_index_mapping.update_index_mapping

    def update(graph: tp.DependencyGraph) -> None:
        done: set[int] = set()
        for module, node in list(graph.module2node.items()):
            if node.type == ops.OPTYPE.SPLIT:
                pieces = _map_split(node)
                if pieces is not None:
                    found.splits[module] = pieces
                    done.add(id(node))
            elif node.type == ops.OPTYPE.RESHAPE and id(node) not in done:
                shuffle = _shuffle_groups(node)
                if shuffle is not None:
                    groups, per_group, rest = shuffle
                    _map_shuffle(node, groups, per_group)
                    found.shuffles[module] = (groups, per_group)
                    done.add(id(node))
                    done.update(id(n) for n in rest)
        mappers = {
            ops.OPTYPE.CONCAT: tp_index_mapping.update_concat_index_mapping,
            ops.OPTYPE.SPLIT: tp_index_mapping.update_split_index_mapping,
            ops.OPTYPE.RESHAPE: tp_index_mapping.update_reshape_index_mapping,
            ops.OPTYPE.UNBIND: tp_index_mapping.update_unbind_index_mapping,
            ops.OPTYPE.EXPAND: tp_index_mapping.update_expand_index_mapping,
            ops.OPTYPE.SLICE: tp_index_mapping.update_slice_index_mapping,
        }
        for node in list(graph.module2node.values()):
            mapper = mappers.get(node.type)
            if mapper is None or id(node) in done:
                continue
            try:
                mapper(graph, node)
            except Exception as error:
                raise _Ungroupable(node, f"{type(error).__name__} mapping its channels") from error

    tp_index_mapping.update_index_mapping = update
    try:
        yield
    finally:
        tp_index_mapping.update_index_mapping = original


def _layer_near(node: Node, names: dict[nn.Module, str]) -> str:
    """The user-visible name of ``node``'s layer, or of the nearest layer feeding it."""
    stack, seen = [node], set()
    while stack:
        current = stack.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if names.get(current.module):
            name = names[current.module]
            return f"'{name}'" if current is node else f"the operation after '{name}'"
        stack.extend(current.inputs)
    return f"'{node.name}'"


def _trace(
    model: nn.Module, example_input: torch.Tensor
) -> tuple[tp.DependencyGraph, _Patterns, list]:
    found = _Patterns()
    names = {module: name for name, module in model.named_modules()}
    try:
        with _hwdnal_index_mapping(found):
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input, verbose=False
            )
            ignored = output_layers(graph)
            groups = list(graph.get_all_groups(
                ignored_layers=ignored, root_module_types=[nn.modules.conv._ConvNd, nn.Linear]
            ))
    except _Ungroupable as error:
        raise UserError(
            f"cannot group the channels at {_layer_near(error.node, names)} ({error.why}); "
            "this model cannot be pruned by channel"
        ) from None
    except UserError:
        raise
    except Exception as error:
        raise UserError(
            f"cannot trace the model's channels ({type(error).__name__}: {error}); "
            "this model cannot be pruned by channel"
        ) from None
    return graph, found, groups


def build_channel_plan(model: nn.Module, example_input: torch.Tensor) -> ChannelPlan:
    """Trace ``model`` and assign one gate to every removable channel (coupled ones share)."""
    graph, found, dep_groups = _trace(model, example_input)
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
