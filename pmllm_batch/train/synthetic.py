"""The synthetic preference task: the controlled problem on which the P-MLLM mechanism is proven.

Why it exists
-------------
PARA and LAPIS cannot ship with the package, and on real data one never knows how much of a person's
taste is readable from their profile at all. Here the ground truth is known: images are rendered from
7 parameters, people are sampled in PARA's profile schema, and a **hidden rating function** says how
much each person likes each image. A model that reads the profile text and the pixels can learn it; a
model that ignores the profile provably cannot get past a known ceiling. The demo preset is trained on
this task, and its scores show the mechanism, not real taste.

Images (:class:`ImageParams`, :func:`render_image`)
---------------------------------------------------
A procedurally drawn scene — a sky gradient over a striped ground and one round subject — then, in
this order: saturation, colour temperature (a white-balance cast, applied after saturation so a muted
image can still look warm), contrast, brightness, Gaussian blur, Gaussian noise. Every parameter
changes pixels monotonically and measurably (see ``tests/test_synthetic.py``):

=============  ===========  ======================================================================
parameter      range        visible as
=============  ===========  ======================================================================
temperature    -1 .. +1     cool (blue cast) .. warm (red/orange cast): mean(R - B) rises
saturation     0 .. 1       nearly grey .. vivid: per-pixel chroma (max - min channel) rises
brightness     0 .. 1       dark .. bright: mean luminance rises
contrast       0 .. 1       flat .. punchy: luminance standard deviation rises
blur           0 .. 1       sharp .. soft (Gaussian sigma up to 2.2 px at 96 px): high frequencies fall
noise          0 .. 1       clean .. grainy (pixel noise sigma up to 0.14): high frequencies rise
composition    0 .. 1       subject centred .. on a rule-of-thirds point: left/right asymmetry rises
=============  ===========  ======================================================================

People (:func:`sample_profile`)
-------------------------------
PARA schema: age bin from ``PARA_AGE_BINS``, gender, education level, art and photography experience
(beginner / competent / proficient / expert), Big-Five traits as integers 1..10 — all uniform and
independent, so every trait that matters is balanced around its neutral value across the population.

The hidden rating (:func:`hidden_rating`)
------------------------------------------
With centred image features ``xS = 2·saturation-1``, ``xB = 2·brightness-1``, ``xT = temperature``,
``defect = -(2·blur-1 + 2·noise-1)/√2`` (positive = clean and sharp) and profile signs in [-1, 1]
(0 when the field is missing)::

    s_O   = clip((openness     - 5.5) / 3, -1, 1)       open minds like vivid colour, closed ones muted
    s_E   = clip((extraversion - 5.5) / 3, -1, 1)       extraverts like bright/high-key, introverts dark/moody
    s_age = clip((age_years    - 30)  / 8, -1, 1)       older people like warm light, younger ones cool
    s_P   = beginner -1, competent -1/3, proficient +1/3, expert +1
                                                          experts punish blur and noise hard; beginners do not
                                                          mind them (net, they slightly like a soft, grainy look)

    rating = clip(3 + 0.55·quality(params) + 0.95·(s_O·xS + s_E·xB + s_age·xT + s_P·defect), 1, 5)
             (+ Gaussian noise, noise_std 0.15, clip to 1..5, rounded to 0.5 steps like PARA)

``quality`` is the shared term everybody agrees on (rule-of-thirds composition, contrast, sharpness,
cleanliness, a well-centred exposure), scaled to unit standard deviation over :func:`sample_image_params`.
It is about 35% of the variance of the noiseless rating; the four profile × image interactions carry the
rest and change sign between people, so within-user rankings differ strongly. An age bin is read as its
midpoint (``"41+"`` as 45). Gender, education, art experience, conscientiousness, agreeableness and
neuroticism are distractors: they never enter the rating, so a model must learn to *select* the
relevant profile fields. The neutral profile (all signs 0) rates by ``quality`` alone.

Oracle numbers (:func:`oracle_report` with defaults: seed 0, 400 people × 60 of 600 images, noise 0.15)
------------------------------------------------------------------------------------------------------
===================================================  ============  ===============
predictor of the noisy, rounded ratings               pooled SROCC  per-user SROCC
===================================================  ============  ===============
ideal: hidden rating without noise                    0.976         0.970
profile-blind Bayes: population mean of the rating     0.537         0.528
quality only (best linear predictor on quality)        0.535         0.526
shuffled profiles (hidden rating, wrong person)        0.322         0.321
===================================================  ============  ===============

So "uses the profile" means clearly beating ~0.54 pooled, and a model that reads somebody else's
profile drops to ~0.32. Shared quality term: 35% of the noiseless variance. Ratings spread over 1..5
(std ≈ 0.97; 23% of ratings ≤ 2 and 21% ≥ 4).

Idiosyncrasy (``make_synthetic_dataset(..., idiosyncrasy=SHARE)``)
------------------------------------------------------------------
Real people have tastes no profile field reveals. With ``SHARE`` > 0 every person also gets a hidden taste
``u`` — a unit vector drawn uniformly on the sphere over the 7 image parameters (:func:`sample_tastes`, its own
random stream ``SeedSequence([seed, 11])``), independent of the profile — and the person-specific term becomes::

    √(1 − SHARE) · 0.95·(s_O·xS + s_E·xB + s_age·xT + s_P·defect)  +  √(SHARE · V) · Σ_j u_j · z_j

with ``z_j = √3·(2·(param_j − lo_j)/(hi_j − lo_j) − 1)`` (every parameter centred to unit variance, so the taste
term has variance exactly 1 for every person) and ``V = PROFILE_TERM_VARIANCE`` ≈ 0.710, the variance of the
profile term over sampled people and images (computed exactly from the sampling distributions). The taste
therefore carries ``SHARE`` of the person-specific variance and the total stays ``V``: the task is as personal
as before, but only ``1 − SHARE`` of it is readable from the profile. ``SHARE = 0`` is the task above, bit for
bit (the same files; ``tests/test_fewshot.py`` checks the digests written before the option existed). The
tastes are written to ``annotation/synthetic-tastes.csv``; :func:`synthetic_oracle` gives any (user, image)
pair's noiseless ``ideal`` and ``profile_only`` rating.

Oracle numbers of the few-shot protocol (:func:`idiosyncrasy_oracle` with defaults: seed 0, 200 people × 150
of 600 images, noise 0.15, 50 held-out photos per person, 3 draws; mean per-user SROCC; λ of both learners
calibrated on 40 other people). ``ideal`` is the hidden function itself, ``profile_only`` the hidden function
without the idiosyncratic term (the best any model that knows only the profile can do), ``stars_only`` the
stars-only ridge (:mod:`pmllm_batch.learn`) on the *true* image parameters and their squares, ``learner`` the
residual learner on the same parameters with ``profile_only`` as its prior — the ceilings of the two learners
with perfect features:

=======  ======  ============  ==============================  ==============================
SHARE    k       ideal         profile_only                    stars_only / learner
=======  ======  ============  ==============================  ==============================
0.4      0       0.971         0.807                           0.000 / 0.807
0.4      5       0.971         0.807                           0.460 / 0.851
0.4      10      0.971         0.807                           0.704 / 0.886
0.4      20      0.971         0.807                           0.907 / 0.933
0.4      50      0.971         0.807                           0.959 / 0.961
0.4      100     0.971         0.807                           0.966 / 0.966
0.0      any     0.971         0.971                           (k=10: 0.708) / 0.971
=======  ======  ============  ==============================  ==============================

With ``SHARE`` 0.4 the profile alone leaves 0.16 of SROCC on the table; with ``SHARE`` 0 the calibrated prior
is so strong (λ = 3000) that the learner stays at the profile-only ranking. A real model also misreads some of
the profile and sees the parameters only through pixels: the demo adapter's figures are in
:mod:`pmllm_batch.train.fewshot`.

The dataset folder (:func:`make_synthetic_dataset`)
---------------------------------------------------
Written in the PARA layout so that training and evaluation read it with
:func:`pmllm_batch.train.datasets.load_para` (``load_dataset("synthetic", root)``): ``annotation/PARA-Images.csv``
(aestheticScore plus the PARA attribute columns, derived as described in the folder's ``README.txt``),
``annotation/PARA-UserInfo.csv``, ``imgs/session<k>/syn_<n>.png``, ``userset/{Train,Test}UserIDs_Fold1..4.txt``
(user-disjoint), ``annotation/synthetic-params.csv`` (every image's parameters and quality) and ``README.txt``.
Everything is a deterministic function of the seed.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage, stats

from pmllm_batch.profiles import Profile
from pmllm_batch.train.datasets import PARA_ATTRIBUTES, PARA_PERSONALITY, seeded_user_split
from pmllm_batch.train.metrics import calculate_srcc

__all__ = [
    "EDUCATION_LEVELS",
    "EXPERIENCE_LEVELS",
    "GENDERS",
    "PARAM_RANGES",
    "PARAM_NAMES",
    "PARA_AGE_BINS",
    "ImageParams",
    "hidden_rating",
    "idiosyncrasy_oracle",
    "make_synthetic_dataset",
    "oracle_report",
    "profile_signs",
    "quality",
    "read_synthetic_params",
    "read_synthetic_tastes",
    "sample_tastes",
    "synthetic_oracle",
    "render_image",
    "sample_image_params",
    "sample_profile",
]

PARA_AGE_BINS = ("18-21", "22-25", "26-29", "30-34", "35-40", "41+")
GENDERS = ("male", "female")
EDUCATION_LEVELS = ("senior_high_school", "technical_secondary_school", "junior_college", "university")
EXPERIENCE_LEVELS = ("beginner", "competent", "proficient", "expert")
PARAM_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (-1.0, 1.0),
    "saturation": (0.0, 1.0),
    "brightness": (0.0, 1.0),
    "contrast": (0.0, 1.0),
    "blur": (0.0, 1.0),
    "noise": (0.0, 1.0),
    "composition": (0.0, 1.0),
}

# --- hidden-function constants (documented in the module docstring; change both together) -----------------------
QUALITY_WEIGHT = 0.55  # rating units per standard deviation of quality()
INTERACTION_WEIGHT = 0.95  # rating units per unit of the summed profile x image interactions
_EXPERIENCE_SIGN = {"beginner": -1.0, "competent": -1.0 / 3.0, "proficient": 1.0 / 3.0, "expert": 1.0}
# Raw quality weights: composition, contrast, -blur, -noise, -exposure error.
_Q_W = (0.35, 0.25, 0.30, 0.30, 0.45)
# Analytic std of the raw quality term when every parameter is uniform on its range
# (var of a centred uniform on [-1,1] is 1/3; var(x^2) for that uniform is 4/45).
_Q_STD = math.sqrt((_Q_W[0] ** 2 + _Q_W[1] ** 2 + _Q_W[2] ** 2 + _Q_W[3] ** 2) / 3.0 + _Q_W[4] ** 2 * 4.0 / 45.0)
_PARAM_DECIMALS = 6  # params are rounded so that synthetic-params.csv reproduces them exactly
_TASTE_STREAM = 11  # SeedSequence([seed, _TASTE_STREAM]): the idiosyncratic tastes, apart from every other stream

# --- rendering constants ----------------------------------------------------------------------------------------
_TEMP_GAIN = (0.30, 0.05, -0.30)  # per-channel white-balance gain per unit temperature (R, G, B)
_MAX_BLUR_SIGMA = 2.2  # px at 96 px; scaled with image size
_MAX_NOISE_SIGMA = 0.14
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class ImageParams:
    """The 7 parameters an image is rendered from (ranges in ``PARAM_RANGES``).

    Attributes:
        temperature: -1 cool .. +1 warm colour cast.
        saturation: 0 nearly grey .. 1 vivid.
        brightness: 0 dark .. 1 bright.
        contrast: 0 flat .. 1 punchy.
        blur: 0 sharp .. 1 soft.
        noise: 0 clean .. 1 grainy.
        composition: 0 subject centred .. 1 subject on a rule-of-thirds point.
    """

    temperature: float
    saturation: float
    brightness: float
    contrast: float
    blur: float
    noise: float
    composition: float

    def __post_init__(self) -> None:
        for f in fields(self):
            lo, hi = PARAM_RANGES[f.name]
            value = getattr(self, f.name)
            if not (isinstance(value, (int, float)) and lo <= value <= hi):
                raise ValueError(f"ImageParams.{f.name} must be in [{lo}, {hi}] (got {value!r}).")

    def as_array(self) -> np.ndarray:
        """The parameters in field order as a float64 vector."""
        return np.array(astuple(self), dtype=np.float64)

    def to_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}


PARAM_NAMES = tuple(f.name for f in fields(ImageParams))


def sample_image_params(rng: np.random.Generator) -> ImageParams:
    """Draw every parameter independently and uniformly over its range (rounded to 6 decimals).

    Args:
        rng: Random generator.

    Returns:
        The parameters of one image.
    """
    values = {name: round(float(rng.uniform(lo, hi)), _PARAM_DECIMALS) for name, (lo, hi) in PARAM_RANGES.items()}
    return ImageParams(**values)


# ----------------------------------------------------------------------------------------------------------------
# Rendering


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], dtype=np.float32)


def _base_scene(params: ImageParams, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw the unprocessed scene; returns (image HxWx3 in [0,1], noise field HxWx3 ~ N(0,1)).

    The number of random draws never depends on ``params``, so one seed gives the same scene for any
    parameters and a test can change a single parameter and see only its effect.
    """
    sky_top = np.array([0.22, 0.42, 0.78], dtype=np.float32) + rng.uniform(-0.08, 0.08, 3).astype(np.float32)
    sky_bottom = np.array([0.74, 0.80, 0.88], dtype=np.float32) + rng.uniform(-0.08, 0.08, 3).astype(np.float32)
    ground = np.array([0.32, 0.50, 0.24], dtype=np.float32) + rng.uniform(-0.10, 0.10, 3).astype(np.float32)
    horizon = float(rng.uniform(0.55, 0.72))
    subject_rgb = _hsv_to_rgb(float(rng.uniform(0.0, 1.0)), 0.75, 0.92)
    radius = float(rng.uniform(0.11, 0.16)) * size
    corner = int(rng.integers(0, 4))
    stripe_freq = float(rng.uniform(5.0, 9.0))
    noise_field = rng.standard_normal((size, size, 3)).astype(np.float32)

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    v = yy / (size - 1)
    sky_mix = np.clip(v / horizon, 0.0, 1.0)[..., None]
    sky = sky_top * (1.0 - sky_mix) + sky_bottom * sky_mix
    # Ground darkens towards the bottom and carries stripes symmetric about the centre column, so the
    # scene without a subject is left/right symmetric and composition shows up as asymmetry.
    centre = (size - 1) / 2.0
    depth = np.clip((v - horizon) / (1.0 - horizon), 0.0, 1.0)
    stripes = 1.0 + 0.15 * np.cos(2.0 * np.pi * stripe_freq * (xx - centre) / size)
    ground_img = ground * ((1.0 - 0.35 * depth) * stripes)[..., None]
    img = np.where((v >= horizon)[..., None], ground_img, sky)

    # Subject: a disc that moves from the centre to a rule-of-thirds point as composition goes 0 -> 1.
    tx = size / 3.0 if corner % 2 == 0 else 2.0 * size / 3.0
    ty = size / 3.0 if corner < 2 else 2.0 * size / 3.0
    cx = centre + params.composition * (tx - centre)
    cy = centre + params.composition * (ty - centre)
    dist = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    alpha = np.clip(radius - dist + 0.5, 0.0, 1.0)[..., None]  # 1-px anti-aliased edge
    shade = (1.0 - 0.25 * np.clip((yy - cy) / radius, -1.0, 1.0))[..., None]  # lit from above
    img = img * (1.0 - alpha) + subject_rgb * shade * alpha
    return np.clip(img, 0.0, 1.0).astype(np.float32), noise_field


def render_image(params: ImageParams, rng: np.random.Generator, size: int = 96) -> Image.Image:
    """Render one image: base scene, then saturation, temperature, contrast, brightness, blur, noise.

    Args:
        params: The image parameters.
        rng: Random generator for the scene content (colours, horizon, subject hue/size/corner, noise field).
        size: Width and height in pixels (at least 8).

    Returns:
        An RGB PIL image of ``size`` x ``size``.
    """
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels (got {size}).")
    img, noise_field = _base_scene(params, rng, size)
    # Saturation: scale chroma around the per-pixel luminance; never fully grey so hue stays readable.
    luma = (img @ _LUMA)[..., None]
    img = luma + (img - luma) * (0.15 + 1.7 * params.saturation)
    # Temperature: white-balance gains, applied after saturation so a muted picture can still be warm.
    img = img * (1.0 + params.temperature * np.array(_TEMP_GAIN, dtype=np.float32))
    # Contrast around the mean luminance, then an additive exposure shift.
    mean_luma = float((img @ _LUMA).mean())
    img = mean_luma + (img - mean_luma) * (0.45 + 1.1 * params.contrast)
    img = img + 0.45 * (params.brightness - 0.5)
    sigma = _MAX_BLUR_SIGMA * params.blur * size / 96.0
    if sigma > 0.0:
        img = ndimage.gaussian_filter(img, sigma=(sigma, sigma, 0.0), mode="nearest")
    img = img + _MAX_NOISE_SIGMA * params.noise * noise_field
    out = np.clip(np.rint(np.clip(img, 0.0, 1.0) * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(out, mode="RGB")


# ----------------------------------------------------------------------------------------------------------------
# People


def sample_profile(rng: np.random.Generator, user_id: str) -> Profile:
    """Draw one person in PARA's profile schema; all fields uniform and independent.

    Args:
        rng: Random generator.
        user_id: Dataset user id; the profile is named ``"user-<id>"`` like the dataset readers do.

    Returns:
        A full profile (age bin, gender, education, art/photography experience, all five Big-Five traits).
    """
    data: dict[str, object] = {
        "name": f"user-{user_id}",
        "age": PARA_AGE_BINS[int(rng.integers(len(PARA_AGE_BINS)))],
        "gender": GENDERS[int(rng.integers(len(GENDERS)))],
        "education": EDUCATION_LEVELS[int(rng.integers(len(EDUCATION_LEVELS)))],
        "art_experience": EXPERIENCE_LEVELS[int(rng.integers(len(EXPERIENCE_LEVELS)))],
        "photography_experience": EXPERIENCE_LEVELS[int(rng.integers(len(EXPERIENCE_LEVELS)))],
        "big_five": {trait: int(rng.integers(1, 11)) for trait in PARA_PERSONALITY.values()},
    }
    return Profile.from_dict(data, source=f"synthetic user {user_id}")


def _age_years(age: int | str | None) -> float | None:
    """Years, or the midpoint of a bin (``"41+"`` → 45); None when absent or unreadable."""
    if age is None:
        return None
    if isinstance(age, int):
        return float(age)
    s = age.strip().replace("–", "-")
    try:
        if s.endswith("+"):
            return float(s[:-1]) + 4.0
        lo, hi = s.split("-", 1)
        return (float(lo) + float(hi)) / 2.0
    except ValueError:
        return None


def profile_signs(profile: Profile) -> np.ndarray:
    """The 4 signs in [-1, 1] through which a profile enters the hidden rating (0 = missing / neutral).

    Order: openness (× saturation), extraversion (× brightness), age (× temperature),
    photography experience (× sharp-and-clean).
    """
    bf = profile.big_five
    o = bf.get("openness")
    e = bf.get("extraversion")
    years = _age_years(profile.age)
    exp = (profile.photography_experience or "").strip().lower()
    return np.array(
        [
            0.0 if o is None else float(np.clip((o - 5.5) / 3.0, -1.0, 1.0)),
            0.0 if e is None else float(np.clip((e - 5.5) / 3.0, -1.0, 1.0)),
            0.0 if years is None else float(np.clip((years - 30.0) / 8.0, -1.0, 1.0)),
            _EXPERIENCE_SIGN.get(exp, 0.0),
        ]
    )


def _profile_term_variance() -> float:
    """Variance of ``INTERACTION_WEIGHT * (signs · interactions)`` over sampled people and images.

    Exact: the four interaction features are independent, centred, of variance 1/3 each, and independent of the
    signs, whose mean squares follow from the uniform draws of :func:`sample_profile`.
    """
    trait = [float(np.clip((v - 5.5) / 3.0, -1.0, 1.0)) ** 2 for v in range(1, 11)]
    age = [float(np.clip((_age_years(b) or 30.0) - 30.0, -8.0, 8.0) / 8.0) ** 2 for b in PARA_AGE_BINS]
    exp = [_EXPERIENCE_SIGN[e] ** 2 for e in EXPERIENCE_LEVELS]
    mean_sq = 2.0 * float(np.mean(trait)) + float(np.mean(age)) + float(np.mean(exp))
    return INTERACTION_WEIGHT**2 * mean_sq / 3.0


# The person-specific variance of the task without idiosyncrasy (≈ 0.710); an idiosyncratic share keeps it.
PROFILE_TERM_VARIANCE = _profile_term_variance()


def _as_matrix(params: ImageParams | Sequence[ImageParams] | np.ndarray) -> np.ndarray:
    if isinstance(params, ImageParams):
        return params.as_array()[None, :]
    if isinstance(params, np.ndarray):
        return np.atleast_2d(params).astype(np.float64)
    return np.stack([p.as_array() for p in params])


def _quality_raw(m: np.ndarray) -> np.ndarray:
    _t, _s, b, c, bl, nz, comp = m.T
    xb = 2.0 * b - 1.0
    w = _Q_W
    return (
        w[0] * (2.0 * comp - 1.0)
        + w[1] * (2.0 * c - 1.0)
        - w[2] * (2.0 * bl - 1.0)
        - w[3] * (2.0 * nz - 1.0)
        - w[4] * (xb**2 - 1.0 / 3.0)
    )


def _interaction_features(m: np.ndarray) -> np.ndarray:
    """Image side of the 4 interactions (columns in the order of :func:`profile_signs`), each centred."""
    t, s, b, _c, bl, nz, _comp = m.T
    clean = -((2.0 * bl - 1.0) + (2.0 * nz - 1.0)) / math.sqrt(2.0)
    return np.stack([2.0 * s - 1.0, 2.0 * b - 1.0, t, clean], axis=1)


def quality(params: ImageParams | Sequence[ImageParams] | np.ndarray) -> float | np.ndarray:
    """The shared quality term: what every simulated person agrees on.

    Rule-of-thirds composition and contrast raise it; blur, noise and exposure away from the middle lower
    it. Scaled to mean ≈ 0 and standard deviation 1 over :func:`sample_image_params` (range about ±2.7).

    Args:
        params: One ImageParams (returns a float), or a sequence / (n, 7) array (returns an array).

    Returns:
        The quality value(s).
    """
    q = _quality_raw(_as_matrix(params)) / _Q_STD
    return float(q[0]) if isinstance(params, ImageParams) else q


def _check_share(idiosyncrasy: float) -> float:
    share = float(idiosyncrasy)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"idiosyncrasy must be in [0, 1] (got {idiosyncrasy!r}).")
    return share


def _taste_features(m: np.ndarray) -> np.ndarray:
    """The image side of an idiosyncratic taste: all 7 parameters centred and scaled to unit variance, (n, 7)."""
    lo = np.array([PARAM_RANGES[n][0] for n in PARAM_NAMES])
    hi = np.array([PARAM_RANGES[n][1] for n in PARAM_NAMES])
    return math.sqrt(3.0) * (2.0 * (m - lo) / (hi - lo) - 1.0)


def sample_tastes(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` idiosyncratic tastes: unit vectors uniform on the sphere over the 7 image parameters, (n, 7)."""
    u = rng.standard_normal((n, len(PARAM_NAMES)))
    return u / np.linalg.norm(u, axis=1, keepdims=True)


def _personal(inter: np.ndarray, idio: np.ndarray | None, share: float) -> np.ndarray:
    """The person-specific term: the profile interactions, plus the idiosyncratic taste when ``share`` > 0.

    ``share`` 0 returns ``INTERACTION_WEIGHT * inter`` exactly (the task before idiosyncrasy, bit for bit).
    """
    if share == 0.0 or idio is None:
        return INTERACTION_WEIGHT * inter
    return math.sqrt(1.0 - share) * INTERACTION_WEIGHT * inter + math.sqrt(share * PROFILE_TERM_VARIANCE) * idio


def _noiseless_matrix(
    signs: np.ndarray, m: np.ndarray, tastes: np.ndarray | None = None, share: float = 0.0
) -> np.ndarray:
    """Noiseless continuous ratings, shape (n_profiles, n_images)."""
    q = _quality_raw(m) / _Q_STD
    inter = np.atleast_2d(signs) @ _interaction_features(m).T
    idio = None if tastes is None else np.atleast_2d(tastes) @ _taste_features(m).T
    return np.clip(3.0 + QUALITY_WEIGHT * q[None, :] + _personal(inter, idio, share), 1.0, 5.0)


def _noiseless_pairs(
    signs: np.ndarray, m: np.ndarray, tastes: np.ndarray | None = None, share: float = 0.0
) -> np.ndarray:
    """Noiseless continuous ratings of pairs: row i is person ``signs[i]`` (taste ``tastes[i]``) with image ``m[i]``."""
    q = _quality_raw(m) / _Q_STD
    inter = np.einsum("ij,ij->i", signs, _interaction_features(m))
    idio = None if tastes is None else np.einsum("ij,ij->i", tastes, _taste_features(m))
    return np.clip(3.0 + QUALITY_WEIGHT * q + _personal(inter, idio, share), 1.0, 5.0)


def _to_grid(x: np.ndarray | float, step: float | None) -> np.ndarray:
    """Clip to 1..5 and, if ``step`` is set, round half-up to that grid (0.5 like PARA)."""
    arr = np.clip(np.asarray(x, dtype=np.float64), 1.0, 5.0)
    if step is None:
        return arr
    return np.clip(np.floor(arr / step + 0.5) * step, 1.0, 5.0)


def hidden_rating(
    profile: Profile,
    params: ImageParams,
    noise_rng: np.random.Generator | None = None,
    noise_std: float = 0.15,
    *,
    step: float | None = 0.5,
    taste: np.ndarray | None = None,
    idiosyncrasy: float = 0.0,
) -> float:
    """How much ``profile`` likes the image rendered from ``params``, on 1..5 (see the module docstring).

    Args:
        profile: The person; missing fields count as neutral.
        params: The image parameters.
        noise_rng: If given, Gaussian rating noise with ``noise_std`` is added (a person is not perfectly
            consistent); None gives the noiseless rating.
        noise_std: Noise standard deviation in rating units.
        step: Round to this grid (0.5 like PARA); None keeps the continuous value.
        taste: The person's idiosyncratic taste (a unit 7-vector, :func:`sample_tastes`); needed when
            ``idiosyncrasy`` > 0.
        idiosyncrasy: Share of the person-specific variance carried by ``taste`` (0: the profile says it all).

    Returns:
        The rating in [1, 5].
    """
    share = _check_share(idiosyncrasy)
    if share > 0.0 and taste is None:
        raise ValueError("idiosyncrasy > 0 needs the person's taste.")
    tastes = None if taste is None else np.asarray(taste, dtype=np.float64)[None, :]
    r = float(_noiseless_matrix(profile_signs(profile), _as_matrix(params), tastes, share)[0, 0])
    if noise_rng is not None and noise_std > 0:
        r += float(noise_rng.normal(0.0, noise_std))
    return float(_to_grid(r, step))


# ----------------------------------------------------------------------------------------------------------------
# Attributes (PARA columns) derived from the same hidden variables


def _attribute_matrix(signs: np.ndarray, m: np.ndarray, rating: np.ndarray) -> dict[str, np.ndarray]:
    """Noiseless PARA attribute scores for pairs (row i: signs[i] with image m[i]); see README.txt."""
    t, s, b, _c, bl, _nz, comp = m.T
    q = _quality_raw(m) / _Q_STD
    xs, xb = 2.0 * s - 1.0, 2.0 * b - 1.0
    return {
        "qualityScore": 3.0 + 0.9 * q,
        "compositionScore": 3.0 + 1.5 * (2.0 * comp - 1.0),
        "colorScore": 3.0 + 0.9 * (signs[:, 0] * xs + signs[:, 2] * t) + 0.4 * xs,
        "dofScore": 3.0 - 1.5 * (2.0 * bl - 1.0),
        "contentScore": rating,
        "lightScore": 3.5 - 2.0 * xb**2 + 0.9 * signs[:, 1] * xb,
        "contentPreference": rating,
        "willingnessToShare": rating + 0.5 * signs[:, 1],
    }


_README = """Synthetic preference task (pmllm-batch), PARA layout.

Generated by pmllm_batch.train.synthetic.make_synthetic_dataset(seed={seed}, n_users={n_users},
n_images={n_images}, ratings_per_user={ratings_per_user}, image_size={image_size}).
Read it with pmllm_batch.train.datasets.load_dataset("synthetic", <this folder>).

Images are rendered from 7 parameters (annotation/synthetic-params.csv): temperature -1..1 (cool..warm),
saturation, brightness, contrast, blur, noise, composition (0 centred .. 1 rule of thirds), all 0..1.

Hidden rating of person p for image x (aestheticScore):
  quality = shared term (composition, contrast, sharpness, low noise, mid exposure), std 1
  s_O = clip((openness-5.5)/3), s_E = clip((extraversion-5.5)/3), s_age = clip((age_years-30)/8),
  s_P = photography experience beginner -1, competent -1/3, proficient +1/3, expert +1
  rating = clip(3 + 0.55*quality + 0.95*(s_O*(2*saturation-1) + s_E*(2*brightness-1)
                + s_age*temperature - s_P*((2*blur-1)+(2*noise-1))/sqrt(2)), 1, 5)
  then + N(0, {noise_std}) noise, clipped to 1..5 and rounded to 0.5 steps.
Gender, education, art experience, conscientiousness, agreeableness and neuroticism do not matter.

Attribute columns (each + the same kind of noise, clipped, rounded to 0.5):
  qualityScore = 3 + 0.9*quality; compositionScore = 3 + 1.5*(2*composition-1);
  colorScore = 3 + 0.9*(s_O*(2*saturation-1) + s_age*temperature) + 0.4*(2*saturation-1);
  dofScore = 3 - 1.5*(2*blur-1); lightScore = 3.5 - 2*(2*brightness-1)^2 + 0.9*s_E*(2*brightness-1);
  contentScore = contentPreference = noiseless rating; willingnessToShare = rating + 0.5*s_E.

User folds: userset/TrainUserIDs_Fold1..4.txt / TestUserIDs_Fold1..4.txt, user-disjoint,
the test sets of the 4 folds partition the users.
"""


_README_IDIO = """
Idiosyncrasy {share}: every person also has a hidden taste u (a unit vector over the 7 parameters,
annotation/synthetic-tastes.csv) that no profile field reveals. The person-specific term above becomes
  {a:.6f} * 0.95*(s_O*... ) + {c:.6f} * sum_j u_j * sqrt(3)*(2*(param_j - lo_j)/(hi_j - lo_j) - 1)
so the taste carries {share} of the person-specific variance and the total stays the same.
"""


def _fmt(x: float) -> str:
    return f"{x:.{_PARAM_DECIMALS}f}"


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")


def make_synthetic_dataset(
    root: str | Path,
    *,
    n_users: int = 160,
    n_images: int = 600,
    ratings_per_user: int = 60,
    seed: int = 0,
    image_size: int = 96,
    noise_std: float = 0.15,
    images_per_session: int = 100,
    idiosyncrasy: float = 0.0,
) -> Path:
    """Write the synthetic task as a PARA-layout folder (deterministic for a seed).

    Args:
        root: Output folder (created; files already there with the same names are overwritten).
        n_users: Number of simulated people.
        n_images: Number of rendered images.
        ratings_per_user: Distinct images each person rates (capped at ``n_images``).
        seed: Seed of everything (params, people, assignment, noise, scenes).
        image_size: Image width and height in pixels.
        noise_std: Rating noise standard deviation.
        images_per_session: Images per ``imgs/session<k>`` folder.
        idiosyncrasy: Share (0..1) of the person-specific variance carried by a hidden taste that no profile
            field reveals (see "Idiosyncrasy" in the module docstring); 0 writes exactly the files it wrote
            before this option existed. Above 0 the tastes are written to ``annotation/synthetic-tastes.csv``.

    Returns:
        The dataset root.
    """
    share = _check_share(idiosyncrasy)
    if n_users < 4 or n_images < 1 or ratings_per_user < 1 or images_per_session < 1:
        raise ValueError("need n_users >= 4 (for 4 user folds), n_images >= 1, ratings_per_user >= 1.")
    out = Path(root)
    (out / "annotation").mkdir(parents=True, exist_ok=True)
    (out / "userset").mkdir(parents=True, exist_ok=True)
    # Independent streams so that, e.g., changing ratings_per_user does not change the images.
    rng_params, rng_people, rng_assign, rng_noise = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )

    width = max(5, len(str(n_images - 1)))
    params = [sample_image_params(rng_params) for _ in range(n_images)]
    locations = [(f"session{j // images_per_session + 1}", f"syn_{j:0{width}d}.png") for j in range(n_images)]
    for j, (p, (session, name)) in enumerate(zip(params, locations, strict=True)):
        (out / "imgs" / session).mkdir(parents=True, exist_ok=True)
        scene_rng = np.random.default_rng(np.random.SeedSequence([seed, 7, j]))
        render_image(p, scene_rng, image_size).save(out / "imgs" / session / name, format="PNG")

    user_ids = [f"S{i:04d}" for i in range(n_users)]
    profiles = [sample_profile(rng_people, uid) for uid in user_ids]
    signs = np.stack([profile_signs(pr) for pr in profiles])
    mat = np.stack([p.as_array() for p in params])

    k = min(ratings_per_user, n_images)
    pair_user = np.repeat(np.arange(n_users), k)
    pair_image = np.concatenate([np.sort(rng_assign.permutation(n_images)[:k]) for _ in range(n_users)])
    s_pairs, m_pairs = signs[pair_user], mat[pair_image]
    # The tastes have their own stream, so they change no other draw (and share 0 does not use them).
    tastes = sample_tastes(np.random.default_rng(np.random.SeedSequence([seed, _TASTE_STREAM])), n_users)
    clean = _noiseless_pairs(s_pairs, m_pairs, tastes[pair_user], share) if share > 0 else _noiseless_pairs(
        s_pairs, m_pairs
    )
    rating = _to_grid(clean + rng_noise.normal(0.0, noise_std, clean.size), 0.5)
    attrs = {
        name: _to_grid(v + rng_noise.normal(0.0, noise_std, clean.size), 0.5)
        for name, v in _attribute_matrix(s_pairs, m_pairs, clean).items()
    }

    rows = []
    for i in range(clean.size):
        session, name = locations[pair_image[i]]
        row = [session, name, user_ids[pair_user[i]], f"{rating[i]:.1f}"]
        row += [f"{attrs[a][i]:.1f}" for a in PARA_ATTRIBUTES]
        rows.append(row)
    _write_csv(
        out / "annotation" / "PARA-Images.csv",
        ["sessionId", "imageName", "userId", "aestheticScore", *PARA_ATTRIBUTES],
        rows,
    )

    letters = list(PARA_PERSONALITY.items())
    user_rows = []
    for uid, pr in zip(user_ids, profiles, strict=True):
        user_rows.append(
            [uid, pr.age, pr.gender, pr.education, pr.art_experience, pr.photography_experience]
            + [str(int(pr.big_five[trait])) for _, trait in letters]
        )
    _write_csv(
        out / "annotation" / "PARA-UserInfo.csv",
        ["userId", "age", "gender", "EducationalLevel", "artExperience", "photographyExperience"]
        + [col for col, _ in letters],
        user_rows,
    )

    param_rows = [
        [session, name, *(_fmt(v) for v in p.as_array()), _fmt(float(quality(p)))]
        for p, (session, name) in zip(params, locations, strict=True)
    ]
    _write_csv(
        out / "annotation" / "synthetic-params.csv", ["sessionId", "imageName", *PARAM_NAMES, "quality"], param_rows
    )

    for fold in range(1, 5):
        train, test = seeded_user_split(user_ids, fold, seed=seed)
        (out / "userset" / f"TrainUserIDs_Fold{fold}.txt").write_text(
            "".join(u + "\n" for u in train), encoding="utf-8"
        )
        (out / "userset" / f"TestUserIDs_Fold{fold}.txt").write_text("".join(u + "\n" for u in test), encoding="utf-8")

    readme = _README.format(
        seed=seed,
        n_users=n_users,
        n_images=n_images,
        ratings_per_user=ratings_per_user,
        image_size=image_size,
        noise_std=noise_std,
    )
    if share > 0:
        _write_csv(
            out / "annotation" / "synthetic-tastes.csv",
            ["userId", "idiosyncrasy", *(f"taste_{n}" for n in PARAM_NAMES)],
            [[uid, repr(share), *(repr(float(v)) for v in t)] for uid, t in zip(user_ids, tastes, strict=True)],
        )
        readme += _README_IDIO.format(share=share, a=math.sqrt(1.0 - share), c=math.sqrt(share * PROFILE_TERM_VARIANCE))
    (out / "README.txt").write_text(readme, encoding="utf-8")
    return out


def read_synthetic_tastes(root: str | Path) -> tuple[float, dict[str, np.ndarray]]:
    """Read ``annotation/synthetic-tastes.csv`` back: ``(idiosyncrasy, {user id: taste})``; ``(0.0, {})`` without it."""
    path = Path(root) / "annotation" / "synthetic-tastes.csv"
    if not path.is_file():
        return 0.0, {}
    share = 0.0
    tastes: dict[str, np.ndarray] = {}
    with path.open("r", encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            share = float(row["idiosyncrasy"])
            tastes[row["userId"]] = np.array([float(row[f"taste_{n}"]) for n in PARAM_NAMES])
    return share, tastes


def synthetic_oracle(
    root: str | Path, pairs: Sequence[tuple[str, Path]], profiles: dict[str, Profile]
) -> dict[str, np.ndarray]:
    """The hidden function's noiseless ratings of (user id, image path) pairs of a synthetic folder.

    Returns ``{"ideal": the hidden rating itself, "profile_only": the same without the idiosyncratic term}``
    (equal when the folder was made with idiosyncrasy 0). ``profile_only`` is the best any model that knows
    only the profile and the image can do: the taste is independent of the profile and centred.
    """
    base = Path(root)
    params = read_synthetic_params(base)
    share, tastes = read_synthetic_tastes(base)
    keys = [Path(path).relative_to(base / "imgs").as_posix() for _, path in pairs]
    m = np.stack([params[k].as_array() for k in keys]) if keys else np.zeros((0, len(PARAM_NAMES)))
    signs = np.stack([profile_signs(profiles[u]) for u, _ in pairs]) if pairs else np.zeros((0, 4))
    profile_only = (
        _noiseless_pairs(signs, m, np.zeros((len(pairs), len(PARAM_NAMES))), share) if share > 0 else
        _noiseless_pairs(signs, m)
    )
    if share == 0.0:
        return {"ideal": profile_only, "profile_only": profile_only.copy()}
    t = np.stack([tastes[u] for u, _ in pairs]) if pairs else np.zeros((0, len(PARAM_NAMES)))
    return {"ideal": _noiseless_pairs(signs, m, t, share), "profile_only": profile_only}


def read_synthetic_params(root: str | Path) -> dict[str, ImageParams]:
    """Read ``annotation/synthetic-params.csv`` back: ``"<session>/<name>" -> ImageParams``."""
    path = Path(root) / "annotation" / "synthetic-params.csv"
    with path.open("r", encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        return {
            f"{row['sessionId']}/{row['imageName']}": ImageParams(**{n: float(row[n]) for n in PARAM_NAMES})
            for row in reader
        }


# ----------------------------------------------------------------------------------------------------------------
# Oracle


def _per_user_srocc(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean within-user SROCC for (n_users, k) arrays, one row per user (constant rows count 0.0, as in metrics)."""
    rp = stats.rankdata(pred, axis=1)
    rt = stats.rankdata(target, axis=1)
    rp -= rp.mean(axis=1, keepdims=True)
    rt -= rt.mean(axis=1, keepdims=True)
    denom = np.sqrt((rp**2).sum(axis=1) * (rt**2).sum(axis=1))
    r = np.divide((rp * rt).sum(axis=1), denom, out=np.zeros(len(denom)), where=denom > 0)
    return float(np.mean(r))


def oracle_report(
    seed: int = 0,
    *,
    n_users: int = 400,
    n_images: int = 600,
    ratings_per_user: int = 60,
    noise_std: float = 0.15,
    n_population: int = 2000,
) -> dict[str, object]:
    """How well ideal, profile-blind and wrong-profile predictors can do on the synthetic task.

    A population is sampled (people and image params only — nothing is rendered), each person rates
    ``ratings_per_user`` images with noise and 0.5 rounding (the dataset's targets), and four predictors
    are scored by SROCC, pooled and per user:

    * ``ideal``: the noiseless hidden rating (the ceiling a perfect model reaches);
    * ``profile_blind``: the Bayes-optimal predictor that ignores the person — the mean noiseless rating
      over ``n_population`` independently sampled people;
    * ``quality_only``: the best linear predictor on ``quality(params)`` (the shared term);
    * ``shuffled_profiles``: the noiseless hidden rating computed with another person's profile
      (a cyclic shift of the people), i.e. the "shuffled profiles" evaluation control.

    Args:
        seed: Seed of the population.
        n_users: People rating.
        n_images: Image pool.
        ratings_per_user: Images per person.
        noise_std: Rating noise.
        n_population: People averaged by the profile-blind predictor.

    Returns:
        ``{"ideal"|"profile_blind"|"quality_only"|"shuffled_profiles": {"srocc", "per_user_srocc"},
        "quality_variance_share", "rating_std", "frac_le_2", "frac_ge_4", "n_pairs"}``.
    """
    rng = np.random.default_rng(seed)
    mat = np.stack([sample_image_params(rng).as_array() for _ in range(n_images)])
    signs = np.stack([profile_signs(sample_profile(rng, f"O{i}")) for i in range(n_users)])
    pop = np.stack([profile_signs(sample_profile(rng, f"P{i}")) for i in range(n_population)])
    k = min(ratings_per_user, n_images)
    users = np.repeat(np.arange(n_users), k)
    images = np.concatenate([rng.permutation(n_images)[:k] for _ in range(n_users)])

    clean_all = _noiseless_matrix(signs, mat)
    clean = clean_all[users, images]
    noisy = _to_grid(clean + rng.normal(0.0, noise_std, clean.size), 0.5)
    blind = _noiseless_matrix(pop, mat).mean(axis=0)[images]
    q = _quality_raw(mat[images]) / _Q_STD
    slope, intercept = np.polyfit(q, noisy, 1)
    quality_pred = intercept + slope * q
    shifted = np.roll(np.arange(n_users), 1)
    shuffled = clean_all[shifted][users, images]

    preds = {"ideal": clean, "profile_blind": blind, "quality_only": quality_pred, "shuffled_profiles": shuffled}
    report: dict[str, object] = {
        name: {
            "srocc": calculate_srcc(p, noisy),
            "per_user_srocc": _per_user_srocc(p.reshape(n_users, k), noisy.reshape(n_users, k)),
        }
        for name, p in preds.items()
    }
    report["quality_variance_share"] = float(np.var(QUALITY_WEIGHT * q) / np.var(clean))
    report["rating_std"] = float(np.std(noisy))
    report["frac_le_2"] = float(np.mean(noisy <= 2.0))
    report["frac_ge_4"] = float(np.mean(noisy >= 4.0))
    report["n_pairs"] = int(clean.size)
    return report


def _param_features(m: np.ndarray) -> np.ndarray:
    """The true image parameters as a learner's features: the 7 centred parameters and their squares, (n, 14)."""
    z = _taste_features(m)
    return np.concatenate([z, z**2], axis=1)


def idiosyncrasy_oracle(
    idiosyncrasy: float = 0.4,
    seed: int = 0,
    *,
    n_users: int = 200,
    n_images: int = 600,
    ratings_per_user: int = 150,
    shots: Sequence[int] = (0, 5, 10, 20, 50, 100),
    n_query: int = 50,
    draws: int = 3,
    noise_std: float = 0.15,
    n_calibration: int = 40,
) -> dict[str, object]:
    """What the few-shot protocol can reach on a task with an idiosyncratic share: the oracle rows of its table.

    People, images and noisy 0.5-step ratings are sampled as :func:`make_synthetic_dataset` does (nothing is
    rendered), and the protocol of :mod:`pmllm_batch.train.fewshot` is run with predictors that see the hidden
    variables instead of pixels (mean per-user SROCC on ``n_query`` held-out ratings, over ``draws`` draws):

    * ``ideal``: the noiseless hidden rating itself (the ceiling; the same for every k);
    * ``profile_only``: the hidden rating without the idiosyncratic term — the best any model that knows only
      the profile can do (the taste is independent of the profile and centred);
    * ``stars_only``: the stars-only ridge (:mod:`pmllm_batch.learn`) on the *true* image parameters (the 7
      centred parameters and their squares) fitted on the k support ratings: what a person's stars alone can
      teach with perfect features;
    * ``learner``: the residual learner on the same parameters with ``profile_only`` as its zero-shot prior: what
      the per-person learner reaches with a perfect profile-only model and perfect features.

    Both learners' λ is calibrated as the protocol does it, on ``n_calibration`` other people (all their ratings).

    Returns:
        ``{"idiosyncrasy", "n_users", "results": [{"k", "ideal", "profile_only", "stars_only", "learner"}, ...]}``.
    """
    from dataclasses import replace

    from pmllm_batch.learn import FeatureSpec, LearnerConfig, calibrate, fit_taste

    share = _check_share(idiosyncrasy)
    rng = np.random.default_rng([seed, 1])
    mat = np.stack([sample_image_params(rng).as_array() for _ in range(n_images)])
    signs = np.stack([profile_signs(sample_profile(rng, f"O{i}")) for i in range(n_users)])
    tastes = sample_tastes(rng, n_users)
    per = min(ratings_per_user, n_images)
    spec = FeatureSpec.fit(_param_features(mat), dim=14, kind="true-params")
    phi = spec.transform(_param_features(mat))
    ideal = _noiseless_matrix(signs, mat, tastes, share)
    prof = _noiseless_matrix(signs, mat, np.zeros_like(tastes), share) if share > 0 else ideal
    cal_signs = np.stack([profile_signs(sample_profile(rng, f"C{i}")) for i in range(n_calibration)])
    cal_tastes = sample_tastes(rng, n_calibration)
    cal_ideal = _noiseless_matrix(cal_signs, mat, cal_tastes, share)
    cal_prof = _noiseless_matrix(cal_signs, mat, np.zeros_like(cal_tastes), share) if share > 0 else cal_ideal
    cal = []
    for c in range(n_calibration):
        images = rng.permutation(n_images)[: min(ratings_per_user, n_images)]
        y = _to_grid(cal_ideal[c, images] + rng.normal(0.0, noise_std, images.size), 0.5)
        cal.append((phi[images], cal_prof[c, images], y))
    fixed = LearnerConfig(rule="fixed", guard=False)
    learner = calibrate(cal, spec=spec, config=fixed) if cal else LearnerConfig()
    stars = calibrate(cal, spec=spec, config=replace(fixed, method="stars_only")) if cal else LearnerConfig(
        method="stars_only"
    )
    shots = sorted(set(int(k) for k in shots))
    acc: dict[int, dict[str, list[float]]] = {k: {n: [] for n in ("ideal", "profile_only", "stars_only", "learner")}
                                              for k in shots}
    for u in range(n_users):
        images = np.sort(rng.permutation(n_images)[:per])
        y = _to_grid(ideal[u, images] + rng.normal(0.0, noise_std, per), 0.5)
        for d in range(draws):
            perm = np.random.default_rng([seed, 2, u, d]).permutation(per)
            q = perm[:n_query]
            for k in shots:
                if per < k + n_query:
                    continue
                s = perm[n_query : n_query + k]
                row = acc[k]
                row["ideal"].append(calculate_srcc(ideal[u, images[q]], y[q]))
                row["profile_only"].append(calculate_srcc(prof[u, images[q]], y[q]))
                for name, cfg in (("stars_only", stars), ("learner", learner)):
                    st = fit_taste(phi[images[s]], prof[u, images[s]], y[s], spec=spec, model_fingerprint="oracle",
                                   config=cfg)
                    row[name].append(calculate_srcc(st.predict(phi[images[q]], prof[u, images[q]]), y[q]))
    results = [
        {"k": k, **{name: float(np.mean(v)) if v else None for name, v in acc[k].items()}} for k in shots
    ]
    return {
        "idiosyncrasy": share,
        "n_users": n_users,
        "lam": {"learner": learner.lam, "stars_only": stars.lam},
        "results": results,
    }
