"""``pmllm-batch bench``: the speed levers of DESIGN.md §5, each measured against the naive way, in one run.

Sections (each a function returning a plain dict; :func:`run_bench` runs them all and writes JSON + Markdown):

1. **Prefix cache** — persona prefix run once per profile, then only the suffix per (image, profile) pair,
   against recomputing the full prompt for every pair; scores must agree within 1e-4.
2. **Vision** — ONNX fp32 and int8 against torch eager, batched, on the same photos: images/s, and the
   visual-token cosine of each ONNX graph against torch on real photos.
3. **Incremental work** — a library scored for two profiles, then a third profile (0 vision encodes), then
   10 new photos (exactly 10 encodes), counted by the real :class:`~pmllm_batch.scorer.batch.LibraryScorer`.
4. **End to end** — the same runs: images/s, pairs/s, peak RSS, visual-token cache bytes per image.
5. **Against the limit** — achieved GFLOP/s of each stage against this machine's measured large-GEMM rate.

How it measures: every arm runs in this process with the same thread count (probed, or ``--threads``); arms
are interleaved round by round (alternating order) so a noisy neighbour slows all arms alike; each figure is
the median of the timed repeats after a warm-up. Sections 1 and 2 time each path at a few batch sizes and
compare each at its best one (the same-batch ratio is reported next to it). Sections 3–4 run in a child
process per preset (in-process with ``--quick``), so its peak RSS is its own.

The ``cpu`` preset names real weights (CLIP ViT-B/32, Qwen2.5-0.5B) that a bench must not need: it is built
with the same *shapes* and random weights (plus a random, active fusion adapter), which is exact for timing
and meaningless for scores; every figure says so.

Modules: :mod:`.inputs` (seed, personas, photos), :mod:`.timing`, :mod:`.machine` (machine info, GEMM limit),
:mod:`.models`, one per section (:mod:`.prefix_cache`, :mod:`.vision`, :mod:`.library`, :mod:`.limit`),
:mod:`.run` (:func:`run_bench`) and :mod:`.report` (checks, table, Markdown); measuring never renders.
Heavy libraries (torch, transformers, open_clip, onnxruntime) are imported inside functions, so importing this
package is cheap.
"""

from .inputs import BENCH_PROFILES, MIN_PERSONA_TOKENS, make_photo_variants
from .library import N_NEW_PHOTOS
from .report import format_table
from .run import run_bench
from .timing import interleaved
from .vision import token_cosine

__all__ = [
    "BENCH_PROFILES",
    "MIN_PERSONA_TOKENS",
    "N_NEW_PHOTOS",
    "format_table",
    "interleaved",
    "make_photo_variants",
    "run_bench",
    "token_cosine",
]
