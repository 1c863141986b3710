#!/usr/bin/env bash
# Train a preset's adapter (projector + fusion) on the synthetic preference task with the project's own `train`,
# ship it into the package, and evaluate it zero-shot on a population generated with a seed training never used.
#   1. training task: 480 people (360 training users of fold 1), 600 images, seed 0      -> $RUN/synthetic
#   2. evaluation population: 120 new people, 300 new images, seed 20261201              -> $RUN/population
#   3. `pmllm-batch --preset PRESET train` (checkpoints every 100 steps; rerun = resume)  -> $RUN/train
#   4. the adapter, stored as float16 safetensors                                         -> pmllm_batch/assets/PRESET/adapter
#   5. scripts/eval_adapter.sh on the population: controls, coarse profile, paraphrase, notes -> $RUN/eval-*.json
# Usage: [STEPS=N] [LR=x] [BATCH=N] [THREADS=N] [SEED=N] [CAPTION_WEIGHT=x] [INIT=ADAPTER] [TRAIN_OUT=DIR]
#        [SKIP_EVAL=1] [EVAL_SPLIT=all|test] scripts/train_adapter.sh PRESET [RUN_DIR]
#   EVAL_SPLIT=test scores only fold 1's test quarter of the new population (30 people): a quarter of the time.
#   demo: STEPS=5000 BATCH=48 LR=3e-3 (~15 min on 2 quiet cores); smol: STEPS=2000 BATCH=32 LR=2e-3 (hours on CPU)
set -euo pipefail
PRESET=${1:?usage: scripts/train_adapter.sh PRESET [RUN_DIR]}
RUN=${2:-runs/$PRESET}
STEPS=${STEPS:-5000}
LR=${LR:-3e-3}
BATCH=${BATCH:-48}
THREADS=${THREADS:-1}
EVAL_SPLIT=${EVAL_SPLIT:-all}
SEED=${SEED:-0}
CAPTION_WEIGHT=${CAPTION_WEIGHT:-0.2}  # the synthetic samples carry captions: 0 trains on ratings only
TRAIN_OUT=${TRAIN_OUT:-$RUN/train}
INIT=${INIT:-}  # an adapter to start from (a second stage)
cd "$(dirname "$0")/.."
mkdir -p "$RUN"
[ -d "$RUN/synthetic/annotation" ] || python3 -c "from pmllm_batch.train.synthetic import make_synthetic_dataset as m; \
m('$RUN/synthetic', n_users=480, n_images=600, ratings_per_user=50, seed=0)"
[ -d "$RUN/population/annotation" ] || python3 -c "from pmllm_batch.train.synthetic import make_synthetic_dataset as m; \
m('$RUN/population', n_users=120, n_images=300, ratings_per_user=50, seed=20261201)"
python3 -m pmllm_batch --preset "$PRESET" train --dataset synthetic --root "$RUN/synthetic" --fold 1 \
  --steps "$STEPS" --lr "$LR" --batch-size "$BATCH" --seed "$SEED" --threads "$THREADS" --checkpoint-every 100 \
  --caption-weight "$CAPTION_WEIGHT" ${INIT:+--init "$INIT"} --out "$TRAIN_OUT"
python3 -m pmllm_batch.model.checkpoint --to-float16 "$TRAIN_OUT/adapter" "pmllm_batch/assets/$PRESET/adapter"
[ "${SKIP_EVAL:-0}" = 1 ] || EVAL_SPLIT="$EVAL_SPLIT" scripts/eval_adapter.sh "$PRESET" "pmllm_batch/assets/$PRESET/adapter" \
  "$RUN/population" "$RUN"
