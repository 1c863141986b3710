"""Library scoring: the one pipeline the CLI and the daemon call (plan → decode → vision → score → write)."""

from pmllm_batch.scan.plan import PathFilter
from pmllm_batch.scorer.batch import LibraryScorer, RunSummary, check_folder, saved_text
from pmllm_batch.scorer.models import LoadedModels, ModelCache

__all__ = [
    "LibraryScorer", "LoadedModels", "ModelCache", "PathFilter", "RunSummary", "check_folder", "saved_text",
]
