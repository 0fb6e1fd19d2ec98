"""The restructuring's guard (issue 23): a tiny seeded search gives what it gave before.

Each scenario (tests/regression/scenarios.py) runs a whole search in a fresh process and is
compared, masks first, with the summary recorded from the commit in fixtures/meta.json.
Where this CPU does not reproduce the recording (its kernels round differently), the
recorded commit itself is run here and today's code must match that instead: the check is
always "the same code path gives the same result on the same machine".
"""

from __future__ import annotations

import json
import platform
import subprocess
import tarfile
from pathlib import Path

import pytest

REGRESSION = Path(__file__).parent / "regression"
FIXTURES = REGRESSION / "fixtures"
ROOT = Path(__file__).resolve().parent.parent

from regression.scenarios import SCENARIOS, compare, run_in_process  # noqa: E402

if not (FIXTURES / "meta.json").exists():
    pytest.skip("the fixtures are not recorded yet: python tests/regression/record.py on a "
                "clean checkout of the commit the restructuring starts from",
                allow_module_level=True)
META = json.loads((FIXTURES / "meta.json").read_text())


@pytest.fixture(scope="module")
def recorded_commit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The recorded commit's tree, unpacked once for the module (from git's history)."""
    where = tmp_path_factory.mktemp("recorded")
    archive = where / "tree.tar"
    done = subprocess.run(["git", "archive", "--format=tar", "-o", str(archive),
                           META["commit"]], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"this CPU does not reproduce the fixtures and the recorded commit "
                    f"{META['commit'][:12]} is not in this clone's history to run instead "
                    f"({done.stderr.strip()}): clone with full history")
    with tarfile.open(archive) as tar:
        tar.extractall(where / "tree", filter="data")
    return where / "tree"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_a_tiny_seeded_search_gives_what_the_recorded_commit_gave(
        name: str, tmp_path: Path, request: pytest.FixtureRequest):
    import torch
    import torch_pruning

    versions = {"torch": torch.__version__, "torch_pruning": torch_pruning.__version__,
                "machine": platform.machine()}
    other = {k: (META[k], v) for k, v in versions.items() if META[k] != v}
    if other:
        pytest.skip(f"recorded with other versions or another architecture: {other}")
    expected = json.loads((FIXTURES / f"{name}.json").read_text())
    actual = run_in_process(name, tmp_path / "now")
    difference = compare(expected, actual)
    if difference is None:
        return
    recorded = run_in_process(name, tmp_path / "then",
                              code=request.getfixturevalue("recorded_commit"))
    assert recorded["code"] != actual["code"], "the recorded commit ran from its own tree"
    if compare(expected, recorded) is None:
        pytest.fail(f"{name} no longer gives what {META['commit'][:12]} gave: {difference}")
    # this CPU rounds differently from the recording one: judge against the recorded
    # commit run here
    again = compare(recorded, actual)
    assert again is None, f"{name} differs from {META['commit'][:12]} run here: {again}"
