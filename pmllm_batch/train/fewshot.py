"""The few-shot protocol: how much sharper does a person's ranking get with each of their own ratings?

For each test person of a fold and each k in ``shots``: k of the person's ratings are the *support* (what the
learner is fitted on), 50 other photos they rated are the *query* (what is ranked and scored). A person takes
part at k when they have at least ``k + n_query`` ratings. Per (person, k) three draws (seeds 0, 1, 2 by default)
of query and support are made; the person's figure is the mean SROCC over the draws; a method's figure at k is the
mean over people with a 95 % percentile-bootstrap interval over people (``train.metrics.bootstrap_ci``).

Draws: for person ``u`` (index ``i`` in the sorted test users) and draw ``d`` the person's ratings are permuted
with ``numpy.random.default_rng([seed, d, i])``; the first ``n_query`` are the query and the next k the support.
The query of a draw is therefore the same for every k and the supports are nested (the support at k = 10 holds
the one at k = 5): differences between k come from the support alone.

Methods, all on the same draws:

* ``learner``: the per-person learner (:mod:`pmllm_batch.learn`): the residual ridge with the zero-shot score as
  its prior mean, λ fixed beforehand from the fold's *training* people (:func:`pmllm_batch.learn.calibrate`:
  the λ with the highest evidence of their ratings — never the test people's);
* ``zero_shot``: the model's own scores (the learner at k = 0, bit for bit: checked, ``learner_equals_zero_shot``);
* ``stars_only``: the same ridge on the same features without the profile prior (the baseline), its λ calibrated
  the same way on the same training people;
* on a synthetic folder also ``ideal`` (the noiseless hidden rating) and ``profile_only`` (the hidden rating
  without its idiosyncratic term: the best a model that knows only the profile can do).

Without training people (``calibration`` empty) both learners choose λ per person by evidence instead. With
``compare=True`` two more designs are reported: ``residual_evidence`` (λ by each person's own evidence, falling
back to zero-shot when that is more probable) and ``kernel`` (an RBF Gaussian-process correction, calibrated).

Measured with the shipped demo adapter (a tiny model trained on the synthetic task with idiosyncrasy 0; its
figures show the mechanism, not real taste) on a new synthetic population with idiosyncrasy 0.4: seed
20261203, 320 people × 150 of 600 images, fold 1 (80 test people, each ≥ 150 ratings), 40 calibration people
(λ: learner 30, stars-only 20, kernel 0.3)::

    python -c "from pmllm_batch.train.synthetic import make_synthetic_dataset as m; m('syn-20261203', n_users=320,
               n_images=600, ratings_per_user=150, seed=20261203, idiosyncrasy=0.4)"
    pmllm-batch eval --checkpoint pmllm_batch/assets/demo/adapter --dataset synthetic --root syn-20261203 \
        --fold 1 --shots 0,5,10,20,50,100 --compare --json

===  =====================  =====================  =====================  =====================  =====================
k    learner                zero_shot              stars_only             residual_evidence      kernel
===  =====================  =====================  =====================  =====================  =====================
0    0.675 [0.649, 0.702]   0.675 [0.649, 0.702]   0.000                  0.675 [0.649, 0.702]   0.675 [0.649, 0.702]
5    0.732 [0.714, 0.749]   0.675                  0.512 [0.481, 0.540]   0.706 [0.685, 0.726]   0.721 [0.701, 0.740]
10   0.784 [0.769, 0.798]   0.675                  0.712 [0.687, 0.734]   0.749 [0.731, 0.765]   0.767 [0.751, 0.782]
20   0.833 [0.823, 0.844]   0.675                  0.821 [0.809, 0.834]   0.808 [0.793, 0.821]   0.812 [0.800, 0.824]
50   0.868 [0.860, 0.876]   0.675                  0.862 [0.853, 0.871]   0.865 [0.857, 0.873]   0.854 [0.846, 0.863]
100  0.883 [0.876, 0.890]   0.675                  0.877 [0.869, 0.885]   0.883 [0.876, 0.890]   0.872 [0.865, 0.880]
===  =====================  =====================  =====================  =====================  =====================

Oracles on the same query sets: ideal 0.968 [0.965, 0.971], profile_only 0.783 [0.760, 0.807]. Paired
differences (learner − zero_shot / learner − stars_only, 95 % CI): k=5 +0.057 [0.042, 0.071] / +0.220;
k=10 +0.109 [0.090, 0.129] / +0.072 [0.058, 0.087]; k=20 +0.158 / +0.012 [0.005, 0.019]; k=50 +0.193 / +0.006
[0.002, 0.009]. At k=50 the learner closes 66 % of the zero-shot → ideal gap. The learner leads the stars-only
ridge while ratings are few (the profile prior is worth about 10 ratings here) and never trails it later;
choosing λ per person by evidence (``residual_evidence``) is too cautious with few ratings, and the RBF
``kernel`` correction learns more slowly than the linear one on these features.

``scripts/eval_fewshot.sh PRESET ADAPTER OUT`` makes that population and runs that command; the README ("Learning from
your stars") has the table for demo and for smol (SmolLM2-135M: zero-shot 0.665, learner 0.763 at k = 10 against
0.712 stars-only, 0.865 at k = 50).

The model runs once per (person, photo) for the zero-shot scores and once per photo for the features
(``train.evaluate.predict`` and ``train.features.image_features``, as ``eval`` does); everything after that is
numpy. Features are the tower's, mean-pooled over patches, and reduced by a
:class:`~pmllm_batch.learn.features.FeatureSpec` fitted on the features of every photo scored (the test and the
calibration people's; no rating is read to fit it, as in a library, where it is fitted on the library's photos).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pmllm_batch.learn import DEFAULT_DIM, FeatureSpec, LearnerConfig, calibrate, fit_taste
from pmllm_batch.train.metrics import bootstrap_ci, calculate_srcc

__all__ = [
    "DEFAULT_SHOTS",
    "FewShotData",
    "PersonRatings",
    "calibration_people",
    "collect_fewshot_data",
    "parse_shots",
    "headline",
    "run_fewshot",
    "write_fewshot_report",
]

DEFAULT_SHOTS = (0, 5, 10, 20, 50, 100)
N_QUERY = 50
N_DRAWS = 3


@dataclass
class PersonRatings:
    """One person's rated photos: rows into :attr:`FewShotData.features`, zero-shot scores, ratings, oracles."""

    photos: np.ndarray
    zero_shot: np.ndarray
    ratings: np.ndarray
    oracle: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class FewShotData:
    """Everything the protocol needs after the model has run: pooled features and per-person arrays.

    Attributes:
        dataset: Dataset name.
        photos: Image paths; row ``i`` of :attr:`features` is ``photos[i]``.
        features: Mean-pooled tower features (n_photos, D_vis).
        people: ``user id -> PersonRatings``: the people the protocol evaluates (a fold's test users).
        model_fingerprint: The model whose zero-shot scores these are.
        calibration: ``user id -> PersonRatings`` of other people (training users) that λ is calibrated on.
    """

    dataset: str
    photos: list[Path]
    features: np.ndarray
    people: dict[str, PersonRatings]
    model_fingerprint: str = ""
    calibration: dict[str, PersonRatings] = field(default_factory=dict)


def parse_shots(text: str) -> tuple[int, ...]:
    """``"0,5,10"`` → (0, 5, 10): sorted, unique, each >= 0."""
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise ValueError(f"--shots takes whole numbers separated by commas (got {text!r}).") from None
    if not values or values[0] < 0:
        raise ValueError(f"--shots takes whole numbers >= 0 separated by commas (got {text!r}).")
    return tuple(values)


def calibration_people(dataset: Any, n: int, seed: int = 0) -> Any:
    """At most ``n`` people of ``dataset`` (a seeded choice), as a dataset of their ratings only."""
    from pmllm_batch.train.datasets import RatingDataset

    users = dataset.user_ids
    chosen = {users[i] for i in np.random.default_rng(seed).permutation(len(users))[: max(n, 0)]}
    samples = [s for s in dataset.samples if s.user_id in chosen]
    profiles = {u: p for u, p in dataset.profiles.items() if u in chosen}
    return RatingDataset(dataset.name, dataset.root, samples, profiles)


def collect_fewshot_data(
    model: Any, dataset: Any, *, calibration: Any = None, batch: int = 64, progress: bool = False
) -> FewShotData:
    """Run the model over a :class:`~pmllm_batch.train.datasets.RatingDataset`: features per photo, scores per pair.

    ``calibration`` (another RatingDataset, e.g. :func:`calibration_people` of the fold's training split) is
    scored in the same pass; its people go to :attr:`FewShotData.calibration`. On a synthetic folder the hidden
    function's ``ideal`` and ``profile_only`` ratings come along.
    """
    from dataclasses import replace

    from pmllm_batch.learn import mean_pool
    from pmllm_batch.model.checkpoint import fingerprint
    from pmllm_batch.train.evaluate import predict
    from pmllm_batch.train.features import image_features

    test_users = set(dataset.user_ids)
    cal_users: set[str] = set()
    if calibration is not None and len(calibration):
        cal_users = set(calibration.user_ids) - test_users
        extra = [s for s in calibration.samples if s.user_id in cal_users]
        profiles = {**{u: calibration.profiles[u] for u in cal_users}, **dataset.profiles}
        dataset = replace(dataset, samples=[*dataset.samples, *extra], profiles=profiles)
    index, feats = image_features(model, dataset, batch=batch, progress=progress)
    pred, target, users = predict(model, dataset, features=(index, feats), batch=batch)
    photos = sorted(index, key=lambda p: index[p])
    pooled = mean_pool(feats.float().numpy()) if len(photos) else np.zeros((0, int(model.d_vis)))
    rows = np.array([index[s.image_path] for s in dataset.samples], dtype=np.int64)
    oracle: dict[str, np.ndarray] = {}
    if dataset.name == "synthetic":
        from pmllm_batch.train.synthetic import synthetic_oracle

        oracle = synthetic_oracle(dataset.root, [(s.user_id, s.image_path) for s in dataset.samples], dataset.profiles)
    people: dict[str, PersonRatings] = {}
    cal: dict[str, PersonRatings] = {}
    for uid in sorted(set(users.tolist())):
        sel = np.flatnonzero(users == uid)
        (cal if uid in cal_users else people)[uid] = PersonRatings(
            photos=rows[sel],
            zero_shot=pred[sel],
            ratings=target[sel],
            oracle={name: values[sel] for name, values in oracle.items()},
        )
    return FewShotData(dataset.name, photos, pooled, people, fingerprint(model), cal)


def _summary(values: Sequence[float], n_boot: int, seed: int) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "ci95": [None, None]}
    lo, hi = bootstrap_ci(v, n_boot=n_boot, seed=seed)
    return {"mean": float(np.mean(v)), "ci95": [lo, hi]}


def run_fewshot(
    data: FewShotData,
    shots: Sequence[int] = DEFAULT_SHOTS,
    *,
    n_query: int = N_QUERY,
    draws: int = N_DRAWS,
    seed: int = 0,
    n_boot: int = 1000,
    learner: LearnerConfig | None = None,
    baseline: LearnerConfig | None = None,
    extra: Mapping[str, LearnerConfig] | None = None,
    compare: bool = False,
    dim: int = DEFAULT_DIM,
) -> dict[str, Any]:
    """The protocol (module docstring) over prepared data; numpy only.

    Args:
        data: From :func:`collect_fewshot_data` (or built directly, as the tests do).
        shots: The support sizes k.
        n_query: Query photos per person and draw.
        draws: Support/query draws per person.
        seed: Seed of the draws and of the bootstrap.
        n_boot: Bootstrap resamples.
        learner: The learner (default: residual ridge, λ calibrated on ``data.calibration``; per-person evidence
            when there is no calibration people).
        baseline: The stars-only learner (default: ``stars_only``, calibrated the same way).
        extra: More learners to report under their names (design comparisons; used as given).
        compare: Also report ``residual_evidence`` and ``kernel`` (module docstring).
        dim: At most this many feature dimensions (PCA).

    Returns:
        A JSON-ready dict: the settings, ``feature_spec`` (kind, d_in, dim), ``learners`` (their configs) and
        ``results``, one entry per k: ``k``, ``n_people``, ``n_skipped`` (test people with fewer than
        k + n_query ratings), and per method ``{"mean", "ci95"}`` (per-user SROCC on the query), the paired
        differences ``learner_minus_zero_shot`` and ``learner_minus_stars_only``, and ``learner_equals_zero_shot``
        (every learner score equal to the zero-shot score, bit for bit; true at k = 0).
    """
    shots = sorted({int(k) for k in shots})
    if any(k < 0 for k in shots) or n_query < 2 or draws < 1:
        raise ValueError("shots must be >= 0, n_query >= 2 and draws >= 1.")
    users = sorted(data.people)
    spec = FeatureSpec.fit(data.features, dim=dim, source=data.model_fingerprint) if len(data.photos) >= 2 else None
    phi_all = spec.transform(data.features) if spec is not None else np.zeros((len(data.photos), 1))
    cal = [
        (phi_all[p.photos], p.zero_shot, p.ratings) for _, p in sorted(data.calibration.items()) if p.ratings.size >= 2
    ]

    def calibrated(cfg: LearnerConfig) -> LearnerConfig:
        return calibrate(cal, spec=spec, config=cfg) if cal and spec is not None else replace(cfg, rule="evidence")

    fixed = LearnerConfig(rule="fixed", guard=False)
    lcfg = learner or calibrated(fixed)
    bcfg = baseline or calibrated(replace(fixed, method="stars_only"))
    methods: dict[str, LearnerConfig] = {"learner": lcfg, "stars_only": bcfg}
    if compare:
        methods["residual_evidence"] = LearnerConfig(rule="evidence", guard=True)
        methods["kernel"] = calibrated(replace(fixed, method="kernel"))
    methods.update(extra or {})
    oracle_names = sorted({name for p in data.people.values() for name in p.oracle})

    results = []
    for k in shots:
        eligible = [(i, u) for i, u in enumerate(users) if data.people[u].ratings.size >= k + n_query]
        per: dict[str, list[float]] = {name: [] for name in ["zero_shot", *methods, *oracle_names]}
        diff_zs: list[float] = []
        diff_so: list[float] = []
        equal = True
        for i, uid in eligible:
            person = data.people[uid]
            acc: dict[str, list[float]] = {name: [] for name in per}
            for d in range(draws):
                perm = np.random.default_rng([seed, d, i]).permutation(person.ratings.size)
                query, support = perm[:n_query], perm[n_query : n_query + k]
                target = person.ratings[query]
                s0_q = person.zero_shot[query]
                acc["zero_shot"].append(calculate_srcc(s0_q, target))
                for name in oracle_names:
                    acc[name].append(calculate_srcc(person.oracle[name][query], target))
                for name, cfg in methods.items():
                    assert spec is not None
                    state = fit_taste(
                        phi_all[person.photos[support]],
                        person.zero_shot[support],
                        person.ratings[support],
                        spec=spec,
                        model_fingerprint=data.model_fingerprint,
                        config=cfg,
                    )
                    pred = state.predict(phi_all[person.photos[query]], s0_q)
                    if name == "learner" and not np.array_equal(pred, s0_q):
                        equal = False
                    acc[name].append(calculate_srcc(pred, target))
            for name, values in acc.items():
                per[name].append(float(np.mean(values)))
            diff_zs.append(per["learner"][-1] - per["zero_shot"][-1])
            diff_so.append(per["learner"][-1] - per["stars_only"][-1])
        entry: dict[str, Any] = {"k": k, "n_people": len(eligible), "n_skipped": len(users) - len(eligible)}
        for name, values in per.items():
            entry[name] = _summary(values, n_boot, seed)
        entry["learner_minus_zero_shot"] = _summary(diff_zs, n_boot, seed)
        entry["learner_minus_stars_only"] = _summary(diff_so, n_boot, seed)
        entry["learner_equals_zero_shot"] = bool(equal and eligible)
        results.append(entry)
    return {
        "protocol": "fewshot",
        "dataset": data.dataset,
        "model_fingerprint": data.model_fingerprint,
        "shots": shots,
        "n_query": n_query,
        "draws": draws,
        "seed": seed,
        "n_test_people": len(users),
        "n_photos": len(data.photos),
        "calibration": {
            "people": len(cal),
            "rule": "λ with the highest summed evidence of the calibration people's ratings" if cal else
            "no calibration people: λ by each person's own evidence",
        },
        "feature_spec": {
            "kind": spec.kind if spec else "tower-mean",
            "d_in": int(data.features.shape[1]) if data.features.ndim == 2 else 0,
            "dim": spec.dim if spec else 0,
        },
        "learners": {name: cfg.to_dict() for name, cfg in methods.items()},
        "methods": ["learner", "zero_shot", "stars_only", *(m for m in methods if m not in ("learner", "stars_only")),
                    *oracle_names],
        "results": results,
    }


def headline(result: Mapping[str, Any]) -> list[str]:
    """One text line per k: each method's mean per-user SROCC and its interval."""
    lines = []
    for entry in result["results"]:
        parts = [f"k={entry['k']:>3} ({entry['n_people']} people)"]
        for name in result["methods"]:
            s = entry.get(name) or {}
            if s.get("mean") is None:
                continue
            lo, hi = s["ci95"]
            parts.append(f"{name} {s['mean']:.3f} [{lo:.3f}, {hi:.3f}]")
        lines.append("  ".join(parts))
    return lines


def write_fewshot_report(result: Mapping[str, Any], out: Path) -> None:
    """``fewshot.json`` (the result) and ``report.md`` (one table: method x k) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "fewshot.json").write_text(json.dumps(result, indent=2, default=float) + "\n", encoding="utf-8")
    methods = list(result["methods"])
    lines = [
        f"# Few-shot evaluation — {result['dataset']}",
        "",
        f"Per-user SROCC on {result['n_query']} held-out photos per person, mean over {result['draws']} draws, "
        "then mean over people [bootstrap 95% CI].",
        "",
    ]
    if result.get("demo"):
        lines += [str(result.get("demo_note") or "demo model: these figures show the mechanism only."), ""]
    lines += ["| k | people | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for entry in result["results"]:
        cells = []
        for name in methods:
            s = entry.get(name) or {}
            if s.get("mean") is None:
                cells.append("—")
            else:
                lo, hi = s["ci95"]
                cells.append(f"{s['mean']:.3f} [{lo:.3f}, {hi:.3f}]")
        lines.append(f"| {entry['k']} | {entry['n_people']} | " + " | ".join(cells) + " |")
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
