"""The search under torchrun: data-parallel on gloo here (NCCL on GPUs), rank 0 alone
measuring and writing, the ranks agreeing on the architecture.

The end-to-end tests start real ``torchrun --nproc-per-node 2 --no-python hwdnal search``
jobs on a Fashion-MNIST subset; the unit tests start two gloo processes by fork.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from budgets import reachable_budget

from hwdnal.distributed import Cluster, PeerError
from hwdnal.errors import UserError
from hwdnal.gating.gate import GateMode
from hwdnal.gating.model import GatedModel
from hwdnal.search import DnalSearch, SearchConfig

BIN = Path(sys.executable).parent
SMALL = ["--model", "resnet20", "--data", "fashion-mnist", "--train-subset", "1536",
         "--test-subset", "512", "--batch-size", "64", "--epochs-weights", "1",
         "--epochs-arch", "1", "--epochs-finetune", "1", "--seed", "3"]


def _torchrun(out: Path, *options: str, **popen: object) -> subprocess.Popen:
    command = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "--no-python",
               str(BIN / "hwdnal"), "search", "--out", str(out), *options]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


def _finish(process: subprocess.Popen, timeout: float = 600) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "run"
    _finish(_torchrun(out, *SMALL, "--no-compile"))
    return out


def _pruned_equals_gated(run: Path) -> int:
    """The pruned network (before finetuning) computes what the dense one with the
    architecture stage's hard gates computes; returns the channels kept."""
    dense = torch.load(run / "dense.pt", weights_only=False)
    architecture = torch.load(run / "checkpoints" / "architecture.pt", weights_only=False)
    pruned_init = torch.load(run / "checkpoints" / "pruned_init.pt", weights_only=False)
    pruned = pruned_init["model"]
    example = torch.randn(4, 1, 28, 28)
    gated = GatedModel(dense, example[:2])
    gated.gate.load_state_dict(architecture["gate"])
    gated.model.load_state_dict(architecture["model"])
    gated.set_delta(architecture["delta"])
    gated.set_keep_mask(pruned_init["keep"])  # the gates' mask, aligned to the channel step
    gated.set_mode(GateMode.HARD)
    gated.eval()
    pruned.eval()
    with torch.no_grad():
        expected = gated(example)
        assert torch.allclose(pruned(example), expected, atol=1e-4)
    kept = int(gated.keep_mask().sum())
    result = json.loads((run / "result.json").read_text())
    assert sum(group["kept"] for group in result["groups"]) == kept
    assert result["pruned"]["params"] == sum(p.numel() for p in pruned.parameters())
    return kept


def test_torchrun_runs_every_stage_on_two_ranks_whose_masks_agree(two_rank_run: Path):
    result = json.loads((two_rank_run / "result.json").read_text())
    distributed = result["distributed"]
    assert distributed["world_size"] == 2 and distributed["backend"] == "gloo"
    digests = distributed["keep_mask_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert [s["name"] for s in result["stages"]] == ["weights", "architecture", "prune",
                                                     "finetune"]
    assert all(s["world_size"] == 2 for s in result["stages"])
    assert 0.3 < result["pruned"]["accuracy"] <= 1
    # only rank 0 wrote the run directory: one set of files, no per-rank copies
    assert sorted(p.name for p in (two_rank_run / "checkpoints").iterdir()) == [
        "architecture.pt", "finetune.pt", "pruned_init.pt", "weights.pt"]


def test_two_ranks_and_one_process_find_architectures_of_the_same_size(two_rank_run: Path,
                                                                       tmp_path: Path):
    """From the same dense weights the same seed sees the same global batches either way;
    only BatchNorm's statistics differ (per rank, half the batch), so the architectures are
    close, not identical. (The weights come from the two ranks' run: a 24-step weight stage
    is chaotic, and on some CPUs its two copies end 13 pp apart, the weaker one then pruned
    to 40% by the same λa.)"""
    options = dict(zip(SMALL[::2], SMALL[1::2], strict=True))
    config = SearchConfig(
        model="resnet20", data="fashion-mnist", train_subset=int(options["--train-subset"]),
        test_subset=int(options["--test-subset"]), batch_size=64, epochs_weights=1,
        epochs_arch=1, epochs_finetune=1, seed=3, compile=False,
        weights=str(two_rank_run / "checkpoints" / "weights.pt"))
    DnalSearch(config, tmp_path / "alone").run()
    kept_alone = _pruned_equals_gated(tmp_path / "alone")
    kept_ranks = _pruned_equals_gated(two_rank_run)
    total = sum(g["total"] for g in json.loads(
        (two_rank_run / "result.json").read_text())["groups"])
    assert abs(kept_alone - kept_ranks) <= 0.05 * total, (kept_alone, kept_ranks, total)


@pytest.mark.latency
def test_a_budgeted_torchrun_search_measures_on_rank_0_and_compiles(tmp_path: Path):
    out = tmp_path / "run"
    budget = reachable_budget("cpu", input_size=28, in_channels=1)
    output = _finish(_torchrun(out, *SMALL, "--budget", budget))
    result = json.loads((out / "result.json").read_text())
    assert result["distributed"]["world_size"] == 2
    assert result["budget_met"], result["fit_rounds"]
    assert "compile" in [s["name"] for s in result["stages"]]
    assert output.count("fit round 1") == 1, "one rank reports, the others stay quiet"


def test_a_stopped_torchrun_search_resumes_under_torchrun(tmp_path: Path):
    out = tmp_path / "run"
    options = [*SMALL, "--epochs-weights", "3", "--no-compile"]
    process = _torchrun(out, *options, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (out / "checkpoints" / "weights.pt").exists():  # the first epoch is done
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches torchrun and every rank
    output, _ = process.communicate(timeout=120)
    assert "progress is saved" in output, output[-3000:]
    assert output.count("progress is saved") == 1, "rank 0 alone prints the resume line"
    assert not (out / "result.json").exists()
    checkpoint = torch.load(out / "checkpoints" / "weights.pt", weights_only=False)
    resumed = _finish(_torchrun(out, *options))
    assert checkpoint["step"] >= 1 and "resuming" in resumed
    result = json.loads((out / "result.json").read_text())
    assert result["distributed"]["world_size"] == 2
    assert [s["name"] for s in result["stages"]][-1] == "finetune"


# -- the cluster, two gloo processes by fork ------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _two_ranks(work, *args: object) -> None:
    """Run ``work(cluster, *args)`` on two forked gloo ranks; fails if either fails."""
    port = _free_port()
    children = []
    for rank in range(2):
        pid = os.fork()
        if pid == 0:  # the child: join, work, leave with 0 only if the work held
            code = 1
            try:
                os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                                  RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
                cluster = Cluster.from_environment("cpu", timedelta(seconds=3))
                work(cluster, *args)
                cluster.close()
                code = 0
            except BaseException as error:
                print(f"rank {rank}: {type(error).__name__}: {error}", file=sys.stderr)
            finally:
                os._exit(code)
        children.append(pid)
    codes = [os.waitpid(pid, 0)[1] for pid in children]
    assert codes == [0, 0], codes


def _mismatch(cluster: Cluster) -> None:
    mask = torch.ones(16, dtype=torch.bool)
    mask[3] = cluster.rank == 0  # rank 1 drops a channel rank 0 keeps
    with pytest.raises(UserError, match="keep mask differs between ranks"):
        cluster.check_same("keep mask", mask)
    assert len(cluster.check_same("keep mask", torch.ones(16, dtype=torch.bool))) == 2


def test_a_keep_mask_that_differs_between_ranks_is_an_error_on_every_rank():
    _two_ranks(_mismatch)


def _slow_main(cluster: Cluster) -> None:
    def profile() -> str:
        time.sleep(6)  # twice the training group's 3 s collective timeout
        return "lut"

    cpu_before = time.process_time()
    assert cluster.run_on_main(profile) == "lut"
    if not cluster.is_main:  # waiting costs no CPU: rank 0's latency measurements stay clean
        assert time.process_time() - cpu_before < 0.5
    total = cluster.sum(torch.ones(1))  # the training group still works afterwards
    assert float(total) == 2


def test_the_other_ranks_wait_for_rank_0_longer_than_the_collective_timeout():
    _two_ranks(_slow_main)


def _failing_main(cluster: Cluster) -> None:
    def bad_lut() -> None:
        raise UserError("profiles/x.json is not a LUT")

    expected = UserError if cluster.is_main else PeerError
    with pytest.raises(expected, match="is not a LUT"):
        cluster.run_on_main(bad_lut)
    errors = {0: None, 1: UserError("--data-dir /nope does not exist")}
    with pytest.raises(UserError, match="/nope"):
        cluster.raise_if_any(errors[cluster.rank])


def test_an_error_on_one_rank_stops_every_rank_with_its_message():
    _two_ranks(_failing_main)


def test_the_global_batch_must_divide_among_the_ranks():
    with pytest.raises(UserError, match="multiple of 2"):
        Cluster(rank=0, world_size=2).check_batch_size(65)
    Cluster(rank=0, world_size=2).check_batch_size(64)


def test_a_rank_given_a_numbered_gpu_is_told_to_pass_cuda(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match="pass --device cuda"):
        Cluster.from_environment("cuda:1")


def test_sync_batchnorm_is_refused_without_torchrun_on_gpus(tmp_path: Path):
    config = SearchConfig(model="resnet20", data="synthetic", input_size=16, compile=False,
                          sync_batchnorm=True)
    with pytest.raises(UserError, match="--sync-batchnorm needs torchrun with --device cuda"):
        DnalSearch(config, tmp_path / "run").run()
    assert not (tmp_path / "run").exists(), "refused before the run directory"


def test_sync_batchnorm_layers_turn_back_into_the_networks_own_batchnorms():
    from hwdnal.distributed import revert_sync_batchnorm, to_sync_batchnorm
    from hwdnal.models import create_model

    model = create_model("resnet20", 10, 1)
    model.bn1.running_mean.add_(0.5)
    example = torch.randn(2, 1, 16, 16)
    model.eval()
    expected = model(example)
    synced = to_sync_batchnorm(model)
    assert isinstance(synced.bn1, torch.nn.SyncBatchNorm)
    plain = revert_sync_batchnorm(synced)
    assert type(plain.bn1) is torch.nn.BatchNorm2d
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in plain.modules())
    assert torch.equal(plain.bn1.running_mean, model.bn1.running_mean)
    assert torch.allclose(plain.eval()(example), expected)
