#!/usr/bin/env bash
# GPU check (issue 21): each project's real-size config for a fixed number of bf16 training steps on one GPU;
# prints samples/s, tokens/s, MFU against the card's peak and peak GPU memory. CPU only: one line, exit 0.
# Usage: scripts/gpu_check.sh [--steps 20] [--warmup 5] [--projects caption shape3d diffusion pose]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python
PYTHONPATH=. HF_HUB_OFFLINE=1 exec "$PY" scripts/gpu_check.py "$@"
