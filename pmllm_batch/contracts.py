"""The pipeline's vocabulary (ground layer): what every layer may name without importing another.

* **Statuses and reasons** of photo rows, as enums. They are :class:`enum.StrEnum`, so a member *is* its string:
  database columns, JSON and old rows keep the plain values ("ok", "too_small"), and comparing a member with a
  string read back from the database is exact.
* **JSON** types for settings dumps, run summaries and metadata (instead of untyped dicts).
* **Protocols** for what the pipeline needs from a model, so ``runtime`` and ``scorer`` depend on a shape, not on
  the P-MLLM class (``model`` satisfies them; nothing here imports it):

  - :class:`FeatureEncoder`: pixels (N, 3, S, S) → *tower features* (N, n_feat, D_vis), with its preprocessing and
    the id of the graph that produced them (the cache key). ONNX and torch runners are encoders.
  - :class:`ExportableTower`: a torch module mapping pixels to tower features plus what an ONNX export records
    (``runtime.onnx_export`` traces it; it never sees the model).
  - :class:`PhotoScorer`: the LLM side: a persona prefix per profile, the projector (tower features → *tokens*
    of width D_lm) and cached scoring of tokens against a prefix.

Naming, used everywhere (code, columns, docs): **features** are the vision tower's output (before the projector,
width D_vis, what the cache stores); **tokens** are the projector's output (width D_lm, what fusion attends to).

See docs/ARCHITECTURE.md for the stages that use these types.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol, TypeAlias, TypeVar, runtime_checkable

if TYPE_CHECKING:  # type-only: the ground layer imports no heavy package at run time
    import numpy as np
    import torch

    from pmllm_batch.preprocess_cfg import PreprocessCfg
    from pmllm_batch.profiles import Profile

__all__ = [
    "ExportableTower",
    "FailReason",
    "FeatureEncoder",
    "JSON",
    "JSONDict",
    "PhotoRecord",
    "PhotoScorer",
    "PhotoStatus",
    "PrefixT",
    "ScoresLike",
    "SkipReason",
    "PROFILE_ONLY",
    "learned_text",
]

JSON: TypeAlias = "str | int | float | bool | None | list[JSON] | dict[str, JSON]"
JSONDict: TypeAlias = "dict[str, JSON]"


class PhotoStatus(StrEnum):
    """A photo row's status."""

    OK = "ok"  # decoded, large enough, ranked
    FAILED = "failed"  # the pixels could not be read (error_reason is a :class:`FailReason`)
    SKIPPED = "skipped"  # a photo we do not rank (error_reason is a :class:`SkipReason`)
    MISSING = "missing"  # the file left (deleted, or moved outside every root); scores kept by content hash


class SkipReason(StrEnum):
    """Why a readable photo is not ranked (``status = skipped``)."""

    TOO_SMALL = "too_small"  # shorter side below [scan] min_side
    RAW_PAIR = "raw_pair"  # a camera RAW whose JPEG twin is in the library: the pair is one photo
    BLANK = "blank"  # near-uniform pixels (lens cap, misfire, a blank frame): below [scan] blank_std


class FailReason(StrEnum):
    """Why a file's pixels could not be read (``status = failed``)."""

    VANISHED = "vanished"
    UNREADABLE = "unreadable"
    EMPTY = "empty"
    NOT_AN_IMAGE = "not_an_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    TRUNCATED = "truncated"
    DECOMPRESSION_BOMB = "decompression_bomb"
    BROKEN_EXIF = "broken_exif"  # old rows only: unreadable EXIF is a warning on an ok photo now


@dataclass
class PhotoRecord:
    """One scanned file, as the scanner writes it and as incremental scans read it back."""

    path: str  # absolute path as walked
    root: str  # scan root it was found under
    content_hash: str | None  # None when the file could not even be read
    size: int  # bytes
    mtime_ns: int
    status: PhotoStatus = PhotoStatus.OK
    width: int | None = None
    height: int | None = None
    format: str | None = None
    taken_at: str | None = None  # EXIF capture time, ISO 8601
    camera_make: str | None = None
    camera_model: str | None = None
    orientation: int | None = None  # EXIF orientation 1..8
    error_reason: str | None = None  # a FailReason (failed) or SkipReason (skipped) value
    error_message: str | None = None  # one human sentence for status failed or skipped
    exif_warning: str | None = None


@runtime_checkable
class FeatureEncoder(Protocol):
    """Pixels → tower features, as the pipeline's encode stage calls it (ONNX or torch)."""

    graph_id: str  # identifies the graph (and so the features it gives): the feature cache's key
    preprocess: PreprocessCfg  # how pixels are made from a photo for this graph
    num_features: int  # features per photo (n_feat)
    dim: int  # width of one feature (D_vis)

    def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) float32 pixels → (N, n_feat, D_vis) float32 tower features."""
        ...


class ExportableTower(Protocol):
    """What ``runtime`` needs to export and run a torch vision tower: the module and its facts."""

    module: torch.nn.Module  # pixels (N, 3, S, S) → tower features (N, n_feat, D_vis)
    preprocess: PreprocessCfg
    num_features: int
    dim: int
    name: str  # the model config's name (recorded in artefact metadata)


class ScoresLike(Protocol):
    scores: torch.Tensor  # (B,) expected rating, 1–5
    probs: torch.Tensor  # (B, L) distribution over rating levels


PrefixT = TypeVar("PrefixT")  # a profile's persona prefix, run once (opaque to the pipeline)


class PhotoScorer(Protocol[PrefixT]):
    """The LLM side of the model, as the score stage calls it (generic in its prefix type)."""

    def encode_prefix(self, profile: Profile | str) -> PrefixT: ...

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """(N, n_feat, D_vis) tower features → (N, n_tok, D_lm) tokens."""
        ...

    def score_cached(self, prefix: PrefixT, visual: torch.Tensor | None, batch: int | None = None) -> ScoresLike:
        """Tokens (B, n_tok, D_lm) scored against one profile's prefix."""
        ...


# ---------------------------------------------------------------------------------------------------------------------
# Words every output uses for what a person's ranking learned from (rank, export, albums, report, status, profile)
# ---------------------------------------------------------------------------------------------------------------------

PROFILE_ONLY = "profile only"


def learned_text(n_ratings: int) -> str:
    """``"learned from 3 of your ratings"``, or ``"profile only"`` for 0."""
    return f"learned from {n_ratings} of your ratings" if n_ratings > 0 else PROFILE_ONLY
