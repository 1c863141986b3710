"""Training and zero-shot evaluation: dataset readers (PARA, LAPIS, synthetic), the synthetic preference task, metrics.

Modules:

* :mod:`pmllm_batch.train.datasets` — PARA / LAPIS readers in their public layouts and user-disjoint splits.
* :mod:`pmllm_batch.train.synthetic` — the controlled synthetic preference task the demo model is trained on.
* :mod:`pmllm_batch.train.metrics` — SROCC / PLCC / KRCC (pyiqa names), per-user aggregation, bootstrap CIs.
"""

# Evaluation controls (see train/evaluate.py); here so the CLI can list them without importing torch.
CONTROLS = ("none", "neutral", "shuffled", "no-vision", "no-profile", "open-gate")
