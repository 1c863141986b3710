#!/usr/bin/env bash
# Rebuild the shipped demo preset from scratch, reproducibly (seeded), on a CPU:
#   1. base models: word-level tokenizer, tiny random Llama-layout LM, tiny ViT pre-trained to see the
#      synthetic renderer's image parameters (never ratings or people)  -> pmllm_batch/assets/demo/{lm,vision.safetensors}
#   2. the adapter, trained and evaluated by scripts/train_adapter.sh     -> pmllm_batch/assets/demo/adapter, $RUN/eval-*
# Usage: [BASE=0] [STEPS=N] scripts/build_demo.sh [RUN_DIR]   (base ~18 min, adapter ~15 min on 2 quiet cores)
# The smol preset reuses the demo's vision tower: rebuilding the base (BASE=1) means retraining smol too.
set -euo pipefail
RUN=${1:-runs/demo}
cd "$(dirname "$0")/.."
if [ "${BASE:-1}" = 1 ]; then  # BASE=0 keeps the current base models and retrains only the adapter
  python3 -m pmllm_batch.train.demo_base --seed 0
fi
STEPS=${STEPS:-5000} LR=${LR:-3e-3} BATCH=${BATCH:-48} THREADS=${THREADS:-1} scripts/train_adapter.sh demo "$RUN"
