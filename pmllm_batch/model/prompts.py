"""Profile → persona text → token ids, split at the image tag.

The persona is written in plain words a language model can read. Each Big-Five level also gets a
descriptive word (``curious``, ``reserved`` …) next to its number, because a word carries the trait
*and* its direction in one token, which small models read far more easily than "openness 8/10".

The prompt is the LLM's own chat template when it has one (persona as the system message, or folded
into the user turn for templates without a system role) and the paper's question. Everything before
``<image>`` is the *prefix*: it depends on the profile only and is cached once per profile; the
*suffix* (from ``<image>`` to the answer position) is the same for every profile and image. The suffix
is the only part run per (image, profile) pair, so nothing that does not depend on the image comes
after the tag: the answer instruction precedes the question (our choice; the paper gives only the question).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pmllm_batch.profiles import BIG_FIVE, Profile

IMAGE_TAG = "<image>"
QUESTION = "Rate the aesthetics of this <image>image</image> based on the persona you are embodying."
ANSWER_HINT = "Answer with one digit from 1 (poor) to 5 (excellent)."
PLAIN_TEMPLATE = "{persona}\nUSER: {question}\nASSISTANT: Rating:"

# (low word, high word) for each trait; 1-3 low, 4-7 moderate, 8-10 high.
_TRAIT_WORDS = {
    "openness": ("conventional", "curious"),
    "conscientiousness": ("spontaneous", "organised"),
    "extraversion": ("reserved", "outgoing"),
    "agreeableness": ("critical", "warm"),
    "neuroticism": ("calm", "anxious"),
}
# Photography experience gets its own words so it cannot be confused with art experience, which uses
# the same PARA vocabulary (beginner … expert).
_PHOTOGRAPHER_WORDS = {"beginner": "novice", "competent": "amateur", "proficient": "skilled", "expert": "seasoned"}


def _trait_phrase(trait: str, value: float) -> str:
    low, high = _TRAIT_WORDS[trait]
    word = low if value <= 3 else high if value >= 8 else f"somewhat {low if value < 5.5 else high}"
    return f"{trait} {value:g} of 10 ({word})"


def _interest_phrase(items: dict[str, float | str]) -> str:
    numbers = [float(v) for v in items.values() if isinstance(v, (int, float))]
    words = [f"{k.replace('_', ' ')}: {v}" for k, v in items.items() if isinstance(v, str)]
    parts = []
    if numbers:
        mean = sum(numbers) / len(numbers)
        level = "low" if mean < 2 else "high" if mean >= 4 else "moderate"
        parts.append(f"{level} interest in art (average {mean:.1f} of 6 over {len(numbers)} items)")
    parts.extend(words)
    return "; ".join(parts)


def render_persona(profile: Profile) -> str:
    """Write a profile as a persona instruction. Every field is optional; absent ones are not mentioned."""
    facts: list[str] = []
    if profile.age is not None:
        facts.append(f"age {profile.age} years" if isinstance(profile.age, int) else f"age group {profile.age} years")
    if profile.gender:
        facts.append(f"gender {profile.gender}")
    if profile.nationality:
        facts.append(f"nationality {profile.nationality}")
    if profile.education:
        facts.append(f"education {profile.education}")
    if profile.art_experience:
        facts.append(f"art experience {profile.art_experience}")
    if profile.photography_experience:
        level = profile.photography_experience
        word = _PHOTOGRAPHER_WORDS.get(level.lower())
        facts.append(f"photography experience {level}" + (f" ({word} photographer)" if word else ""))
    lines = ["You are a person who rates photographs."]
    lines.append("About you: " + (", ".join(facts) if facts else "no personal details are known") + ".")
    if profile.big_five:
        traits = [_trait_phrase(t, profile.big_five[t]) for t in BIG_FIVE if t in profile.big_five]
        lines.append("Personality: " + ", ".join(traits) + ".")
    if profile.art_interest:
        lines.append("Art: " + _interest_phrase(profile.art_interest) + ".")
    if profile.notes:
        lines.append("Notes: " + profile.notes.strip())
    lines.append("Judge every photo as this person would.")
    return " ".join(lines)


@dataclass(frozen=True)
class PromptTokens:
    """Token ids of one prompt. ``prefix_ids`` end right before the image tag."""

    prefix_ids: list[int]
    suffix_ids: list[int]

    @property
    def ids(self) -> list[int]:
        return self.prefix_ids + self.suffix_ids

    @property
    def image_start(self) -> int:
        return len(self.prefix_ids)


def attribute_question(attribute: str) -> str:
    """The paper's question, asked about one aesthetic attribute (PARA attribute ratings)."""
    return f"Rate the {attribute} of this <image>image</image> based on the persona you are embodying."


def prompt_text(tokenizer: Any, persona: str, question: str | None = None) -> str:
    """The full prompt text for a persona (chat template when the tokenizer has one)."""
    # The answer hint goes *before* the question: everything image-independent then sits in the cached
    # prefix, and the per-(image, profile) suffix is only the rest of the question plus the answer header
    # (17 tokens with the demo tokenizer instead of 32 with the hint after it): half the LLM work per pair.
    user = f"{ANSWER_HINT} {question or QUESTION}"
    if getattr(tokenizer, "chat_template", None):
        try:
            return str(
                tokenizer.apply_chat_template(
                    [{"role": "system", "content": persona}, {"role": "user", "content": user}],
                    tokenize=False,
                    add_generation_prompt=True,
                )
            )
        except Exception:  # noqa: BLE001 - templates without a system role raise arbitrary template errors
            return str(
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": f"{persona}\n\n{user}"}], tokenize=False, add_generation_prompt=True
                )
            )
    bos = tokenizer.bos_token or ""
    return bos + PLAIN_TEMPLATE.format(persona=persona, question=user)


def build_prompt(tokenizer: Any, persona: str, question: str | None = None) -> PromptTokens:
    """Tokenise the prompt in two pieces split at the image tag.

    Both the cached path and the full-prompt path use exactly these ids, so they agree by construction.
    """
    text = prompt_text(tokenizer, persona, question)
    cut = text.find(IMAGE_TAG)
    if cut < 0:
        raise ValueError("the prompt template dropped the image tag")
    prefix = tokenizer(text[:cut], add_special_tokens=False)["input_ids"]
    suffix = tokenizer(text[cut:], add_special_tokens=False)["input_ids"]
    return PromptTokens(list(prefix), list(suffix))
