"""DNAL on stochastic supernets: candidate blocks and whole layers may vanish, exactly."""

from __future__ import annotations

import pytest
import torch
from conftest import calibrate_batchnorm

from hwdnal.complexity import predicted_params
from hwdnal.errors import UserError
from hwdnal.gating.alignment import align_keep_mask, aligned_group_counts
from hwdnal.gating.gate import GateMode
from hwdnal.gating.model import GatedModel
from hwdnal.gating.prune import prune_physically
from hwdnal.models import create_model
from hwdnal.models.proxyless_supernet import (
    MixedLayer,
    ProxylessSupernet,
    describe_blocks,
    mixed_layers,
    parse_candidates,
)


def _small_supernet() -> ProxylessSupernet:
    """Two residual layers and one strided layer per stage, two candidates each."""
    torch.manual_seed(0)
    return ProxylessSupernet(10, 3, candidates=((3, 3), (5, 6)),
                             stages=((8, 2, 1), (16, 2, 2)), stem_stride=1, stem=8, first=8,
                             last=32)


def _gated(net: torch.nn.Module, size: int = 16) -> tuple[GatedModel, torch.Tensor]:
    calibrate_batchnorm(net, (4, 3, size, size))
    x = torch.randn(2, 3, size, size)
    return GatedModel(net, x), x


def _off(keep: torch.Tensor, gated: GatedModel, layer: str, name: str | None = None) -> None:
    for block in gated.blocks:
        if block.layer == layer and (name is None or block.name == name):
            group = gated.plan.groups[block.group]
            keep[group.start : group.stop] = False


def test_every_candidate_is_a_block_with_its_own_gates() -> None:
    gated, _ = _gated(_small_supernet())
    layers = mixed_layers(gated.model)
    assert len(gated.blocks) == 2 * len(layers)
    residual = {name: layer.residual for name, layer in layers.items()}
    assert [b.residual for b in gated.blocks] == [residual[b.layer] for b in gated.blocks]
    assert residual == {"features.4": True, "features.5": True, "features.6": False,
                        "features.7": True}


def test_pruned_supernet_equals_the_hard_gated_one_with_a_dropped_candidate_and_layer() -> None:
    gated, x = _gated(_small_supernet())
    torch.manual_seed(1)
    keep = torch.rand(gated.plan.num_gates) < 0.7
    _off(keep, gated, "features.4", "k3e3")  # an operation not chosen
    _off(keep, gated, "features.5")  # a residual layer with no candidate left: removed
    _off(keep, gated, "features.6", "k5e6")  # a strided layer keeps its other candidate
    gated.set_keep_mask(keep)
    gated.set_mode(GateMode.HARD)
    with torch.no_grad():
        expected = gated(x)
    params = predicted_params(gated)

    pruned = prune_physically(gated).eval()
    with torch.no_grad():
        out = pruned(x)

    assert expected.abs().max() > 1e-3
    assert (out - expected).abs().max().item() <= 1e-4
    assert sum(p.numel() for p in pruned.parameters()) == params
    blocks = {b["layer"]: b for b in describe_blocks(pruned)}
    assert [k["candidate"] for k in blocks["features.4"]["kept"]] == ["k5e6"]
    assert blocks["features.5"]["removed"] and blocks["features.5"]["kept"] == []
    with_dense = {b["layer"]: b for b in describe_blocks(pruned, _small_supernet())}
    assert with_dense["features.4"]["dropped"] == ["k3e3"]
    assert with_dense["features.5"]["dropped"] == ["k3e3", "k5e6"]
    assert with_dense["features.4"]["kept"][0]["of"] == 48
    assert [k["candidate"] for k in blocks["features.6"]["kept"]] == ["k3e3"]
    assert len(blocks["features.7"]["kept"]) == 2


def test_a_layer_without_residual_keeps_its_most_alive_candidate() -> None:
    gated, x = _gated(_small_supernet())
    keep = torch.ones(gated.plan.num_gates, dtype=torch.bool)
    _off(keep, gated, "features.6")
    gated.set_keep_mask(keep)
    with torch.no_grad():  # k5e6 is the least switched off of the two
        group = gated.plan.groups[next(b for b in gated.blocks if b.layer == "features.6"
                                   and b.name == "k5e6").group]
        gated.gate.s[group.start] = -0.5
    mask = gated.keep_mask()
    kept = {b.name: int(mask[gated.plan.groups[b.group].start:
                             gated.plan.groups[b.group].stop].sum())
            for b in gated.blocks if b.layer == "features.6"}
    assert kept == {"k3e3": 0, "k5e6": 1}
    gated.set_mode(GateMode.HARD)
    with torch.no_grad():
        expected = gated(x)
    pruned = prune_physically(gated).eval()
    with torch.no_grad():
        assert (pruned(x) - expected).abs().max().item() <= 1e-4


def test_a_dropped_candidate_adds_nothing_not_its_batchnorm_shift() -> None:
    """The block gate (the largest of its channel gates) zeroes the candidate's output."""
    gated, x = _gated(_small_supernet())
    keep = torch.ones(gated.plan.num_gates, dtype=torch.bool)
    _off(keep, gated, "features.5")
    gated.set_keep_mask(keep)
    gated.set_mode(GateMode.HARD)
    seen: dict[str, torch.Tensor] = {}
    layer = gated.model.features[5]
    handle = layer.register_forward_hook(lambda m, i, o: seen.update(inp=i[0], out=o))
    with torch.no_grad():
        gated(x)
    handle.remove()
    assert torch.equal(seen["out"], seen["inp"])


def test_latency_of_a_dropped_candidate_vanishes() -> None:
    gated, _ = _gated(_small_supernet())
    keep = torch.ones(gated.plan.num_gates, dtype=torch.bool)
    _off(keep, gated, "features.4", "k3e3")
    gated.set_keep_mask(keep)
    presence = gated.layer_presence(hard=True)
    names = list(gated.plan.layers)
    dropped = [n for n in names if n.startswith("features.4.candidates.k3e3.")]
    assert dropped and all(presence[names.index(n)] == 0 for n in dropped)
    assert all(presence[k] == 1 for k, n in enumerate(names) if n not in dropped)
    # soft gates: a differentiable presence, the largest keep probability of the block
    gated.set_mode(GateMode.SOFT)
    soft = gated.layer_presence()
    soft.sum().backward()
    assert gated.gate.s.grad is not None and gated.gate.s.grad.abs().sum() > 0


def test_alignment_drops_a_candidate_with_a_few_channels_rather_than_widening_it() -> None:
    """A candidate the gates left with 2 of its channels is an operation all but dropped:
    rounded to the channel step it goes to 0, not up to a thin branch of 8 (whose fixed
    per-layer costs are what a device pays for); a layer without a residual path keeps
    its largest candidate."""
    torch.manual_seed(0)
    net = ProxylessSupernet(10, 3, candidates=((3, 3), (5, 6)),
                            stages=((16, 2, 1), (32, 2, 2)), stem_stride=1, stem=16,
                            first=16, last=32)
    gated, _ = _gated(net)
    counts = [g.size for g in gated.plan.groups]
    plain = {b.layer for b in gated.blocks if not b.residual}
    for block in gated.blocks:
        counts[block.group] = 2 if block.layer in plain or block.name == "k3e3" else 13
    aligned = aligned_group_counts(gated, counts, 8)
    for block in gated.blocks:
        got = aligned[block.group]
        if block.layer in plain:  # both candidates at 2: the first, largest, keeps one step
            assert got == (8 if block.name == "k3e3" else 0)
        else:
            assert got == (0 if block.name == "k3e3" else 16)
    others = [k for k in range(len(counts)) if k not in {b.group for b in gated.blocks}]
    assert all(aligned[k] == counts[k] for k in others), "full groups stay full"
    keep = torch.zeros(gated.plan.num_gates, dtype=torch.bool)
    for group, count in zip(gated.plan.groups, counts, strict=True):
        keep[group.start : group.start + count] = True
    mask = align_keep_mask(gated, keep, 8)
    assert [int(mask[g.start : g.stop].sum()) for g in gated.plan.groups] == aligned


@pytest.mark.parametrize(("name", "size", "layers"), [("proxyless_supernet_cifar", 28, 21),
                                                       ("proxyless_supernet", 224, 21)])
def test_named_supernets(name: str, size: int, layers: int) -> None:
    net = create_model(name, num_classes=10, in_channels=1).eval()
    found = mixed_layers(net)
    assert len(found) == layers
    assert all(len(layer.candidates) == 6 for layer in found.values())
    assert {k for layer in found.values() for k in layer.candidates} == {
        "k3e3", "k3e6", "k5e3", "k5e6", "k7e3", "k7e6"}
    with torch.no_grad():
        assert net(torch.randn(1, 1, size, size)).shape == (1, 10)


def test_candidates_are_an_option() -> None:
    net = create_model("proxyless_supernet_cifar", 10, 1, candidates="3x3,5x6")
    assert all(list(layer.candidates) == ["k3e3", "k5e6"] for layer in mixed_layers(net).values())
    assert parse_candidates("7x6") == ((7, 6),)
    for bad in ("3x", "3*6", "4x6", "3x1", "3x3,3x3", ""):
        with pytest.raises(UserError):
            parse_candidates(bad)
    with pytest.raises(UserError, match="applies to the supernets"):
        create_model("resnet20", candidates="3x3")


def test_a_layer_without_residual_refuses_to_lose_every_candidate() -> None:
    layer = MixedLayer(8, 16, 2, ((3, 3),))
    with pytest.raises(ValueError):
        layer.keep_only([])


def test_the_smallest_supernet_drops_every_candidate_it_may() -> None:
    from hwdnal.budget.fit import mask_from_counts, minimal_counts, ranked_channels

    gated, x = _gated(_small_supernet())
    counts = minimal_counts(gated, 4)
    by_block = {(b.layer, b.name): counts[b.group] for b in gated.blocks}
    assert by_block == {("features.4", "k3e3"): 0, ("features.4", "k5e6"): 0,
                        ("features.5", "k3e3"): 0, ("features.5", "k5e6"): 0,
                        ("features.6", "k3e3"): 4, ("features.6", "k5e6"): 0,
                        ("features.7", "k3e3"): 0, ("features.7", "k5e6"): 0}
    gated.set_keep_mask(mask_from_counts(gated, ranked_channels(gated), counts))
    smallest = prune_physically(gated).eval()
    blocks = {b["layer"]: b for b in describe_blocks(smallest)}
    assert [b["removed"] for b in blocks.values()] == [True, True, False, True]
    with torch.no_grad():
        assert smallest(x).shape == (2, 10)


@pytest.mark.slow
@pytest.mark.latency
def test_a_budgeted_search_chooses_blocks_and_meets_the_budget(tmp_path) -> None:
    """The whole flow on a supernet: profile, architecture, fit by measuring, prune,
    finetune, compile; result.json says which candidates each layer kept."""
    from budgets import reachable_budget
    from tiny_run import quick_target

    from hwdnal.search import DnalSearch, SearchConfig

    target = quick_target(tmp_path)
    # 40% of the way from the smallest reachable network to dense (52% on an AMD EPYC)
    budget = reachable_budget(target, "toy_models:tiny_supernet", where=0.4)
    config = SearchConfig(model="toy_models:tiny_supernet", data="synthetic", input_size=16,
                          train_subset=256, test_subset=128, batch_size=64, epochs_weights=1,
                          epochs_arch=2, epochs_finetune=1, budget=budget, target=str(target))
    result = DnalSearch(config, tmp_path / "run").run()
    # the fit keeps a round measured within that round's budget (the last round may be one
    # it rejected); the compile stage measures again, and a 0.04 ms network with the quick
    # target's few timed runs varies by some percent
    assert any(r["measured_ms"] <= r["budget_ms"] for r in result["fit_rounds"])
    assert result["compiled"]["cpu-quick"]["median_ms"] <= result["budget_ms"] * 1.2
    layers = [b["layer"] for b in result["blocks"]]
    assert layers == ["features.4", "features.5", "features.6", "features.7"]
    dropped = sum(2 - len(b["kept"]) for b in result["blocks"])
    assert dropped >= 1, f"a {budget} budget on this supernet is met by dropping candidates"
    pruned = torch.load(tmp_path / "run" / "pruned.pt", weights_only=False)
    assert [{**b, "kept": [{k: v for k, v in c.items() if k != "of"} for c in b["kept"]],
             "dropped": []} for b in result["blocks"]] == describe_blocks(pruned)
    for block in result["blocks"]:
        assert sorted([*[c["candidate"] for c in block["kept"]], *block["dropped"]]) == [
            "k3e3", "k5e6"]
        assert all(0 < c["channels"] <= c["of"] for c in block["kept"])


def test_the_report_draws_the_chosen_blocks(tmp_path) -> None:
    import json

    from hwdnal.report import write_report

    blocks = [
        {"layer": "features.4", "residual": True, "kept": [
            {"candidate": "k5e6", "kernel": 5, "expansion": 6, "channels": 16, "of": 48}],
         "dropped": ["k3e3"], "removed": False},
        {"layer": "features.5", "residual": True, "kept": [], "dropped": ["k3e3", "k5e6"],
         "removed": True},
        {"layer": "features.6", "residual": False, "kept": [
            {"candidate": "k3e3", "kernel": 3, "expansion": 3, "channels": 8, "of": 24},
            {"candidate": "k5e6", "kernel": 5, "expansion": 6, "channels": 48, "of": 48}],
         "dropped": [], "removed": False},
    ]
    (tmp_path / "result.json").write_text(json.dumps({"model": "m", "data": "d",
                                                       "blocks": blocks}))
    text = write_report(tmp_path).read_text()
    assert "## Chosen blocks" in text
    assert "3 searchable layers: 1 removed, 3 candidate block(s) dropped" in text
    assert "| features.5 | yes | **layer removed** | k3e3, k5e6 |" in text
    assert "| features.6 | no | k3e3 (8/24), k5e6 (48/48) |  |" in text
    assert (tmp_path / "report" / "chosen_blocks.png").stat().st_size > 2000
