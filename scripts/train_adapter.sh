#!/usr/bin/env bash
# Train a preset's adapter (projector + fusion) on the synthetic preference task with the project's own `train`,
# ship it into the package, and evaluate it zero-shot on a population generated with a seed training never used.
#   1. training task: 480 people (360 training users of fold 1), 600 images, seed 0      -> $RUN/synthetic
#   2. evaluation population: 120 new people, 300 new images, seed 20261201              -> $RUN/population
#   3. `pmllm-batch --preset PRESET train` (checkpoints every 100 steps; rerun = resume)  -> $RUN/train
#   4. the adapter, stored as float16 safetensors                                         -> pmllm_batch/assets/PRESET/adapter
#   5. eval on every user of the population: controls, coarse profile, paraphrase, notes -> $RUN/eval-*.json
# Usage: [STEPS=N] [LR=x] [BATCH=N] [THREADS=N] [EVAL_SPLIT=all|test] scripts/train_adapter.sh PRESET [RUN_DIR]
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
cd "$(dirname "$0")/.."
mkdir -p "$RUN"
[ -d "$RUN/synthetic/annotation" ] || python3 -c "from pmllm_batch.train.synthetic import make_synthetic_dataset as m; \
m('$RUN/synthetic', n_users=480, n_images=600, ratings_per_user=50, seed=0)"
[ -d "$RUN/population/annotation" ] || python3 -c "from pmllm_batch.train.synthetic import make_synthetic_dataset as m; \
m('$RUN/population', n_users=120, n_images=300, ratings_per_user=50, seed=20261201)"
python3 -m pmllm_batch --preset "$PRESET" train --dataset synthetic --root "$RUN/synthetic" --fold 1 \
  --steps "$STEPS" --lr "$LR" --batch-size "$BATCH" --seed 0 --threads "$THREADS" --checkpoint-every 100 \
  --out "$RUN/train"
python3 -m pmllm_batch.model.checkpoint --to-float16 "$RUN/train/adapter" "pmllm_batch/assets/$PRESET/adapter"
ADAPTER="pmllm_batch/assets/$PRESET/adapter"
ev() {  # ev NAME ARGS...: one zero-shot evaluation on every user of the new population
  local name=$1; shift
  python3 -m pmllm_batch eval --checkpoint "$ADAPTER" --dataset synthetic --root "$RUN/population" --fold 1 \
    --split "$EVAL_SPLIT" --out "$RUN/eval-$name" --json "$@" | tee "$RUN/eval-$name.json"
}
for control in none neutral shuffled no-vision no-profile open-gate; do ev "$control" --control "$control"; done
ev coarse-age-gender --profile-fields age,gender
ev paraphrase --persona-style paraphrase
ev notes --persona-style notes
