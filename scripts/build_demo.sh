#!/usr/bin/env bash
# Rebuild the shipped demo preset from scratch, reproducibly (seeded), on a CPU:
#   1. base models: word-level tokenizer, tiny random Llama-layout LM, tiny ViT pre-trained to see the
#      synthetic renderer's image parameters (never ratings or people)  -> pmllm_batch/assets/demo/{lm,vision.safetensors}
#   2. the synthetic preference task (PARA layout)                          -> $RUN/synthetic
#   3. adapter training on fold 1's training users                         -> $RUN/train/adapter -> assets/demo/adapter
#   4. zero-shot evaluation on fold 1's held-out users, with every control -> $RUN/eval-*.json
# Usage: [BASE=0] [STEPS=N] scripts/build_demo.sh [RUN_DIR]   (base ~18 min, adapter ~15 min on 2 quiet cores)
set -euo pipefail
RUN=${1:-runs/demo}
STEPS=${STEPS:-5000}
LR=${LR:-3e-3}
cd "$(dirname "$0")/.."
mkdir -p "$RUN"
if [ "${BASE:-1}" = 1 ]; then  # BASE=0 keeps the current base models and retrains only the adapter
  python3 -m pmllm_batch.train.demo_base --seed 0
fi
rm -rf pmllm_batch/assets/demo/adapter
# more people than `train --dataset synthetic` makes by default: zero-shot transfer grows with training users
[ -d "$RUN/synthetic/annotation" ] || python3 -c "from pmllm_batch.train.synthetic import make_synthetic_dataset as m; \
m('$RUN/synthetic', n_users=480, n_images=600, ratings_per_user=50, seed=0)"
python3 -m pmllm_batch --preset demo train --dataset synthetic --root "$RUN/synthetic" --fold 1 \
  --steps "$STEPS" --lr "$LR" --batch-size 48 --seed 0 --threads 1 --out "$RUN/train" --no-resume
mkdir -p pmllm_batch/assets/demo/adapter
cp "$RUN/train/adapter/adapter.safetensors" "$RUN/train/adapter/pmllm_config.json" pmllm_batch/assets/demo/adapter/
for control in none neutral shuffled no-vision no-profile open-gate; do
  python3 -m pmllm_batch eval --checkpoint pmllm_batch/assets/demo/adapter --dataset synthetic \
    --root "$RUN/synthetic" --fold 1 --control "$control" --out "$RUN/eval-$control" --json | tee "$RUN/eval-$control.json"
done
