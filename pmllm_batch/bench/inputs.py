"""What every bench section measures on: the seed, the bench personas and the photos derived from real ones."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pmllm_batch.errors import UserError
from pmllm_batch.preprocess_cfg import PreprocessCfg
from pmllm_batch.profiles import Profile

if TYPE_CHECKING:
    import PIL.Image

    from pmllm_batch.model.pmllm import PMLLM

EXAMPLE_PHOTOS = Path(__file__).resolve().parents[2] / "examples" / "photos"
MIN_PERSONA_TOKENS = 120
# every random input of the bench (weights of the cpu model, GEMM operands) comes from this seed
SEED = 0

# Full profiles (every field set, a paragraph of notes) whose personas are 174-181 tokens with the demo tokenizer,
# above MIN_PERSONA_TOKENS. Notes use only words the demo vocabulary knows, so no [UNK] inflates the count. The
# prefix-cache speedup is bounded by (prefix + suffix) / suffix tokens, so the persona length is reported with it.
BENCH_PROFILES: tuple[Profile, ...] = (
    Profile(
        name="ana",
        age="22-25",
        gender="female",
        nationality="spanish",
        education="bachelor",
        art_experience="proficient",
        photography_experience="expert",
        big_five={"openness": 9, "conscientiousness": 5, "extraversion": 9, "agreeableness": 6, "neuroticism": 3},
        art_interest={"VAIAK1": 5, "VAIAK2": 4, "VAIAK3": 6, "VAIAK4": 5},
        notes="loves street photos , likes portrait photos with soft colour , prefers vivid colour in landscape "
        "photos , likes sharp photos with cool color , dislikes dark photos , dislikes muted color in street photos "
        ", loves nature photos with bright colour , prefers soft portrait photos , likes sharp landscape photos with "
        "vivid color . prefers street photos with sharp color over soft landscape photos , loves portrait photos of a "
        "person in bright color .",
    ),
    Profile(
        name="bernd",
        age=61,
        gender="male",
        nationality="german",
        education="master",
        art_experience="competent",
        photography_experience="beginner",
        big_five={"openness": 3, "conscientiousness": 8, "extraversion": 2, "agreeableness": 7, "neuroticism": 6},
        art_interest={"VAIAK1": 1, "VAIAK2": 2, "VAIAK3": 1, "VAIAK4": 2},
        notes="loves nature photos , likes landscape photos with soft colour , prefers bright photos , dislikes "
        "street photos , dislikes dark photos with muted color , likes sharp portrait photos , prefers cool colour in "
        "nature photos , dislikes vivid color , likes soft landscape photos with bright color , prefers sharp photos . "
        "prefers nature photos with calm soft colour over street photos , dislikes portrait photos with dark muted "
        "color .",
    ),
    Profile(
        name="chen",
        age=34,
        gender="non-binary",
        nationality="chinese",
        education="doctor",
        art_experience="expert",
        photography_experience="proficient",
        big_five={"openness": 7, "conscientiousness": 4, "extraversion": 5, "agreeableness": 4, "neuroticism": 5},
        art_interest={"VAIAK1": 6, "VAIAK2": 5, "VAIAK3": 4, "VAIAK4": 6},
        notes="loves dark photos with muted color , prefers street photos , likes portrait photos with soft colour , "
        "dislikes bright photos , likes cool colour in street photos , dislikes landscape photos with vivid color , "
        "prefers sharp portrait photos , loves nature photos with muted colour , likes soft photos with dark color . "
        "prefers street photos of a person in dark color over bright landscape photos , dislikes vivid nature photos .",
    ),
)


@dataclass
class PersonaTokens:
    """Token counts of one profile's prompt with a model's tokenizer."""

    profile: str
    persona_tokens: int
    unknown_tokens: int
    prefix_tokens: int
    suffix_tokens: int


def persona_token_counts(model: PMLLM, profiles: Sequence[Profile]) -> list[PersonaTokens]:
    """Persona, prefix and suffix token counts of each profile's prompt with the model's tokenizer."""
    from pmllm_batch.model.prompts import render_persona

    rows = []
    for p in profiles:
        persona = render_persona(p)
        prompt = model.prompt(persona)
        ids: list[int] = model.tokenizer(persona, add_special_tokens=False)["input_ids"]
        unk: int | None = getattr(model.tokenizer, "unk_token_id", None)
        rows.append(
            PersonaTokens(
                profile=p.name,
                persona_tokens=len(ids),
                unknown_tokens=ids.count(unk) if unk is not None else 0,
                prefix_tokens=len(prompt.prefix_ids),
                suffix_tokens=len(prompt.suffix_ids),
            )
        )
    return rows


def find_photos(folder: str | os.PathLike[str] | None = None) -> list[Path]:
    """The source photos: ``folder`` or the repository's ``examples/photos``.

    Raises:
        UserError: no JPEG/PNG photos there.
    """
    root = Path(folder) if folder else EXAMPLE_PHOTOS
    photos = sorted(p for p in root.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not photos:
        raise UserError(f"no photos (*.jpg, *.png) in {root}; pass a folder of real photos with --photos.")
    return photos


def make_photo_variants(sources: Sequence[Path], out: Path, n: int, start: int = 0) -> list[Path]:
    """Write ``n`` distinct JPEGs derived from ``sources`` into ``out`` (never into the sources' folder).

    Variant ``i`` is source ``i % len(sources)``, cropped by 2–14 % at an offset that depends on ``i``,
    mirrored on odd rounds and toned slightly; so every file has its own content hash and real-photo statistics.
    """
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    images: list[Image.Image] = []
    for p in sources:
        with Image.open(p) as im:
            images.append(im.convert("RGB"))
    paths = []
    for i in range(start, start + n):
        src = i % len(sources)
        path = out / f"{Path(sources[src]).stem}-{i:04d}.jpg"
        _variant(images[src], i // len(sources)).save(path, quality=90)
        paths.append(path)
    return paths


def _variant(img: PIL.Image.Image, k: int) -> PIL.Image.Image:
    """Round ``k``'s variant of one source image: cropped, mirrored on odd rounds, toned on two rounds of three."""
    from PIL import ImageEnhance, ImageOps

    w, h = img.size
    frac = 0.02 + 0.03 * (k % 5)
    dx, dy = max(1, int(w * frac)), max(1, int(h * frac))
    ox, oy = (k * 7) % (dx + 1), (k * 11) % (dy + 1)
    v = img.crop((ox, oy, w - dx + ox, h - dy + oy))
    if k % 2:
        v = ImageOps.mirror(v)
    if k % 3 == 1:
        v = ImageEnhance.Brightness(v).enhance(1.08)
    elif k % 3 == 2:
        v = ImageEnhance.Color(v).enhance(0.85)
    return v


def load_pixels(paths: Sequence[Path], preprocess: PreprocessCfg) -> np.ndarray:
    """Decode and preprocess photos exactly as the scorer does. Returns: (B, 3, S, S) float32."""
    from PIL import Image

    from pmllm_batch.runtime.preprocess import preprocess_image

    batch = []
    for p in paths:
        with Image.open(p) as im:
            batch.append(preprocess_image(im, preprocess))
    return np.stack(batch)
