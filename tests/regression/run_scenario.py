"""Run one regression scenario in this process and write its summary.

    python tests/regression/run_scenario.py NAME OUT

Call it in a fresh process with scenarios.PINNED_ENV (test_regression.py and record.py do):
the thread count and the CPU kernels are fixed before torch starts.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # scenarios, latency_helpers, toy_models


def main(name: str, out: Path) -> None:
    import torch

    torch.set_num_threads(1)
    from scenarios import COMMON, SCENARIOS, ScriptedDevice, build_lut, summarize

    import hwdnal.search as search

    fields = {**COMMON, **SCENARIOS[name]}
    out.mkdir(parents=True, exist_ok=True)
    extra = {}
    if fields.get("lut"):
        fields["lut"] = str(build_lut(fields["model"], out))
        device = ScriptedDevice(Path(fields["lut"]))
        if "measurer" in inspect.signature(search.DnalSearch).parameters:
            extra["measurer"] = device
        else:  # the recorded commit: it opens its device itself
            search.open_measurer = lambda target, *args: device
    run_dir = out / "run"
    search.DnalSearch(search.SearchConfig(**fields), run_dir, **extra).run()
    summary = summarize(run_dir)
    summary["code"] = str(Path(search.__file__).resolve().parent.parent)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
