"""A whole bench run's result: every section's dataclass, the headline figures lifted from them, and its JSON.

The JSON (``bench-<preset>.json``, ``pmllm-batch bench --json``) is :meth:`BenchResult.to_json`: each section under
its own key, then the headline figures at the top level (their names are the ones docs/PERFORMANCE.md cites), the
run's time, the checks and (printed only) where the reports went. :meth:`BenchResult.from_json` reads it back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .codec import Json, from_json, to_json
from .end_to_end import EndToEndResult, StartupTimes
from .int8 import Int8Result
from .learn import LearnResult
from .library import LibraryResult, SectionError
from .limit import LimitResult
from .load import LoadResult
from .machine import MachineInfo
from .prefix_cache import PrefixCacheResult
from .ray import RayResult
from .vision import VisionResult


@dataclass
class ThreadsProbeResult:
    """How the thread count was chosen (the JSON object ``threads_probe``)."""

    median_s: dict[int, float]  # thread count -> median seconds of the probed work
    best: int
    chosen_by: str  # "--threads" or "probe"
    work: str  # what the probe timed


@dataclass
class Headline:
    """The figures the issue names, lifted from the sections (top-level keys of the JSON; None: section failed)."""

    prefix_cache_speedup: float
    prefix_cache_scores_max_abs_diff: float | None
    persona_tokens: int
    prefix_cache_speedup_same_batch: float | None
    int8_vision_speedup: float
    int8_vision_speedup_same_batch: float
    int8_vision_cosine: float
    fp32_vision_cosine: float
    new_profile_vision_encodes: int | None
    new_photos_vision_encodes: int | None
    vision_gemm_fraction: float
    llm_gemm_fraction: float
    llm_int8_speedup: float
    llm_int8_score_spearman: float
    llm_int8_score_max_abs_diff: float
    suffix_tokens: int
    model_load_s: float | None
    model_load_rss_mb: float | None
    model_load_s_with_tower: float | None
    model_load_rss_mb_with_tower: float | None
    end_to_end_pairs_per_s: float | None
    end_to_end_pairs_per_s_int8: float | None
    projected_hours_10k_photos_4_profiles: float | None
    projected_hours_10k_photos_4_profiles_int8: float | None
    noop_rank_s: float | None
    noop_rank_photos: int | None
    startup_s: StartupTimes | None
    visual_cache_bytes_per_photo: dict[str, int | None]  # preset -> float16 tower features per photo
    threads: int
    # section 9 (.ray); absent from the JSON when it did not run (--quick), None when Ray is missing or it failed
    ray_pairs_per_s_1_actor: float | None = None
    ray_pairs_per_s_2_actors: float | None = None
    ray_local_engine_pairs_per_s: float | None = None
    # section 10 (.learn): one new rating to a fresh 20,000-photo ranking; absent from the JSON when it did not run
    learn_rerank_s: float | None = None


RAY_KEYS = ("ray_pairs_per_s_1_actor", "ray_pairs_per_s_2_actors", "ray_local_engine_pairs_per_s")


@dataclass
class BenchResult:
    """One bench run. Field names are the JSON's keys; :attr:`headline`'s figures join them at the top level."""

    preset: str
    quick: bool
    command: str
    weights: str
    machine: MachineInfo
    threads_probe: ThreadsProbeResult
    timings: dict[str, float]  # seconds per step of the run
    prefix_cache: PrefixCacheResult
    vision: VisionResult
    llm_int8: Int8Result
    limit: LimitResult
    model_load: LoadResult | SectionError
    library: dict[str, LibraryResult | SectionError]  # preset -> sections 3-4 (a failed one: its error)
    end_to_end: EndToEndResult | SectionError
    visual_cache_bytes_per_photo: dict[str, int | None]  # preset -> float16 tower features per photo
    elapsed_s: float = 0.0
    checks: dict[str, bool | None] = field(default_factory=dict)  # see report.checks
    reports: dict[str, str] | None = None  # "json" / "markdown" -> path, once written
    ray: SectionError | RayResult | None = None  # section 9; None: not run (--quick)
    learn: LearnResult | SectionError | None = None  # section 10; None: not run (--quick)

    @property
    def headline(self) -> Headline:
        """The figures the issue names, lifted from the sections."""
        return _headline(self)

    def to_json(self) -> Json:
        """Every figure as JSON: the sections, the headline at the top level, elapsed_s, checks (and reports)."""
        data = to_json(self)
        tail = {k: data.pop(k) for k in ("visual_cache_bytes_per_photo", "elapsed_s", "checks", "reports")}
        data.update(to_json(self.headline))
        if self.ray is None:  # section 9 did not run (--quick): neither it nor its figures are in the JSON
            for key in ("ray", *RAY_KEYS):
                data.pop(key)
        if self.learn is None:  # section 10 did not run (--quick)
            for key in ("learn", "learn_rerank_s"):
                data.pop(key)
        data["elapsed_s"] = tail["elapsed_s"]
        data["checks"] = tail["checks"]
        if tail["reports"] is not None:
            data["reports"] = tail["reports"]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> BenchResult:
        """A result read back from its JSON (a saved ``bench-<preset>.json`` or ``bench --json``)."""
        return from_json(cls, data)


def _headline(s: BenchResult) -> Headline:
    """The headline figures of a run (the library figures are those of the preset it measures)."""
    p, v, i8 = s.prefix_cache, s.vision, s.llm_int8
    lib = s.library[s.preset]
    ld = s.model_load if isinstance(s.model_load, LoadResult) else None
    e2e = s.end_to_end if isinstance(s.end_to_end, EndToEndResult) else None
    runs, noop = (e2e.end_to_end, e2e.noop) if e2e else (None, None)
    return Headline(
        prefix_cache_speedup=p.prefix_cache_speedup,
        prefix_cache_scores_max_abs_diff=p.max_abs_score_diff,
        persona_tokens=p.min_persona_tokens,
        prefix_cache_speedup_same_batch=p.prefix_cache_speedup_same_batch,
        int8_vision_speedup=v.int8_vision_speedup,
        int8_vision_speedup_same_batch=v.int8_vision_speedup_same_batch,
        int8_vision_cosine=v.int8_vision_cosine,
        fp32_vision_cosine=v.onnx_fp32.cosine_mean,
        new_profile_vision_encodes=lib.new_profile_run.encoded if isinstance(lib, LibraryResult) else None,
        new_photos_vision_encodes=lib.new_photos_run.encoded if isinstance(lib, LibraryResult) else None,
        vision_gemm_fraction=s.limit.vision_gemm_fraction,
        llm_gemm_fraction=s.limit.llm_gemm_fraction,
        llm_int8_speedup=i8.llm_int8_speedup,
        llm_int8_score_spearman=i8.llm_int8_score_spearman,
        llm_int8_score_max_abs_diff=i8.llm_int8_score_max_abs_diff,
        suffix_tokens=p.suffix_tokens,
        model_load_s=ld.model_load_s if ld else None,
        model_load_rss_mb=ld.model_load_rss_mb if ld else None,
        model_load_s_with_tower=ld.model_load_s_with_tower if ld else None,
        model_load_rss_mb_with_tower=ld.model_load_rss_mb_with_tower if ld else None,
        end_to_end_pairs_per_s=runs.none.pairs_per_s if runs else None,
        end_to_end_pairs_per_s_int8=runs.int8.pairs_per_s if runs else None,
        projected_hours_10k_photos_4_profiles=runs.none.projected_hours_10k_photos_4_profiles if runs else None,
        projected_hours_10k_photos_4_profiles_int8=runs.int8.projected_hours_10k_photos_4_profiles if runs else None,
        noop_rank_s=noop.noop_rank_s if noop else None,
        noop_rank_photos=noop.photos if noop else None,
        startup_s=noop.startup_s if noop else None,
        visual_cache_bytes_per_photo=s.visual_cache_bytes_per_photo,
        threads=s.machine.threads,
        learn_rerank_s=s.learn.learn_rerank_s if isinstance(s.learn, LearnResult) else None,
        **_ray_headline(s.ray),
    )


def _ray_headline(ray: SectionError | RayResult | None) -> dict[str, float | None]:
    """Section 9's figures for the headline (None where it did not measure them)."""
    if not isinstance(ray, RayResult):
        return {}
    return dict(zip(RAY_KEYS, (ray.ray_pairs_per_s_1_actor, ray.ray_pairs_per_s_2_actors,
                               ray.local_engine_pairs_per_s), strict=True))
