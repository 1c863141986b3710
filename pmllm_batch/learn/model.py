"""The per-person learner: a small correction of the zero-shot scores, fitted to one person's ratings.

Designs (``LearnerConfig.method``; measured by ``pmllm-batch eval --shots``, figures in
:mod:`pmllm_batch.train.fewshot`):

* ``"residual"`` (recommended): Bayesian linear regression of the residual on the zero-shot score and the features,
  with the zero-shot model as the prior mean::

      y  ≈  s0 + a·(s0 − m) + b + w·phi          a ~ N(0, σ²/λ_a),  b ~ N(0, σ²/λ_b),  w ~ N(0, σ²/λ · I)

  ``m`` is the mean zero-shot score of the rated photos, ``phi`` the photo's features under the state's
  :class:`~pmllm_batch.learn.features.FeatureSpec`. With few ratings the prior keeps the scores at zero-shot; each
  rating lets the data move them further. The prediction is the posterior mean.
* ``"stars_only"``: the same ridge on the same features without the profile prior (``y ≈ c + w·phi``): what the
  person's stars alone can teach. The baseline.
* ``"kernel"``: the residual model with a Gaussian-process (RBF) term instead of ``w·phi``: a smooth, nonlinear
  correction ("photos like the ones I rated high"), k×k in the number of ratings.

Choosing λ never looks at the photos being ranked (``LearnerConfig.rule``):

* ``"fixed"`` with λ from :func:`calibrate` (recommended): λ fixed once from a training population's ratings — the
  λ under which their ratings are most probable together (empirical Bayes). The prior then protects a person
  with few ratings by its strength: a population whose ratings the zero-shot model already explains gets a
  large λ and stays at zero-shot (on the synthetic task without idiosyncrasy λ = 3000). ``guard=True`` adds
  the per-person fallback of the evidence rule (measured: too cautious, it costs ~0.04 SROCC at k = 5–10);
* ``"evidence"`` (the default, for use without a calibration population): the λ of a fixed grid — plus "no
  correction at all" (the zero-shot scores) and "only a and b" — with the highest marginal likelihood of the
  person's own ratings (σ² profiled out). When the ratings do not support a correction, "no correction" has the
  higher evidence and the output is the zero-shot ranking; with few ratings it is cautious;
* ``"loo"``: the grid λ with the smallest leave-one-out error on the rated photos (closed form);

Targets: stars 1..5 (any value in [1, 5]: PARA's half stars, LAPIS's 0..100 mapped to 1..5) count as they are; a
rejection (-1) counts as ``LearnerConfig.reject_target`` (1.0: the bottom of the scale); 0 and NaN mean unrated and
are left out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from pmllm_batch.contracts import JSONDict
from pmllm_batch.learn.features import FeatureSpec

__all__ = [
    "CALIBRATION_GRID",
    "DEFAULT_GRID",
    "METHODS",
    "RULES",
    "LearnerConfig",
    "TasteState",
    "calibrate",
    "fit_taste",
    "rating_targets",
]

METHODS = ("residual", "stars_only", "kernel")
RULES = ("evidence", "loo", "fixed")
STATE_VERSION = 1
REJECTED = -1.0
# λ candidates (prior precision of w in units of the noise precision; phi has unit variance per dimension on average)
DEFAULT_GRID = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)


@dataclass(frozen=True)
class LearnerConfig:
    """How a person's taste is learned (module docstring).

    Attributes:
        method: ``"residual"``, ``"stars_only"`` or ``"kernel"``.
        rule: How λ is chosen: ``"evidence"``, ``"loo"`` or ``"fixed"``.
        lam: λ for ``rule="fixed"``.
        grid: λ candidates for ``"evidence"`` and ``"loo"``.
        lam_scale: λ_a, the prior precision of ``a`` (the zero-shot score's extra weight).
        lam_offset: λ_b, the prior precision of ``b`` (the person's offset from the model's scale).
        reject_target: The rating a rejection counts as.
        lengthscale: RBF length scale of ``"kernel"`` in units of sqrt(dim) (phi's typical distance / sqrt(2)).
        guard: With ``rule="fixed"``, still fall back to "no correction" (or "a and b only") when the person's own
            ratings give that a higher evidence than the correction with ``lam`` (residual and kernel).
    """

    method: str = "residual"
    rule: str = "evidence"
    lam: float = 100.0
    grid: tuple[float, ...] = DEFAULT_GRID
    lam_scale: float = 1.0
    lam_offset: float = 1.0
    reject_target: float = 1.0
    lengthscale: float = 1.0
    guard: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown learner method {self.method!r}; choose one of {', '.join(METHODS)}.")
        if self.rule not in RULES:
            raise ValueError(f"unknown lambda rule {self.rule!r}; choose one of {', '.join(RULES)}.")
        if not self.grid or any(not (g > 0 and math.isfinite(g)) for g in self.grid) or not self.lam > 0:
            raise ValueError("lambda and every grid value must be positive and finite.")
        if self.lam_scale <= 0 or self.lam_offset <= 0 or self.lengthscale <= 0:
            raise ValueError("lam_scale, lam_offset and lengthscale must be positive.")

    def to_dict(self) -> JSONDict:
        d = asdict(self)
        d["grid"] = list(self.grid)
        return d

    @classmethod
    def from_dict(cls, data: JSONDict) -> LearnerConfig:
        kw: dict[str, Any] = dict(data)
        if "grid" in kw and kw["grid"] is not None:
            kw["grid"] = tuple(float(g) for g in kw["grid"])
        return cls(**kw)


def rating_targets(stars: Any, reject_target: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Ratings → (mask of the rated entries, their regression targets).

    Args:
        stars: -1 (rejected), values in [1, 5] (stars, half stars, a mapped continuous score), 0 or NaN (unrated).
        reject_target: What a rejection counts as.

    Returns:
        ``(rated, targets)``: a boolean mask over ``stars`` and the targets of the rated entries.

    Raises:
        ValueError: a value that is none of these.
    """
    s = np.asarray(stars, dtype=np.float64).ravel()
    unrated = np.isnan(s) | (s == 0.0)
    bad = ~unrated & (s != REJECTED) & ~((s >= 1.0) & (s <= 5.0))
    if bad.any():
        raise ValueError(f"ratings must be -1 (rejected), 0 (unrated) or in [1, 5]; got {s[bad][0]!r}.")
    rated = ~unrated
    y = np.where(s[rated] == REJECTED, reject_target, s[rated])
    return rated, y


@dataclass(frozen=True)
class TasteState:
    """A person's learned taste: small, JSON-able (:meth:`to_dict`), valid with one model and one feature spec.

    The prediction for photos with features ``phi`` (under :attr:`spec`) and zero-shot scores ``s0`` is::

        prior · s0 + a · (s0 − anchor) + b + phi @ weights + kernel(phi, support) @ dual

    with ``prior`` 1 (residual, kernel) or 0 (stars_only). A state fitted on no ratings returns ``s0`` itself.

    Attributes:
        model_fingerprint: The zero-shot model whose scores ``s0`` this state corrects (store it versioned by it).
        spec: The feature spec ``phi`` is computed with.
        config: How it was learned.
        n_ratings: Ratings it was fitted on.
        lam: The chosen λ (``inf``: no feature term; ``nan``: no correction at all).
        prior: 1.0 when the zero-shot score is the prior mean, 0.0 for stars_only.
        anchor: ``m``, the mean zero-shot score of the rated photos.
        scale: ``a``.
        offset: ``b`` (for stars_only: the intercept).
        weights: ``w`` (``spec.dim``), zeros for kernel.
        support: The rated photos' ``phi`` (kernel only; else shape (0, dim)).
        dual: Their dual coefficients (kernel only).
        lengthscale: The RBF length scale used (kernel only).
        evidence: The selection criterion of the chosen candidate (log evidence, or minus the LOO error).
    """

    model_fingerprint: str
    spec: FeatureSpec
    config: LearnerConfig
    n_ratings: int
    lam: float
    prior: float
    anchor: float
    scale: float
    offset: float
    weights: np.ndarray
    support: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    dual: np.ndarray = field(default_factory=lambda: np.zeros(0))
    lengthscale: float = 0.0
    evidence: float = 0.0

    @property
    def is_zero_shot(self) -> bool:
        """True when the prediction is the zero-shot scores unchanged (no ratings, or none worth a correction)."""
        if self.prior != 1.0:
            return False
        no_correction = self.scale == 0.0 and self.offset == 0.0 and not self.weights.any() and not self.dual.any()
        return self.n_ratings == 0 or no_correction

    def predict(self, phi: Any, s0: Any) -> np.ndarray:
        """Personal scores of photos with features ``phi`` (n, spec.dim) and zero-shot scores ``s0`` (n,).

        A state that :attr:`is_zero_shot` returns a copy of ``s0`` (same values, bit for bit, same dtype).
        """
        s0_arr = np.asarray(s0)
        if self.is_zero_shot:
            return s0_arr.copy()
        p = np.asarray(phi, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != self.spec.dim or p.shape[0] != s0_arr.shape[0]:
            raise ValueError(f"phi must be (n, {self.spec.dim}) with one row per zero-shot score; got {p.shape}.")
        base = s0_arr.astype(np.float64)
        out = self.prior * base + self.scale * (base - self.anchor) + self.offset
        if self.weights.any():
            out = out + p @ self.weights
        if self.dual.size:
            out = out + _rbf(p, self.support, self.lengthscale) @ self.dual
        return np.asarray(out)

    def score(self, features: Any, s0: Any) -> np.ndarray:
        """Like :meth:`predict` from raw features (transformed with :attr:`spec` first)."""
        if self.is_zero_shot:
            return np.asarray(s0).copy()
        return self.predict(self.spec.transform(features), s0)

    def to_dict(self) -> JSONDict:
        """JSON-able; ``json.dumps`` writes floats exactly, so :meth:`from_dict` gives the same predictions."""
        return {
            "version": STATE_VERSION,
            "model_fingerprint": self.model_fingerprint,
            "feature_spec": self.spec.to_dict(),
            "config": self.config.to_dict(),
            "n_ratings": self.n_ratings,
            "lam": _num(self.lam),
            "prior": self.prior,
            "anchor": self.anchor,
            "scale": self.scale,
            "offset": self.offset,
            "weights": [float(v) for v in self.weights],
            "support": [[float(v) for v in row] for row in self.support],
            "dual": [float(v) for v in self.dual],
            "lengthscale": self.lengthscale,
            "evidence": _num(self.evidence),
        }

    @classmethod
    def from_dict(cls, data: JSONDict) -> TasteState:
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"unknown taste state version {data.get('version')!r} (this code reads {STATE_VERSION}).")
        spec_data = data["feature_spec"]
        config_data = data["config"]
        if not isinstance(spec_data, dict) or not isinstance(config_data, dict):
            raise ValueError("a taste state needs its feature_spec and config as objects.")
        spec = FeatureSpec.from_dict(spec_data)
        support = np.asarray(data["support"], dtype=np.float64).reshape(-1, spec.dim)
        return cls(
            model_fingerprint=str(data["model_fingerprint"]),
            spec=spec,
            config=LearnerConfig.from_dict(config_data),
            n_ratings=int(_float(data["n_ratings"])),
            lam=_float(data["lam"]),
            prior=_float(data["prior"]),
            anchor=_float(data["anchor"]),
            scale=_float(data["scale"]),
            offset=_float(data["offset"]),
            weights=np.asarray(data["weights"], dtype=np.float64),
            support=support,
            dual=np.asarray(data["dual"], dtype=np.float64),
            lengthscale=_float(data["lengthscale"]),
            evidence=_float(data["evidence"]),
        )


def _num(x: float) -> float | str:
    """JSON has no inf/nan: write them as strings."""
    return float(x) if math.isfinite(x) else repr(float(x))


def _float(x: object) -> float:
    if isinstance(x, (int, float, str)):
        return float(x)
    raise ValueError(f"expected a number, got {x!r}.")


# ----------------------------------------------------------------------------------------------------------------
# Fitting


def fit_taste(
    phi: Any,
    s0: Any,
    stars: Any,
    *,
    spec: FeatureSpec,
    model_fingerprint: str,
    config: LearnerConfig | None = None,
) -> TasteState:
    """Learn one person's taste from the photos they rated.

    Args:
        phi: The rated photos' features under ``spec`` (k, spec.dim) — ``spec.transform(raw)``.
        s0: Their zero-shot scores (k,).
        stars: Their ratings (k,): -1 rejected, [1, 5] rated, 0/NaN unrated (left out).
        spec: The feature spec ``phi`` was computed with (stored in the state).
        model_fingerprint: The model that produced ``s0`` (stored in the state).
        config: The learner (default :class:`LearnerConfig`: residual, evidence).

    Returns:
        The state; with no usable ratings it reproduces the zero-shot scores exactly (``stars_only``: a constant).
    """
    cfg = config or LearnerConfig()
    p = np.asarray(phi, dtype=np.float64).reshape(-1, spec.dim)
    base = np.asarray(s0, dtype=np.float64).ravel()
    rated, y = rating_targets(stars, cfg.reject_target)
    if not (p.shape[0] == base.shape[0] == rated.shape[0]):
        raise ValueError(f"phi, s0 and stars need one row per rated photo (got {p.shape[0]}, {base.shape[0]}, "
                         f"{rated.shape[0]}).")
    p, base = p[rated], base[rated]
    if not (np.isfinite(p).all() and np.isfinite(base).all()):
        raise ValueError("features and zero-shot scores of rated photos must be finite.")
    k = int(y.shape[0])
    zeros = np.zeros(spec.dim)
    empty = np.zeros((0, spec.dim))
    common: dict[str, Any] = {"model_fingerprint": model_fingerprint, "spec": spec, "config": cfg, "n_ratings": k}
    if cfg.method == "stars_only":
        c, w, lam, crit = _fit_stars_only(p, y, cfg)
        return TasteState(**common, lam=lam, prior=0.0, anchor=0.0, scale=0.0, offset=c, weights=w, support=empty,
                          evidence=crit)
    if k == 0:
        return TasteState(**common, lam=math.nan, prior=1.0, anchor=0.0, scale=0.0, offset=0.0, weights=zeros,
                          support=empty, evidence=0.0)
    anchor = float(base.mean())
    if cfg.method == "kernel":
        a, b, dual, lam, ell, crit = _fit_kernel(p, base - anchor, y - base, cfg)
        return TasteState(**common, lam=lam, prior=1.0, anchor=anchor, scale=a, offset=b, weights=zeros,
                          support=p if dual.size else empty, dual=dual, lengthscale=ell, evidence=crit)
    a, b, w, lam, crit = _fit_residual(p, base - anchor, y - base, cfg)
    return TasteState(**common, lam=lam, prior=1.0, anchor=anchor, scale=a, offset=b, weights=w, support=empty,
                      evidence=crit)


def _criterion(rule: str, r: np.ndarray, x: np.ndarray | None, pen: np.ndarray | None) -> tuple[float, np.ndarray]:
    """(criterion, coefficients) of the ridge ``r ≈ x θ`` with penalty diag(pen); higher criterion is better.

    ``x`` None is "no correction" (θ empty). Evidence: log N(r; 0, σ²(I + x pen⁻¹ xᵀ)) with σ² at its maximum,
    up to a constant shared by every candidate; LOO: minus the mean squared leave-one-out residual.
    """
    k = r.shape[0]
    rr = float(r @ r)
    if x is None or pen is None or x.shape[1] == 0:
        if rule == "loo":
            return -rr / k, np.zeros(0)
        return -0.5 * k * math.log(max(rr, 1e-300)), np.zeros(0)
    a_mat = x.T @ x + np.diag(pen)
    chol = np.linalg.cholesky(a_mat)
    xr = x.T @ r
    theta = np.linalg.solve(a_mat, xr)
    if rule == "loo":
        hat = np.einsum("ij,ji->i", x, np.linalg.solve(a_mat, x.T))
        resid = (r - x @ theta) / np.maximum(1.0 - hat, 1e-9)
        return -float(resid @ resid) / k, theta
    q = max(rr - float(xr @ theta), 1e-300)
    logdet_c = 2.0 * float(np.log(np.diag(chol)).sum()) - float(np.log(pen).sum())
    return -0.5 * k * math.log(q) - 0.5 * logdet_c, theta


def _fit_residual(
    p: np.ndarray, ds0: np.ndarray, r: np.ndarray, cfg: LearnerConfig
) -> tuple[float, float, np.ndarray, float, float]:
    """a, b, w, λ, criterion of the residual ridge (λ nan: no correction; inf: a and b only)."""
    dim = p.shape[1]
    ab = np.column_stack([ds0, np.ones_like(ds0)])
    ab_pen = np.array([cfg.lam_scale, cfg.lam_offset])
    full = np.column_stack([ab, p])
    lams = (cfg.lam,) if cfg.rule == "fixed" else cfg.grid
    rule = "evidence" if cfg.rule == "fixed" else cfg.rule
    best: tuple[float, float, np.ndarray] = (-math.inf, math.nan, np.zeros(0))
    for lam in lams:
        crit, theta = _criterion(rule, r, full, np.concatenate([ab_pen, np.full(dim, lam)]))
        if crit > best[0]:
            best = (crit, lam, theta)
    if cfg.rule != "fixed" or cfg.guard:
        crit, theta = _criterion(rule, r, ab, ab_pen)
        if crit > best[0]:
            best = (crit, math.inf, theta)
        crit, theta = _criterion(rule, r, None, None)
        if crit > best[0]:
            best = (crit, math.nan, theta)
    crit, lam, theta = best
    w = theta[2:] if theta.size > 2 else np.zeros(dim)
    a, b = (float(theta[0]), float(theta[1])) if theta.size >= 2 else (0.0, 0.0)
    return a, b, np.asarray(w, dtype=np.float64), float(lam), float(crit)


def _fit_stars_only(p: np.ndarray, y: np.ndarray, cfg: LearnerConfig) -> tuple[float, np.ndarray, float, float]:
    """Intercept, w, λ, criterion of the stars-only ridge (the intercept is the mean rating, unpenalised)."""
    dim = p.shape[1]
    k = y.shape[0]
    if k == 0:
        return 3.0, np.zeros(dim), math.inf, 0.0  # nothing known: the middle of the scale, one score for all
    ym, pm = float(y.mean()), p.mean(axis=0)
    if k == 1:
        return ym, np.zeros(dim), math.inf, 0.0
    yc, pc = y - ym, p - pm
    rule = "evidence" if cfg.rule == "fixed" else cfg.rule
    best: tuple[float, float, np.ndarray] = (-math.inf, math.inf, np.zeros(0))
    for lam in (cfg.lam,) if cfg.rule == "fixed" else cfg.grid:
        crit, theta = _criterion(rule, yc, pc, np.full(dim, lam))
        if crit > best[0]:
            best = (crit, lam, theta)
    if cfg.rule != "fixed":
        crit, theta = _criterion(rule, yc, None, None)
        if crit > best[0]:
            best = (crit, math.inf, theta)
    crit, lam, theta = best
    w = theta if theta.size else np.zeros(dim)
    return ym - float(pm @ w), np.asarray(w, dtype=np.float64), float(lam), float(crit)


def _rbf(x: np.ndarray, z: np.ndarray, ell: float) -> np.ndarray:
    d2 = (x * x).sum(axis=1)[:, None] + (z * z).sum(axis=1)[None, :] - 2.0 * (x @ z.T)
    return np.asarray(np.exp(-np.maximum(d2, 0.0) / (2.0 * ell * ell)))


def _fit_kernel(
    p: np.ndarray, ds0: np.ndarray, r: np.ndarray, cfg: LearnerConfig
) -> tuple[float, float, np.ndarray, float, float, float]:
    """a, b, dual coefficients, λ, length scale, criterion of the residual GP (dual form, k x k)."""
    k = r.shape[0]
    ell = cfg.lengthscale * math.sqrt(p.shape[1])
    ab = np.column_stack([ds0, np.ones_like(ds0)])
    lin = ab @ np.diag([1.0 / cfg.lam_scale, 1.0 / cfg.lam_offset]) @ ab.T
    kern = _rbf(p, p, ell)
    rule = "evidence" if cfg.rule == "fixed" else cfg.rule
    eye = np.eye(k)
    best: tuple[float, float, np.ndarray] = (-math.inf, math.nan, np.zeros(0))
    candidates = [*cfg.grid] if cfg.rule != "fixed" else [cfg.lam]
    if cfg.rule != "fixed" or cfg.guard:
        candidates.append(math.inf)
    for lam in candidates:
        c = eye + lin + (kern / lam if math.isfinite(lam) else 0.0)
        chol = np.linalg.cholesky(c)
        alpha = np.linalg.solve(c, r)
        if rule == "loo":
            cinv_diag = np.diag(np.linalg.inv(c))
            e = alpha / cinv_diag
            crit = -float(e @ e) / k
        else:
            crit = -0.5 * k * math.log(max(float(r @ alpha), 1e-300)) - float(np.log(np.diag(chol)).sum())
        if crit > best[0]:
            best = (crit, lam, alpha)
    if cfg.rule != "fixed" or cfg.guard:
        crit, _ = _criterion(rule, r, None, None)
        if crit > best[0]:
            best = (crit, math.nan, np.zeros(0))
    crit, lam, alpha = best
    if not alpha.size:
        return 0.0, 0.0, np.zeros(0), math.nan, ell, crit
    a = float(ds0 @ alpha) / cfg.lam_scale
    b = float(alpha.sum()) / cfg.lam_offset
    dual = alpha / lam if math.isfinite(lam) else np.zeros(0)
    return a, b, np.asarray(dual, dtype=np.float64), float(lam), ell, float(crit)


CALIBRATION_GRID = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0, 20.0, 30.0, 50.0, 70.0, 100.0,
                    150.0, 200.0, 300.0, 500.0, 1000.0, 3000.0)


def calibrate(
    people: Iterable[tuple[Any, Any, Any]],
    *,
    spec: FeatureSpec,
    config: LearnerConfig | None = None,
    grid: Sequence[float] = CALIBRATION_GRID,
) -> LearnerConfig:
    """λ fixed once from other people's ratings (a training split): the λ with the highest summed evidence.

    Empirical Bayes over a population: each person's ratings are one draw from the prior, so the λ that makes all
    of them most probable together is the prior's precision — estimated on people who are not ranked afterwards
    (nothing is read from the photos being ranked). The result is ``config`` with ``rule="fixed"`` and that λ
    (the person-level guard of ``config`` is kept).

    Args:
        people: Per person ``(phi, s0, stars)`` of their rated photos (as :func:`fit_taste` takes them).
        spec: The feature spec of ``phi``.
        config: The learner to calibrate (default :class:`LearnerConfig`).
        grid: λ candidates.

    Returns:
        The calibrated config; ``config`` unchanged (rule "fixed" with its own λ) when no person has 2 ratings.
    """
    cfg = config or LearnerConfig()
    totals = np.zeros(len(grid))
    used = 0
    for phi, s0, stars in people:
        rated, _ = rating_targets(stars, cfg.reject_target)
        if int(rated.sum()) < 2:
            continue
        used += 1
        for i, lam in enumerate(grid):
            trial = replace(cfg, rule="fixed", lam=float(lam), guard=False)
            state = fit_taste(phi, s0, stars, spec=spec, model_fingerprint="", config=trial)
            totals[i] += state.evidence
    if used == 0:
        return replace(cfg, rule="fixed")
    return replace(cfg, rule="fixed", lam=float(grid[int(np.argmax(totals))]))
