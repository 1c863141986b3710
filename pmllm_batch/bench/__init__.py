"""``pmllm-batch bench``: the speed levers of DESIGN.md §5, each measured against the naive way, in one run.

Sections (each a function returning its result dataclass; :func:`run_bench` runs them all into a
:class:`BenchResult` and writes JSON + Markdown):

1. **Prefix cache** — persona prefix run once per profile, then only the suffix per (image, profile) pair,
   against recomputing the full prompt for every pair; scores must agree within 1e-4.
2. **Vision** — ONNX fp32 and int8 against torch eager, batched, on the same photos: images/s, and the
   visual-token cosine of each ONNX graph against torch on real photos.
3. **Incremental work** — a library scored for two profiles, then a third profile (0 vision encodes), then
   10 new photos (exactly 10 encodes), counted by the real :class:`~pmllm_batch.scorer.batch.LibraryScorer`.
4. **End to end** — the same runs: images/s, pairs/s, peak RSS, visual-token cache bytes per image.
5. **Against the limit** — achieved GFLOP/s of each stage against this machine's measured large-GEMM rate.
6. **int8 LLM stage** — the shipped int8 LLM against float32 on distinct images: speedup, Spearman, max abs diff.
7. **Model load** — ONNX backend with a warm artefact, no torch tower against the tower built (fresh processes).
8. **End to end** — ``rank`` of new photos for four profiles on one thread (float32 and int8 LLM), a no-op rank of
   an unchanged library, and start-up times (a child process).
9. **Ray** — the Ray engine with 1 and 2 scoring actors against the local engine on the same library
   (``ray_pairs_per_s_1_actor``, ``ray_pairs_per_s_2_actors``; :mod:`.ray`; ``bench --only ray``; left out by
   ``--quick``); :mod:`.cost` turns the counted FLOPs into the cluster cost estimate at paper shapes.
10. **Learning from stars** — one new rating to a fresh learned ranking of a 20,000-photo library on one thread
    (``learn_rerank_s``, :mod:`.learn`; ``python -m pmllm_batch.bench.learn``; left out by ``--quick``).

How it measures: every arm runs in this process with the same thread count (probed, or ``--threads``); arms
are interleaved round by round (alternating order) so a noisy neighbour slows all arms alike; each figure is
the median of the timed repeats after a warm-up. Sections 1 and 2 time each path at a few batch sizes and
compare each at its best one (the same-batch ratio is reported next to it). Sections 3–4 run in a child
process per preset (in-process with ``--quick``), so its peak RSS is its own.

The ``cpu`` preset names real weights (CLIP ViT-B/32, Qwen2.5-0.5B) that a bench must not need: it is built
with the same *shapes* and random weights (plus a random, active fusion adapter), which is exact for timing
and meaningless for scores; every figure says so.

Modules: :mod:`.inputs` (seed, personas, photos), :mod:`.timing`, :mod:`.machine` (machine info, GEMM limit),
:mod:`.models`, one per section, each with its result dataclass (:mod:`.prefix_cache` ``PrefixCacheResult``,
:mod:`.vision` ``VisionResult``, :mod:`.library` ``LibraryResult``, :mod:`.limit` ``LimitResult``, :mod:`.int8`
``Int8Result``, :mod:`.load` ``LoadResult``, :mod:`.end_to_end` ``EndToEndResult``), :mod:`.result`
(:class:`BenchResult`, the headline figures), :mod:`.codec` (their JSON), :mod:`.run` (:func:`run_bench`) and
:mod:`.report` (checks, table, Markdown); measuring never renders. :mod:`.burst_linking` (its own command,
``python3 -m pmllm_batch.bench.burst_linking``) measures linking bursts and near-duplicates at library scale.
Heavy libraries (torch, transformers, open_clip, onnxruntime) are imported inside functions, so importing this
package is cheap.
"""

from .inputs import BENCH_PROFILES, MIN_PERSONA_TOKENS, make_photo_variants
from .library import N_NEW_PHOTOS
from .report import format_table
from .result import BenchResult
from .run import run_bench
from .timing import interleaved
from .vision import token_cosine

__all__ = [
    "BENCH_PROFILES",
    "BenchResult",
    "MIN_PERSONA_TOKENS",
    "N_NEW_PHOTOS",
    "format_table",
    "interleaved",
    "make_photo_variants",
    "run_bench",
    "token_cosine",
]
