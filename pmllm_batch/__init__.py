"""pmllm-batch: zero-shot personalised photo ranking with P-MLLM (arXiv 2604.17233)."""

from pmllm_batch.version import __version__

__all__ = ["__version__"]
