# One virtualenv for the whole repo; every target installs what it needs by itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TGM := $(VENV)/bin/tgm
STAMP := $(VENV)/.installed
ARGS ?=

export PYTHONPATH := $(CURDIR)
export PYTHONUNBUFFERED := 1
# Hugging Face: never reach for the hub unless the user says so.
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test test-slow test-all lint train-pose train-3d train-caption train-diffusion \
        bench-pose bench-3d bench-caption bench-diffusion bench-scale gpu-check clean dashboard dashboard-push demo

setup: $(STAMP)

# Re-installs only when pyproject.toml changes. torch is pinned first so pip takes the local CPU wheel
# where one exists and the registry's build elsewhere, instead of resolving a newer multi-GB release.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

test-all: setup
	$(PY) -m pytest -q -m "slow or not slow"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

train-pose: setup
	$(TGM) fit --config configs/pose/default.yaml $(ARGS)

train-3d: setup
	$(TGM) fit --config configs/shape3d/default.yaml $(ARGS)

train-caption: setup
	$(TGM) fit --config configs/caption/default.yaml $(ARGS)

train-diffusion: setup
	$(TGM) fit --config configs/diffusion/default.yaml $(ARGS)

bench-pose: setup
	$(PY) scripts/bench_pose.py

bench-3d: setup
	$(PY) scripts/bench_shape3d.py

bench-caption: setup
	$(PY) scripts/bench_caption.py

bench-diffusion: setup
	$(PY) scripts/bench_diffusion.py

# Preparation cost at 1x, 10x and the real datasets' sizes (or a stated fraction): cold, warm, peak RSS, growth.
bench-scale: setup
	$(PY) scripts/bench_scale_pose.py
	$(PY) scripts/bench_scale_shape3d.py
	$(PY) scripts/bench_scale_caption.py
	$(PY) scripts/bench_scale_diffusion.py

# The real-size configs for a few steps in bf16 on the GPU: throughput, MFU, peak memory (one line on CPU-only).
gpu-check: setup
	bash scripts/gpu_check.sh

# The latest offline W&B run in the terminal, no account needed (`wandb leet`); RUN=runs/wandb/offline-run-... for another.
dashboard: setup
	@run="$${RUN:-$$(ls -dt runs/wandb/offline-run-* 2>/dev/null | head -n 1)}"; \
	if [ -z "$$run" ]; then echo "dashboard: no offline W&B run in runs/wandb yet; train first (e.g. make train-caption)"; exit 1; fi; \
	echo "dashboard: $(VENV)/bin/wandb leet $$run"; $(VENV)/bin/wandb leet "$$run"

# Save the projects' W&B workspaces (common/dashboards.py) to your entity; PROJECT=pose for one.
dashboard-push: setup
	$(PY) -m common.dashboards push $(PROJECT)

# The browser demo of the four models at http://127.0.0.1:7860 (installs gradio on first use); ARGS="--help".
demo: setup
	@$(PY) -c "import gradio" 2>/dev/null || $(PY) -m pip install -q -e ".[demo]"
	$(PY) -m common.demo $(ARGS)

clean:
	rm -rf runs .pytest_cache .ruff_cache
