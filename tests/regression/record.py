"""Record the regression fixtures from the code checked out here (issue 23, step 0).

    python tests/regression/record.py

Runs every scenario twice, each in a fresh process with scenarios.PINNED_ENV, refuses to
write when the two runs differ, and writes fixtures/NAME.json and fixtures/meta.json (the
commit, the versions, the CPU). Record from a clean checkout of the commit the
restructuring starts from: the fixture says what that commit does.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

from scenarios import SCENARIOS, compare, run_in_process  # noqa: E402


def main() -> int:
    changed = subprocess.run(["git", "status", "--porcelain", "--", "hwdnal", "cli",
                              "tests/regression", "tests/latency_helpers.py",
                              "tests/toy_models.py"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
    if changed.strip():
        print(f"record.py: commit these first, the fixture names a commit:\n{changed}",
              file=sys.stderr)
        return 2
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.strip()
    fixtures = HERE / "fixtures"
    fixtures.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in SCENARIOS:
            first = run_in_process(name, Path(tmp) / name / "a")
            second = run_in_process(name, Path(tmp) / name / "b")
            difference = compare(first, second)
            if difference:
                print(f"record.py: {name} is not reproducible: {difference}", file=sys.stderr)
                return 1
            first.pop("code", None)
            (fixtures / f"{name}.json").write_text(json.dumps(first, indent=1) + "\n")
            print(f"recorded {name}: kept {first['result']['arch_mask']['kept']} gates by "
                  f"the stage, pruned accuracy {first['accuracies']['pruned']}")
    import torch
    import torch_pruning

    meta = {"commit": commit, "python": platform.python_version(),
            "torch": torch.__version__, "torch_pruning": torch_pruning.__version__,
            "machine": platform.machine(), "cpu": platform.processor(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    (fixtures / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
