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

import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pmllm_batch.errors import ProfileError

BIG_FIVE = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")
TEXT_FIELDS = ("gender", "education", "art_experience", "photography_experience", "nationality", "notes")
ALLOWED_KEYS = ("name", "age", *TEXT_FIELDS, "big_five", "art_interest")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\- ]{0,63}$")
_AGE_BIN_RE = re.compile(r"^\d{1,3}\s*[-–]\s*\d{1,3}$|^\d{1,3}\+$")


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

    def to_dict(self) -> dict[str, Any]:
        """Plain dict without empty fields (stable for hashing and JSON)."""
        return {k: v for k, v in asdict(self).items() if v not in (None, {}, "")}

    def with_name(self, name: str) -> Profile:
        return Profile.from_dict({**self.to_dict(), "name": name})

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "profile") -> Profile:
        """Validate and build a profile. Raises ProfileError with one sentence on bad input."""
        unknown = sorted(set(data) - set(ALLOWED_KEYS))
        if unknown:
            raise ProfileError(
                f"{source}: unknown field(s) {', '.join(unknown)}; allowed fields are {', '.join(ALLOWED_KEYS)}."
            )
        name = data.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ProfileError(
                f"{source}: 'name' must be 1-64 letters, digits, spaces, '.', '_' or '-' (got {name!r})."
            )
        age = data.get("age")
        if age is not None:
            if isinstance(age, bool) or not isinstance(age, (int, str)):
                raise ProfileError(f"{source}: 'age' must be years (e.g. 34) or a bin such as \"22-25\".")
            if isinstance(age, int) and not 0 < age < 130:
                raise ProfileError(f"{source}: 'age' {age} is not a plausible age in years.")
            if isinstance(age, str):
                age = age.strip()
                if age.isdigit():
                    age = int(age)
                elif not _AGE_BIN_RE.match(age):
                    raise ProfileError(f"{source}: 'age' must be years (e.g. 34) or a bin such as \"22-25\".")
        texts: dict[str, str | None] = {}
        for key in TEXT_FIELDS:
            value = data.get(key)
            if value is not None and not isinstance(value, str):
                raise ProfileError(f"{source}: '{key}' must be text.")
            texts[key] = value.strip() if isinstance(value, str) and value.strip() else None
        big_five_in = data.get("big_five") or {}
        if not isinstance(big_five_in, dict):
            raise ProfileError(f"{source}: [big_five] must be a table of {', '.join(BIG_FIVE)}.")
        big_five: dict[str, float] = {}
        for trait, value in big_five_in.items():
            if trait not in BIG_FIVE:
                raise ProfileError(f"{source}: unknown Big-Five trait '{trait}'; use {', '.join(BIG_FIVE)}.")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 10:
                raise ProfileError(f"{source}: big_five.{trait} must be a number from 1 to 10.")
            big_five[trait] = float(value)
        art_in = data.get("art_interest") or {}
        if not isinstance(art_in, dict):
            raise ProfileError(f"{source}: [art_interest] must be a table of item = 0..6 or item = \"words\".")
        art: dict[str, float | str] = {}
        for item, value in art_in.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ProfileError(f"{source}: art_interest.{item} must be a number from 0 to 6 or text.")
            if isinstance(value, (int, float)) and not 0 <= value <= 6:
                raise ProfileError(f"{source}: art_interest.{item} must be a number from 0 to 6.")
            art[str(item)] = float(value) if isinstance(value, (int, float)) else value
        return cls(name=name, age=age, big_five=big_five, art_interest=art, **texts)


def load_profile(path: str | Path) -> Profile:
    """Read one profile TOML file; any problem becomes a ProfileError naming the file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ProfileError(f"cannot read profile file {p}: {exc.strerror or exc}.") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{p} is not valid TOML: {exc}.") from None
    return Profile.from_dict(data, source=str(p))


NEUTRAL_PROFILE = Profile(name="neutral")
