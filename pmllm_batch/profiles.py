"""Person profiles: the only thing the model knows about the person it rates for.

A profile is a small TOML file. Every field except ``name`` is optional, so a coarse profile of only
age and gender works. Vocabularies follow the public datasets the model is trained on:

* PARA (``PARA-UserInfo.csv``): age bins such as ``"22-25"``, ``gender``, ``EducationalLevel``,
  ``artExperience`` / ``photographyExperience`` (``beginner``, ``competent``, ``proficient``,
  ``expert``), Big-Five ``personality-E/-A/-N/-O/-C`` (1–10).
* LAPIS: age in years, ``nationality``, ``demo_gender``, ``demo_edu``, art-interest items
  ``VAIAK1..7`` / ``2VAIAK1..4`` (0–6).

Example::

    name = "alice"
    age = 34
    gender = "female"
    photography_experience = "proficient"
    [big_five]
    openness = 8
    [art_interest]
    museum_visits = 5
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pmllm_batch.errors import ProfileError

BIG_FIVE = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")
TEXT_FIELDS = ("gender", "education", "art_experience", "photography_experience", "nationality", "notes")
ALLOWED_KEYS = ("name", "age", *TEXT_FIELDS, "big_five", "art_interest")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\- ]{0,63}$")
_AGE_BIN_RE = re.compile(r"^(\d{1,3})\s*[-–]\s*(\d{1,3})$|^(\d{1,3})\+$")

# The vocabularies of the datasets the model learns from (PARA, LAPIS, the synthetic task), checked by
# `profile add` (strict mode): a value outside them reaches the model as a word it never saw ("gender banana").
# Spelling is free in case and separators ("Senior High School" = "senior_high_school"); the stored value is the
# canonical one listed here. Datasets are read leniently (strict=False), whatever their files say.
GENDERS = ("female", "male", "non-binary", "other")
EXPERIENCE_LEVELS = ("beginner", "competent", "proficient", "expert")  # PARA artExperience / photographyExperience
EDUCATION_LEVELS = (
    "primary_school", "junior_high_school", "senior_high_school", "technical_secondary_school", "vocational",
    "junior_college", "university", "bachelor", "master", "doctorate",
)
_EDUCATION_ALIASES = {"phd": "doctorate", "high_school": "senior_high_school", "college": "junior_college"}
ART_INTEREST_ITEMS = tuple(f"VAIAK{i}" for i in range(1, 8)) + tuple(f"2VAIAK{i}" for i in range(1, 5))  # LAPIS
VOCABULARIES: dict[str, tuple[str, ...]] = {
    "gender": GENDERS,
    "education": EDUCATION_LEVELS,
    "art_experience": EXPERIENCE_LEVELS,
    "photography_experience": EXPERIENCE_LEVELS,
}


def _token(value: str) -> str:
    return re.sub(r"[\s\-_]+", "_", value.strip().lower())


def did_you_mean(value: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or "" when none is close."""
    by_token = {_token(c): c for c in choices}
    close = difflib.get_close_matches(_token(value), list(by_token), n=1, cutoff=0.6)
    return f" (did you mean '{by_token[close[0]]}'?)" if close else ""


def _canonical(key: str, value: str) -> str | None:
    """The vocabulary's spelling of ``value`` for field ``key``, or None when it is not in the vocabulary."""
    token = _token(value)
    if key == "education":
        token = _EDUCATION_ALIASES.get(token, token)
    if key == "gender":
        token = {"nonbinary": "non_binary", "non_binary": "non_binary"}.get(token, token)
    for choice in VOCABULARIES[key]:
        if _token(choice) == token:
            return choice
    return None


@dataclass(frozen=True)
class Profile:
    """One person. ``age`` is years (int) or a bin string such as ``"22-25"``."""

    name: str
    age: int | str | None = None
    gender: str | None = None
    education: str | None = None
    art_experience: str | None = None
    photography_experience: str | None = None
    nationality: str | None = None
    big_five: dict[str, float] = field(default_factory=dict)  # trait -> 1..10
    art_interest: dict[str, float | str] = field(default_factory=dict)  # item -> 0..6 or words
    notes: str | None = None

    def to_dict(self) -> dict[str, object]:
        """Plain dict without empty fields (stable for hashing and JSON)."""
        return {k: v for k, v in asdict(self).items() if v not in (None, {}, "")}

    def with_name(self, name: str) -> Profile:
        return Profile.from_dict({**self.to_dict(), "name": name})

    @classmethod
    def from_dict(cls, data: dict[str, object], *, source: str = "profile", strict: bool = False) -> Profile:
        """Validate and build a profile.

        Args:
            data: The fields, as read from TOML.
            source: Where they came from, for the message (a file path).
            strict: Also check values against the known vocabularies (:data:`VOCABULARIES`, LAPIS art-interest
                items) with "did you mean" hints, and store their canonical spelling (``profile add``).

        Raises:
            ProfileError: One sentence naming ``source`` and every problem found (not just the first).
        """
        profile, problems = _build(cls, data, strict=strict)
        if problems:
            if len(problems) == 1:
                raise ProfileError(f"{source}: {problems[0]}.")
            raise ProfileError(f"{source} has {len(problems)} problems: {'; '.join(problems)}.")
        assert profile is not None
        return profile


def _build(cls: type[Profile], data: dict[str, object], *, strict: bool) -> tuple[Profile | None, list[str]]:
    problems: list[str] = []
    unknown = sorted(set(data) - set(ALLOWED_KEYS))
    if unknown:
        if strict:
            for key in unknown:
                hint = did_you_mean(key, ALLOWED_KEYS) or f" (the fields are {', '.join(ALLOWED_KEYS)})"
                problems.append(f"unknown field '{key}'{hint}")
        else:
            problems.append(f"unknown field(s) {', '.join(unknown)}; allowed fields are {', '.join(ALLOWED_KEYS)}")
    name = data.get("name")
    if name is None or (isinstance(name, str) and not name.strip()):
        problems.append('a profile needs a name (a line such as name = "mia")')
    elif not isinstance(name, str) or not _NAME_RE.match(name):
        problems.append(f"'name' must be 1-64 letters, digits, spaces, '.', '_' or '-' (got {name!r})")
    age = data.get("age")
    if age is not None:
        if isinstance(age, bool) or not isinstance(age, (int, str)):
            problems.append("'age' must be years (e.g. 34) or a bin such as \"22-25\"")
            age = None
        elif isinstance(age, int):
            if not 0 < age < 130:
                problems.append(f"'age' {age} is not a plausible age in years")
        else:
            age = age.strip()
            if age.isdigit():
                age = int(age)
                if not 0 < age < 130:
                    problems.append(f"'age' {age} is not a plausible age in years")
            else:
                m = _AGE_BIN_RE.match(age)
                if not m:
                    problems.append("'age' must be years (e.g. 34) or a bin such as \"22-25\"")
                elif strict and m.group(1) is not None and int(m.group(1)) > int(m.group(2)):
                    problems.append(f"'age' bin \"{age}\" starts above where it ends")
                elif strict and max(int(g) for g in m.groups() if g is not None) >= 130:
                    problems.append(f"'age' bin \"{age}\" is not a plausible age in years")
    texts: dict[str, str | None] = {}
    for key in TEXT_FIELDS:
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            problems.append(f"'{key}' must be text")
            value = None
        text = value.strip() if isinstance(value, str) and value.strip() else None
        if strict and text is not None and key in VOCABULARIES:
            canonical = _canonical(key, text)
            if canonical is None:
                problems.append(
                    f"{key} \"{text}\" is not one of {', '.join(VOCABULARIES[key])}"
                    f"{did_you_mean(text, VOCABULARIES[key])}"
                )
            text = canonical or text
        texts[key] = text
    big_five_in = data.get("big_five") or {}
    big_five: dict[str, float] = {}
    if not isinstance(big_five_in, dict):
        problems.append(f"[big_five] must be a table of {', '.join(BIG_FIVE)}")
        big_five_in = {}
    for trait, value in big_five_in.items():
        if trait not in BIG_FIVE:
            hint = did_you_mean(trait, BIG_FIVE) if strict else ""
            problems.append(f"unknown Big-Five trait '{trait}'" + (hint or f"; use {', '.join(BIG_FIVE)}"))
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 10:
            problems.append(f"big_five.{trait} must be a number from 1 to 10")
            continue
        big_five[trait] = float(value)
    art_in = data.get("art_interest") or {}
    art: dict[str, float | str] = {}
    if not isinstance(art_in, dict):
        problems.append("[art_interest] must be a table of item = 0..6 or item = \"words\"")
        art_in = {}
    for item, value in art_in.items():
        item = str(item)
        if strict and item not in ART_INTEREST_ITEMS:
            hint = did_you_mean(item, ART_INTEREST_ITEMS)
            if hint:  # a misspelt LAPIS item; other names are the user's own items
                problems.append(f"unknown art-interest item '{item}'{hint}")
                continue
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            problems.append(f"art_interest.{item} must be a number from 0 to 6 or text")
            continue
        if isinstance(value, (int, float)) and not 0 <= value <= 6:
            problems.append(f"art_interest.{item} must be a number from 0 to 6")
            continue
        art[item] = float(value) if isinstance(value, (int, float)) else value
    if problems:
        return None, problems
    assert isinstance(name, str)
    return cls(name=name, age=age, big_five=big_five, art_interest=art, **texts), []


def load_profile(path: str | Path, *, strict: bool = True) -> Profile:
    """Read one profile TOML file; any problem becomes a ProfileError naming the file and every problem in it.

    ``strict`` (the default: a person's file) checks values against the known vocabularies; see
    :meth:`Profile.from_dict`.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ProfileError(f"cannot read profile file {p}: {exc.strerror or exc}.") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{p} is not valid TOML: {exc}.") from None
    return Profile.from_dict(data, source=str(p), strict=strict)


NEUTRAL_PROFILE = Profile(name="neutral")
