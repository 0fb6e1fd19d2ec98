# One-command set-up: `make demo` runs the main job, `make test` the tests.
# Both create the virtual environment and fetch Fashion-MNIST when needed.

VENV   ?= .venv
PY     := $(VENV)/bin/python
ARCH   := $(shell uname -m)
# torch builds that install offline on this kind of machine; aarch64 has a CPU build of 2.9.1
TORCH  := $(if $(filter aarch64,$(ARCH)),torch==2.9.1 torchvision==0.24.1,torch==2.14.1 torchvision==0.29.1)

.PHONY: install data demo test test-fast test-under-load lint bench clean agent-venv

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml agent/pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e './agent[onnxruntime]'
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# The device side as a device installs it: hwdnal-agent with ONNX Runtime in a venv of its
# own, without torch, on the oldest Python it supports that this machine has (3.8 here).
AGENT_VENV ?= .venv-agent
AGENT_PY := $(shell for p in python3.8 $$HOME/.pyenv/versions/3.8*/bin/python3.8 python3; do \
	$$p -c 'import sys' >/dev/null 2>&1 && { echo $$p; break; }; done)

agent-venv: $(AGENT_VENV)/.installed

$(AGENT_VENV)/.installed: agent/pyproject.toml $(wildcard agent/hwdnal_agent/*.py agent/hwdnal_agent/runtimes/*.py)
	rm -rf $(AGENT_VENV)
	$(AGENT_PY) -m venv $(AGENT_VENV)
	$(AGENT_VENV)/bin/python -m pip install -q --upgrade pip
	$(AGENT_VENV)/bin/python -m pip install -q './agent[onnxruntime]'
	touch $@

data: install
	@PYTHON=$(PY) sh scripts/get-fashion-mnist.sh

# The main job: ResNet-20 on real Fashion-MNIST pruned to half its latency on this CPU
# (profiled, searched, fitted, finetuned, compiled, measured): about 4 minutes on 2 cores once set up.
demo: data
	$(VENV)/bin/hwdnal search --model resnet20 --data fashion-mnist --target cpu --budget 50% \
		--out runs/demo --train-subset 20000 --epochs-weights 4 --epochs-arch 1 \
		--epochs-finetune 3
	$(VENV)/bin/hwdnal report runs/demo

test: data agent-venv
	HWDNAL_AGENT_VENV=$(abspath $(AGENT_VENV)) $(PY) -m pytest -q -p no:cacheprovider --durations=10; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the suite is missing" >&2; fi; \
	exit $$rc

# The tests whose outcome rests on measuring this CPU (-m latency: the budgeted searches, the
# remote-agent search, the torchrun budget test) while two busy processes keep both cores
# loaded: the figures move, the outcomes must not (docs/devices.md, "Under load").
test-under-load: data agent-venv
	HWDNAL_AGENT_VENV=$(abspath $(AGENT_VENV)) BUSY=2 bash scripts/under-load.sh \
		$(PY) -m pytest -q -p no:cacheprovider -m latency --durations=10

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check hwdnal cli tests bench
	cd agent && ../$(VENV)/bin/ruff check .
	$(VENV)/bin/vermin -t=3.8- --no-tips --violations agent/hwdnal_agent

clean:
	rm -rf runs build *.egg-info

# Side-by-side benchmarks (docs/benchmarks.md, docs/img/pareto-*.png); run on an idle machine.
.PHONY: bench-quick
# bench-quick: ResNet-20, 2 seeds, a training subset: under 30 minutes on 2 cores.
bench-quick: data
	$(PY) bench/compare_methods.py --mode quick

# bench-medium: ResNet-20, 3 seeds, 20 000 images, every test image, 20 dense epochs, budgets
# 50% and 30%: about 3 hours of 2-core CPU by its own estimate, in sittings
# (HOURS=1.5 make bench-medium); finished units land in bench/results/medium/ (commit them).
.PHONY: bench-medium
bench-medium: data
	$(PY) bench/compare_methods.py --mode medium --hours $(HOURS)

# bench: ResNet-20 and MobileNetV2 (CIFAR layout), 3 seeds, all of Fashion-MNIST, 30 dense
# epochs: days of 2-core CPU, hours of GPU. It runs in sittings (HOURS=2 make bench): each
# finished unit lands in bench/results/full/ (commit it); rerunning goes on from there.
HOURS ?= 1e9
bench: data
	$(PY) bench/compare_methods.py --mode full --hours $(HOURS)
