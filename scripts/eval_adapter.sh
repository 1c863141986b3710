#!/usr/bin/env bash
# Zero-shot evaluation of a preset's adapter on a population no training ever saw: the controls, the coarse profile,
# and the two wordings training never saw (paraphrase, free-text notes). One JSON per arm in OUT/eval-<arm>.json.
# Usage: [EVAL_SPLIT=all|test] scripts/eval_adapter.sh PRESET ADAPTER POPULATION_ROOT OUT
#   e.g. EVAL_SPLIT=test scripts/eval_adapter.sh demo pmllm_batch/assets/demo/adapter runs/smol/population runs/demo-test
set -euo pipefail
PRESET=${1:?usage: scripts/eval_adapter.sh PRESET ADAPTER POPULATION_ROOT OUT}
ADAPTER=${2:?adapter folder}
POP=${3:?population root (made by scripts/train_adapter.sh)}
OUT=${4:?output folder}
EVAL_SPLIT=${EVAL_SPLIT:-all}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
ev() {  # ev NAME ARGS...: one zero-shot evaluation on the population's users of EVAL_SPLIT
  local name=$1; shift
  python3 -m pmllm_batch --preset "$PRESET" eval --checkpoint "$ADAPTER" --dataset synthetic --root "$POP" --fold 1 \
    --split "$EVAL_SPLIT" --out "$OUT/eval-$name" --json "$@" | tee "$OUT/eval-$name.json"
}
for control in none neutral shuffled no-vision no-profile open-gate; do ev "$control" --control "$control"; done
ev coarse-age-gender --profile-fields age,gender
ev paraphrase --persona-style paraphrase
ev notes --persona-style notes
