#!/usr/bin/env bash
# One command for a lent GPU machine (an H100/H200 with torch and onnxruntime, no TensorRT,
# no network): the CUDA paths that a CPU-only machine cannot run, with a log and a JSON
# summary under OUTDIR. It finishes in under 9 minutes; each step has its own time limit.
#
#   scripts/gpu-check.sh --prepare            # here, with PyPI: wheels the GPU machine lacks
#   scripts/gpu-check.sh OUTDIR               # there: the checks
#
# Steps (each recorded with its exit code, seconds and figures in OUTDIR/summary.json):
#   1. the CUDA variants of the tests (pytest -k "cuda or gpu");
#   2. a budgeted `hwdnal search --device cuda --target cpu --budget 50%`;
#   3. the same under `torchrun --nproc-per-node 1`;
#   4. a torch-cuda profile with --validate;
#   5. bench/train_speed.py --device cuda.
# Without an NVIDIA GPU it says so in one line and exits with 2. Any step failing makes the
# exit code 1; the summary names which.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WHEELS="$ROOT/.whl"
# what the GPU image lacks of hwdnal's dependencies (pure Python; torch, onnx, onnxruntime,
# typer, rich, matplotlib and pytest are there)
MISSING_WHEELS=("torch-pruning==1.6.1" "onnxconverter-common==1.16.0")

usage() { echo "usage: scripts/gpu-check.sh OUTDIR | --prepare" >&2; exit 2; }

if [ "${1:-}" = "--prepare" ]; then
    mkdir -p "$WHEELS"
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$WHEELS" "${MISSING_WHEELS[@]}" \
        || { echo "error: could not download ${MISSING_WHEELS[*]} into .whl/" >&2; exit 2; }
    if [ -d /usr/share/datasets/fashion-mnist ] && [ ! -d data/fashion-mnist ]; then
        mkdir -p data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz data/fashion-mnist/
    fi
    echo "prepared: $(ls "$WHEELS" | tr '\n' ' ')"
    echo "on the GPU machine carry .whl (and data, for Fashion-MNIST) and run: scripts/gpu-check.sh \$OUT"
    exit 0
fi
[ $# -eq 1 ] || usage
case "$1" in -*) usage ;; esac
OUTDIR=$1

PYTHON=${PYTHON:-python3}
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "error: no NVIDIA GPU on this machine (nvidia-smi finds none): run scripts/gpu-check.sh on a lent GPU machine" >&2
    exit 2
fi
if ! "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "error: no NVIDIA GPU that torch can use ($PYTHON: torch.cuda.is_available() is False or torch is missing)" >&2
    exit 2
fi

mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
LOG="$OUTDIR/gpu-check.log"
STEPS="$OUTDIR/steps.jsonl"
: >"$LOG"; : >"$STEPS"
WORK=$(mktemp -d /tmp/gpu-check.XXXXXX)
export PYTHONUNBUFFERED=1 HWDNAL_PROFILES_DIR="$WORK/profiles"
log() { echo "$*" | tee -a "$LOG"; }

# hwdnal and the agent, installed without network into a private site folder
SITE="$WORK/site"
install_args=(--no-index --no-deps --no-build-isolation --no-compile --no-cache-dir -q --target "$SITE")
if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip install "${install_args[@]}" "$WHEELS"/*.whl >>"$LOG" 2>&1
fi
if ! "$PYTHON" -m pip install "${install_args[@]}" ./agent . >>"$LOG" 2>&1; then
    log "error: could not install hwdnal into $SITE (see $LOG)"; exit 1
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PATH="$SITE/bin:$PATH"
if ! "$PYTHON" -c 'import torch_pruning' 2>/dev/null; then
    log "error: torch-pruning is missing: run scripts/gpu-check.sh --prepare here and carry .whl"
    exit 1
fi
DATA=(--data synthetic)  # Fashion-MNIST when carried in data/fashion-mnist (--prepare copies it)
if [ -f data/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    DATA=(--data fashion-mnist)
fi

failed=0
# step NAME LIMIT_S COMMAND...: runs it with a limit, logs it, records {name, rc, seconds}
step() {
    local name=$1 limit=$2; shift 2
    log ""; log "== $name: $* (limit ${limit}s)"
    local start end rc
    start=$(date +%s.%N)
    timeout --signal=INT --kill-after=20 "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    end=$(date +%s.%N)
    [ $rc -eq 0 ] || failed=1
    "$PYTHON" - "$STEPS" "$name" "$rc" "$start" "$end" "$*" <<'PY'
import json, sys
path, name, rc, start, end, command = sys.argv[1:]
with open(path, "a") as f:
    f.write(json.dumps({"name": name, "rc": int(rc), "seconds": round(float(end) - float(start), 1),
                        "timed_out": int(rc) in (124, 137), "command": command}) + "\n")
PY
    log "== $name: exit $rc"
}

SEARCH=(--model resnet20 "${DATA[@]}" --train-subset 4096 --test-subset 1024 --batch-size 128
        --epochs-weights 2 --epochs-arch 1 --epochs-finetune 1 --target cpu --budget 50%
        --device cuda)
cat >"$WORK/gpu-torch.toml" <<'TOML'
name = "gpu-torch"
description = "this GPU through torch (CUDA graphs), fp32: the GPU path without TensorRT"
runtime = "torch-cuda"
device = "cuda"
precision = "fp32"
batch = 1
threads = 1
warmup = 20
iterations = 100
min_seconds = 0.2

[profile]
grid_step = 8
grid_points = 8
preferred_channel_step = 8
layer_warmup = 10
layer_iterations = 50
layer_min_seconds = 0.02
calibrate = 8
validate = 8
TOML

step tests-cuda 150 "$PYTHON" -m pytest -q -p no:cacheprovider -k "cuda or gpu" tests/
step search-cuda 120 hwdnal search "${SEARCH[@]}" --out "$OUTDIR/search-cuda"
step search-torchrun 120 torchrun --nproc-per-node 1 --no-python hwdnal search "${SEARCH[@]}" \
    --out "$OUTDIR/search-torchrun"
step profile-torch-cuda 90 hwdnal profile --target "$WORK/gpu-torch.toml" --model resnet20 \
    --input-size 32 --num-classes 10 --validate 8 --out "$OUTDIR/resnet20-gpu-torch-32x32.json"
step train-speed 90 "$PYTHON" bench/train_speed.py --device cuda "${DATA[@]}" \
    --train-subset 20000 --rounds 2 --out "$OUTDIR/train-speed.md"

"$PYTHON" - "$OUTDIR" "$STEPS" <<'PY' | tee -a "$LOG"
import json, subprocess, sys
from pathlib import Path
import torch
out, steps = Path(sys.argv[1]), [json.loads(l) for l in Path(sys.argv[2]).read_text().splitlines()]
summary = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "cuda": torch.version.cuda,
           "driver": subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True).stdout.strip(),
           "steps": steps}
for name in ("search-cuda", "search-torchrun"):
    result = out / name / "result.json"
    if result.is_file():
        r = json.loads(result.read_text())
        summary[name] = {k: r.get(k) for k in ("budget", "budget_ms", "budget_met", "distributed")}
        summary[name]["dense"] = r.get("dense"); summary[name]["pruned"] = r.get("pruned")
        summary[name]["stages"] = r.get("stages")
lut = out / "resnet20-gpu-torch-32x32.json"
if lut.is_file():
    data = json.loads(lut.read_text())
    summary["profile-torch-cuda"] = {"validation": data.get("validation"),
                                     "dense_measured_ms": data["calibration"].get("dense_measured_ms")}
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps({"gpu": summary["gpu"], "steps": [(s["name"], s["rc"], s["seconds"]) for s in steps]}))
PY
rm -rf "$WORK"
exit $failed
