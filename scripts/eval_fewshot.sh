#!/usr/bin/env bash
# The few-shot table of the README ("Learning from your stars"): a new synthetic population with a hidden taste
# no profile field reveals (idiosyncrasy 0.4, a seed training never used: new people, new images), then the
# few-shot protocol on fold 1's 80 test people (150 ratings each; 40 training people calibrate the prior).
# Usage: scripts/eval_fewshot.sh PRESET ADAPTER OUT [SEED]
#   e.g. scripts/eval_fewshot.sh demo pmllm_batch/assets/demo/adapter runs/fewshot-demo
#        scripts/eval_fewshot.sh smol pmllm_batch/assets/smol/adapter runs/fewshot-smol
# Writes OUT/population (the images), OUT/fewshot/fewshot.json + report.md and OUT/fewshot.json (stdout).
set -euo pipefail
PRESET=${1:?usage: scripts/eval_fewshot.sh PRESET ADAPTER OUT [SEED]}
ADAPTER=${2:?adapter folder}
OUT=${3:?output folder}
SEED=${4:-20261203}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
if [ ! -f "$OUT/population/annotation/synthetic-tastes.csv" ]; then
  python3 -c "from pmllm_batch.train.synthetic import make_synthetic_dataset as m; \
m('$OUT/population', n_users=320, n_images=600, ratings_per_user=150, seed=$SEED, idiosyncrasy=0.4)"
fi
python3 -m pmllm_batch --preset "$PRESET" eval --checkpoint "$ADAPTER" --dataset synthetic --root "$OUT/population" \
  --fold 1 --shots 0,5,10,20,50,100 --out "$OUT/fewshot" --json | tee "$OUT/fewshot.json"
