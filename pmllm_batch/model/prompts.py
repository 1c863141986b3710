"""Profile → persona text → token ids, split at the image tag.

The persona is written in plain words a language model can read. Each Big-Five level also gets a
descriptive word (``curious``, ``reserved`` …) next to its number, because a word carries the trait
*and* its direction in one token, which small models read far more easily than "openness 8/10".

The prompt is the LLM's own chat template when it has one (persona as the system message, or folded
into the user turn for templates without a system role) and the paper's question. Everything before
the image tag is the *prefix*: it depends on the profile only and is cached once per profile; the
*suffix* (from the image tag to the answer position) is the same for every profile and image. The suffix
is the only part run per (image, profile) pair, so nothing that does not depend on the image comes
after the tag: the answer instruction and the whole question text precede it, and the image closes the
user turn (our choice; the paper puts ``<image>image</image>`` inside its question). The suffix is then
the image token plus the template's answer header: 4 tokens with the demo tokenizer, 7 with SmolLM2's.

The tag is written ``<image>`` in the prompt text (a position marker); the LLM reads it as the one word
:data:`IMAGE_WORD` ("image", a single token in byte-level BPE vocabularies and in the demo's), because the
three tokens ``<``, ``image``, ``>`` would triple the image's share of the per-pair suffix.

Persona styles (:func:`render_persona`): ``standard`` (the wording training sees), ``paraphrase`` (the same
facts in other words, for robustness checks only) and ``notes`` (the same facts as a first-person
self-description in the free-text notes field). ``fields`` renders only some profile fields (coarse profiles).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pmllm_batch.profiles import BIG_FIVE, Profile

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IMAGE_TAG = "<image>"
IMAGE_WORD = "image"  # what the LLM reads at the tag: one token
QUESTION = "Rate the aesthetics of this image based on the persona you are embodying."
PERSONA_STYLES = ("standard", "paraphrase", "notes")
PROFILE_FIELDS = (
    "age",
    "gender",
    "nationality",
    "education",
    "art_experience",
    "photography_experience",
    "big_five",
    "art_interest",
    "notes",
)
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


_SENTENCE_ENDS = (".", "!", "?", "…")
_CLOSERS = ("\"", "'", ")", "]", "”", "’", "»")


def _sentence(text: str) -> str:
    """``text`` stripped and ending as a sentence: a period is added (in place of a trailing ``,``, ``;`` or ``:``)
    unless it ends with ``.``, ``!``, ``?`` or ``…`` (possibly inside closing quotes or brackets), so the next
    sentence of the persona does not run on."""
    text = text.strip()
    if text.rstrip("".join(_CLOSERS)).endswith(_SENTENCE_ENDS):
        return text
    return (text.rstrip(",;:").rstrip() or text) + "."


def _only(profile: Profile, fields: Sequence[str] | None) -> Profile:
    if fields is None:
        return profile
    unknown = sorted(set(fields) - set(PROFILE_FIELDS))
    if unknown:
        raise ValueError(f"unknown profile field(s) {', '.join(unknown)}; known: {', '.join(PROFILE_FIELDS)}")
    empty: dict[str, dict[str, float]] = {"big_five": {}, "art_interest": {}}
    dropped = {f: empty.get(f) for f in PROFILE_FIELDS if f not in fields}  # each left-out field's blank value
    blank_out: Callable[..., Profile] = dataclasses.replace  # the fields differ in type; each blank fits its own
    return blank_out(profile, **dropped)


def render_persona(profile: Profile, style: str = "standard", fields: Sequence[str] | None = None) -> str:
    """Write a profile as a persona instruction. Every field is optional; absent ones are not mentioned.

    Args:
        profile: the person.
        style: ``standard`` (training wording), ``paraphrase`` or ``notes`` (see the module doc).
        fields: render only these fields (names from :data:`PROFILE_FIELDS`); None = all.
    """
    profile = _only(profile, fields)
    if style == "paraphrase":
        return _paraphrase(profile)
    if style == "notes":
        return _as_notes(profile)
    if style != "standard":
        raise ValueError(f"persona style must be one of {', '.join(PERSONA_STYLES)}, not {style!r}")
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
        lines.append("Notes: " + _sentence(profile.notes))
    lines.append("Judge every photo as this person would.")
    return " ".join(lines)


# A second wording of the same facts, never used in training (robustness evaluation only).
_PARA_TRAITS = {
    "openness": ("traditional", "open-minded"),
    "conscientiousness": ("easygoing", "disciplined"),
    "extraversion": ("quiet", "sociable"),
    "agreeableness": ("demanding", "kind"),
    "neuroticism": ("relaxed", "nervous"),
}


def _paraphrase(profile: Profile) -> str:
    parts: list[str] = []
    if profile.age is not None:
        parts.append(f"I am {profile.age} years old" if isinstance(profile.age, int) else f"my age is {profile.age}")
    if profile.gender:
        parts.append(f"I am {profile.gender}")
    if profile.nationality:
        parts.append(f"I come from a {profile.nationality} background")
    if profile.education:
        parts.append(f"my schooling is {profile.education}")
    if profile.art_experience:
        parts.append(f"my knowledge of art is {profile.art_experience}")
    if profile.photography_experience:
        parts.append(f"as a photographer I am {profile.photography_experience}")
    if profile.big_five:
        for t in BIG_FIVE:
            if t in profile.big_five:
                v = profile.big_five[t]
                low, high = _PARA_TRAITS[t]
                word = low if v <= 3 else high if v >= 8 else f"fairly {low if v < 5.5 else high}"
                parts.append(f"people call me {word} ({t} {v:g}/10)")
    if profile.art_interest:
        parts.append("my interest in art: " + _interest_phrase(profile.art_interest))
    text = "Imagine you are the following viewer of photos. " + ("; ".join(parts) if parts else "Nothing is known")
    if profile.notes:
        text += ". In my words: " + profile.notes.strip()
    return text + ". Give ratings the way this viewer would."


# What each trait means for the synthetic task's hidden preference, said the way a person would say it.
_NOTE_PHRASES = {
    "openness": ("I prefer muted, natural colours", "I love vivid, saturated colour"),
    "extraversion": ("I like dark, moody light", "I like bright, sunny pictures"),
    "conscientiousness": ("I do not mind a loose composition", "I want tidy, well-ordered pictures"),
    "agreeableness": ("I am a harsh critic", "I am easy to please"),
    "neuroticism": ("clutter does not bother me", "busy, cluttered pictures make me uneasy"),
}
_NOTE_PHOTO = {
    "beginner": "I am new to photography",
    "competent": "I take photos as a hobby",
    "proficient": "I am a skilled photographer, blur and grain bother me",
    "expert": "I am a seasoned photographer, blur and grain bother me a lot",
}


def _as_notes(profile: Profile) -> str:
    sentences: list[str] = []
    if profile.age is not None:
        sentences.append(f"I am {profile.age}" + (" years old" if isinstance(profile.age, int) else ""))
    if profile.gender:
        sentences.append(f"I am {profile.gender}")
    if profile.photography_experience:
        sentences.append(_NOTE_PHOTO.get(profile.photography_experience.lower(), "photography is part of my life"))
    if profile.art_experience:
        sentences.append(f"my art experience is {profile.art_experience}")
    for t in BIG_FIVE:
        if profile.big_five and t in profile.big_five:
            v = profile.big_five[t]
            if v <= 4 or v >= 7:
                sentences.append(_NOTE_PHRASES[t][int(v >= 7)])
    if profile.notes:
        sentences.append(profile.notes.strip().rstrip("."))
    notes = "; ".join(sentences) if sentences else "I have nothing to say about myself"
    return (
        f"You are a person who rates photographs. About you: no personal details are known. Notes: {notes}. "
        "Judge every photo as this person would."
    )


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
    return f"Rate the {attribute} of this image based on the persona you are embodying."


def prompt_text(tokenizer: PreTrainedTokenizerBase, persona: str, question: str | None = None) -> str:
    """The full prompt text for a persona (chat template when the tokenizer has one)."""
    # The answer hint and the whole question go *before* the image: everything image-independent then sits in
    # the cached prefix, and the per-(image, profile) suffix is only the image token plus the answer header
    # (4 tokens with the demo tokenizer, 7 with SmolLM2's; 18 with the question after the image).
    user = f"{ANSWER_HINT} {question or QUESTION}\n{IMAGE_TAG}"
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


def build_prompt(tokenizer: PreTrainedTokenizerBase, persona: str, question: str | None = None) -> PromptTokens:
    """Tokenise the prompt in two pieces split at the image tag.

    Both the cached path and the full-prompt path use exactly these ids, so they agree by construction.
    """
    text = prompt_text(tokenizer, persona, question)
    cut = text.rfind(IMAGE_TAG)
    if cut < 0:
        raise ValueError("the prompt template dropped the image tag")
    prefix = tokenizer(text[:cut], add_special_tokens=False)["input_ids"]
    suffix = tokenizer(IMAGE_WORD + text[cut + len(IMAGE_TAG) :], add_special_tokens=False)["input_ids"]
    return PromptTokens(list(prefix), list(suffix))
