"""Torch-Pruning's dependency graph, traced with the fixes this project needs: the only
module that touches torch-pruning's internals.

Two patterns torch-pruning 1.6 maps wrongly are mapped here before it builds its groups
(see :func:`trace`): a channel shuffle (``view -> transpose/permute -> view``, ShuffleNet's
``channel_shuffle``) becomes an exact permutation of the channel indices, and ``chunk`` /
``split`` on the channel dimension map each piece by its real position. Both keep the
forward code's arithmetic fixed, so the channels at one position in every shuffle group, and
in every equal-size chunk, are tied like those of a grouped convolution. A pattern that still
cannot be mapped is refused with a :class:`~hwdnal.errors.UserError` naming the layer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import _helpers, ops
from torch_pruning.dependency import index_mapping as tp_index_mapping
from torch_pruning.dependency.node import Node

from hwdnal.errors import UserError
from hwdnal.layers import PARAMETRIC


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
class Patterns:
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
def _hwdnal_index_mapping(found: Patterns) -> Iterator[None]:
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


def trace(
    model: nn.Module, example_input: torch.Tensor
) -> tuple[tp.DependencyGraph, Patterns, list]:
    found = Patterns()
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
