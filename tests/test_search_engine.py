"""The search engine through its Python API, on small synthetic data (seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hwdnal.errors import UserError
from hwdnal.search import DnalSearch, GateLossTerm, SearchConfig, SearchObserver

TINY = dict(model="resnet20", data="synthetic", input_size=16, train_subset=256,
            test_subset=128, batch_size=64, epochs_weights=1, epochs_arch=1, epochs_finetune=1,
            compile=False)


class Recorder(SearchObserver):
    def __init__(self) -> None:
        self.started: list[tuple[str, int]] = []
        self.steps: dict[str, list[dict[str, float]]] = {}
        self.done: dict[str, list[int]] = {}
        self.total_steps: dict[str, int] = {}

    def stage_started(
        self, stage: str, epochs: int, steps: int, first_epoch: int, first_step: int = 0
    ) -> None:
        self.started.append((stage, first_epoch))
        self.total_steps[stage] = epochs * steps

    def step(self, stage: str, done: int, values: dict[str, float]) -> None:
        self.steps.setdefault(stage, []).append(values)
        self.done.setdefault(stage, []).append(done)


def test_result_has_the_contract_keys_and_delta_rises_from_1_to_1e4(tmp_path: Path):
    recorder = Recorder()
    DnalSearch(SearchConfig(**{**TINY, "epochs_arch": 2}), tmp_path / "run", recorder).run()
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    for key in ("dense", "pruned", "budget_ms", "target", "groups", "stages", "artifacts"):
        assert key in result
    assert {"name", "kept", "total"} <= set(result["groups"][0])
    assert {"name", "epochs", "seconds"} <= set(result["stages"][0])
    deltas = [v["delta"] for v in recorder.steps["architecture"]]
    assert deltas == sorted(deltas)
    assert deltas[-1] == pytest.approx(1e4)
    assert recorder.done["architecture"][0] == 1  # progress is shown from the first step
    total = recorder.total_steps["architecture"]
    assert deltas[0] == pytest.approx(1e4 ** (1 / (total - 1)))  # one step past δ = 1


def test_weights_option_starts_from_given_weights_and_skips_the_weight_stage(tmp_path: Path):
    first = DnalSearch(SearchConfig(**TINY), tmp_path / "a").run()
    recorder = Recorder()
    dense = str(tmp_path / "a" / "dense.pt")
    config = SearchConfig(**{**TINY, "epochs_weights": 5}, weights=dense,
                          trust_weights_pickle=True)  # a run's own dense.pt: a whole module
    second = DnalSearch(config, tmp_path / "b", recorder).run()
    assert "weights" not in recorder.steps
    assert second["stages"][0] == {"name": "weights", "epochs": 0, "world_size": 1,
                                   "seconds": second["stages"][0]["seconds"]}
    assert second["dense"]["accuracy"] == pytest.approx(first["dense"]["accuracy"])


def test_weights_that_do_not_fit_the_model_are_a_clear_error(tmp_path: Path):
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "bad.pt")
    config = SearchConfig(**TINY, weights=str(tmp_path / "bad.pt"))
    with pytest.raises(UserError, match="does not fit"):
        DnalSearch(config, tmp_path / "run").run()


def test_extra_loss_terms_join_the_architecture_loss_and_may_adapt(tmp_path: Path):
    seen: list[float] = []

    def width(gated) -> torch.Tensor:
        return sum(c.out_channels for c in gated.channel_counts()) / 1000

    def grow(term: GateLossTerm, value: torch.Tensor) -> None:
        seen.append(float(value))
        term.weight *= 1.1

    term = GateLossTerm("width", 1.0, width, after_step=grow)
    search = DnalSearch(SearchConfig(**TINY), tmp_path / "run")
    search.add_loss_term(term)
    result = search.run()
    assert len(seen) == 4 and term.weight == pytest.approx(1.1**4)
    assert "width" in result["arch_history"][0]


def test_a_stronger_sparsity_term_keeps_fewer_channels(tmp_path: Path):
    def kept(lambda_a: float) -> int:
        config = SearchConfig(**{**TINY, "epochs_arch": 2}, lambda_a=lambda_a)
        result = DnalSearch(config, tmp_path / f"l{lambda_a}").run()
        return sum(g["kept"] for g in result["groups"])

    assert kept(8.0) < kept(0.5)



def test_the_same_seed_gives_the_same_pruned_architecture(tmp_path: Path):
    config = SearchConfig(**{**TINY, "epochs_arch": 2})
    first = DnalSearch(config, tmp_path / "a").run()
    second = DnalSearch(config, tmp_path / "b").run()
    assert first["groups"] == second["groups"]
    assert [layer["pruned_out"] for layer in first["layers"]] == [
        layer["pruned_out"] for layer in second["layers"]]
    other = DnalSearch(SearchConfig(**{**TINY, "epochs_arch": 2}, seed=1),
                       tmp_path / "c").run()
    assert other["groups"] != first["groups"], "the seed must matter"


def test_a_run_resumed_between_architecture_and_prune_prunes_exactly_as_an_uninterrupted_one(
    tmp_path: Path,
):
    """The architecture stage leaves gates, δ and BatchNorm statistics (it normalises with
    batch statistics while the gates learn); a resume at the prune stage must restore all."""
    run = tmp_path / "run"
    DnalSearch(SearchConfig(**TINY), run).run()
    uninterrupted = torch.load(run / "checkpoints" / "pruned_init.pt", weights_only=False)

    # the state a run stopped right after its architecture stage leaves behind
    state = json.loads((run / "state.json").read_text())
    state["finished"] = ["weights", "architecture"]
    state["stages"] = [s for s in state["stages"] if s["name"] in state["finished"]]
    (run / "state.json").write_text(json.dumps(state))
    for name in ("pruned_init.pt", "finetune.pt"):
        (run / "checkpoints" / name).unlink(missing_ok=True)
    for name in ("pruned.pt", "result.json"):
        (run / name).unlink(missing_ok=True)
    recorder = Recorder()
    DnalSearch(SearchConfig(**TINY), run, recorder).run()

    assert [stage for stage, _ in recorder.started][:1] == ["prune"]
    resumed = torch.load(run / "checkpoints" / "pruned_init.pt", weights_only=False)
    expected, found = uninterrupted["model"].state_dict(), resumed["model"].state_dict()
    assert expected.keys() == found.keys()
    for key in expected:
        assert torch.equal(expected[key], found[key]), key


def test_mixed_precision_options_are_checked_before_the_run_directory(tmp_path: Path):
    with pytest.raises(UserError, match="--amp fp8 is not known"):
        DnalSearch(SearchConfig(**TINY, amp="fp8"), tmp_path / "run").run()
    assert not (tmp_path / "run").exists()


def test_torch_compile_trains_the_plain_networks_and_prunes_the_same_way(tmp_path: Path):
    """Slow to start (inductor compiles the weight and finetune graphs), same engine."""
    result = DnalSearch(SearchConfig(**TINY, torch_compile=True), tmp_path / "run").run()
    assert [s["name"] for s in result["stages"]] == ["weights", "architecture", "prune",
                                                     "finetune"]
    pruned = torch.load(tmp_path / "run" / "pruned.pt", weights_only=False)
    assert type(pruned).__name__ == "CifarResNet", "the delivered network is not the wrapper"
    assert result["pruned"]["params"] == sum(p.numel() for p in pruned.parameters())


@pytest.mark.slow
def test_without_pressure_the_architecture_stage_keeps_the_network(tmp_path: Path,
                                                                   fashion_mnist_available):
    """λa = 0 and no latency term: nothing asks for a smaller network, so the stage keeps
    (almost) every channel. With batch statistics and gates starting half open it ended near
    the smallest network all the same: the gates ratcheted shut."""
    config = SearchConfig(model="resnet20", data="fashion-mnist", train_subset=4000,
                          test_subset=1000, batch_size=64, epochs_weights=1, epochs_arch=2,
                          epochs_finetune=0, lambda_a=0.0, compile=False)
    result = DnalSearch(config, tmp_path / "run").run()
    arch = result["arch_mask"]
    assert arch["kept"] >= 0.95 * arch["total"], result["arch_history"]
    assert arch["accuracy_before_finetune"] >= result["dense"]["accuracy"] - 0.02


@pytest.mark.slow
@pytest.mark.latency
def test_with_a_budget_the_stage_itself_lands_near_it(tmp_path: Path, fashion_mnist_available):
    """The demo's settings and budget (50%, or half-way to the smallest reachable network
    where this CPU cannot come near 50%): the architecture stage's own mask, before the fit
    measures anything, is within ±15% of the budget by the LUT; the fit only adjusts it."""
    from budgets import reachable_budget, reachable_fraction

    floor = reachable_fraction("cpu", input_size=28, in_channels=1, where=0.0)
    budget = "50%" if floor < 0.45 else reachable_budget("cpu", input_size=28, in_channels=1)
    config = SearchConfig(model="resnet20", data="fashion-mnist", train_subset=20000,
                          test_subset=2000, epochs_weights=4, epochs_arch=1, epochs_finetune=0,
                          budget=budget, compile=False)
    result = DnalSearch(config, tmp_path / "run").run()
    arch = result["arch_mask"]
    assert 0.85 <= arch["of_budget"] <= 1.15, (budget, arch, result["arch_curve"][-5:])
    assert arch["fit_changed"] < 0.5 * arch["total"], arch
