#!/usr/bin/env bash
# The device (GPU) call for benchmarks/gpu_study.py, after ../shared/tools/device-stage staged .carry/
# (see benchmarks/README.md for the three calls). Runs with the device image's own torch/transformers.
set -euo pipefail
bash .carry/m2/unstage
export PYTHONPATH="$PWD/src:/tmp/site" TUNELAB_DATA_DIR="$PWD/.carry/data" HF_HUB_OFFLINE=1 \
  TUNELAB_GGUF=/tmp/tunelab-model/SmolLM2-135M-Instruct.Q4_1.gguf TUNELAB_CACHE=/tmp/tunelab-cache \
  PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 benchmarks/gpu_study.py --out "$OUT" --budget "${BUDGET:-480}" ${ONLY:+--only "$ONLY"}
