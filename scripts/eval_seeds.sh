#!/usr/bin/env bash
# Zero-shot re-evaluation of a shipped adapter on three synthetic populations no training ever used (new people and new
# images each: 120 people, 300 images, 50 ratings each, idiosyncrasy 0 — the task the adapter was trained for), fold 1's
# 30 test people each; prints each seed's pooled and per-user SROCC and their mean ± sd over the seeds.
# Usage: scripts/eval_seeds.sh PRESET ADAPTER OUT [SEED...]
#   e.g. scripts/eval_seeds.sh smol pmllm_batch/assets/smol/adapter runs/seeds-smol 20261204 20261205 20261206
set -euo pipefail
PRESET=${1:?usage: scripts/eval_seeds.sh PRESET ADAPTER OUT [SEED...]}
ADAPTER=${2:?adapter folder}
OUT=${3:?output folder}
shift 3
SEEDS=("$@")
[ ${#SEEDS[@]} -gt 0 ] || SEEDS=(20261204 20261205 20261206)
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
for seed in "${SEEDS[@]}"; do
  pop="$OUT/population-$seed"
  [ -d "$pop/annotation" ] || python3 -c "from pmllm_batch.train.synthetic import make_synthetic_dataset as m; \
m('$pop', n_users=120, n_images=300, ratings_per_user=50, seed=$seed)"
  [ -s "$OUT/eval-$seed.json" ] || python3 -m pmllm_batch --preset "$PRESET" eval --checkpoint "$ADAPTER" \
    --dataset synthetic --root "$pop" --fold 1 --split test --out "$OUT/eval-$seed" --json > "$OUT/eval-$seed.json"
done
python3 - "$OUT" "${SEEDS[@]}" <<'PY'
import json, statistics, sys
out, seeds = sys.argv[1], sys.argv[2:]
rows = []
for seed in seeds:
    m = json.load(open(f"{out}/eval-{seed}.json"))
    pooled, per_user = m["srocc"], m["per_user_srocc_mean"]
    rows.append((seed, pooled, per_user))
    print(f"seed {seed}: pooled SROCC {pooled:.3f}, per-user {per_user:.3f}")
p = [r[1] for r in rows]; u = [r[2] for r in rows]
print(f"mean ± sd over {len(rows)} seeds: pooled {statistics.mean(p):.3f} ± {statistics.stdev(p):.3f}, "
      f"per-user {statistics.mean(u):.3f} ± {statistics.stdev(u):.3f}")
PY
