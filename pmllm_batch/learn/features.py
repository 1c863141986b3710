"""The per-photo features the learner reads: pooled tower features, standardised and PCA-reduced (``FeatureSpec``).

A spec is fitted once on a set of photos' features (a library's photos, a dataset's images: no ratings are read, so
fitting it on every photo one will rank peeks at nothing) and then frozen: a learned taste is only valid with the
spec it was fitted with, so :class:`~pmllm_batch.learn.model.TasteState` stores its spec.

Transform: ``phi = ((x - mean) / scale) @ basis``, where ``x`` is one photo's pooled features (``d_in`` values),
``mean``/``scale`` standardise every input dimension over the fitting photos, and ``basis`` (``d_in`` × ``dim``)
holds the top ``dim`` principal directions of the standardised features, divided by the square root of the mean
kept eigenvalue, so that ``phi`` has mean 0 and an *average* variance of 1 per dimension over the fitting photos
(directions keep their relative variance: the learner's isotropic prior then prefers the directions along which
photos differ most). ``whiten=True`` divides each direction by its own standard deviation instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pmllm_batch.contracts import JSONDict

__all__ = ["DEFAULT_DIM", "FeatureSpec", "mean_pool"]

DEFAULT_DIM = 64  # at most this many PCA dimensions
SPEC_VERSION = 1
_EPS = 1e-8  # an input dimension with less spread than this (after standardising) carries nothing


def mean_pool(features: object) -> np.ndarray:
    """Mean over the patch axis: tower features (n, n_feat, D_vis) → (n, D_vis) float64; (n, D) passes through."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim == 3:
        return x.mean(axis=1)
    if x.ndim == 2:
        return x
    raise ValueError(f"expected features of shape (n, n_feat, D) or (n, D), got {x.shape}.")


@dataclass(frozen=True)
class FeatureSpec:
    """How raw per-photo features become the learner's ``phi`` (module docstring).

    Attributes:
        kind: What the raw rows are, e.g. ``"tower-mean"`` (vision-tower features mean-pooled over patches).
        source: Which features: the caller's id of the vision graph (or model fingerprint) that produced them.
        mean: Per input dimension, subtracted first (``d_in``).
        scale: Per input dimension, divided next (``d_in``; dimensions without spread get 1).
        basis: ``d_in`` × ``dim`` projection applied last.
    """

    kind: str
    source: str
    mean: np.ndarray
    scale: np.ndarray
    basis: np.ndarray

    @property
    def d_in(self) -> int:
        return int(self.mean.shape[0])

    @property
    def dim(self) -> int:
        return int(self.basis.shape[1])

    @classmethod
    def fit(
        cls,
        features: object,
        *,
        dim: int = DEFAULT_DIM,
        whiten: bool = False,
        kind: str = "tower-mean",
        source: str = "",
    ) -> FeatureSpec:
        """Fit on raw features (n, d_in) or tower features (n, n_feat, d_in), which are mean-pooled first.

        Args:
            features: One row per photo (ratings are never needed).
            dim: At most this many output dimensions (fewer when the features have fewer directions with spread).
            whiten: Give every kept direction unit variance (default: unit variance on average; module docstring).
            kind: Stored as :attr:`kind`.
            source: Stored as :attr:`source`.

        Returns:
            The frozen spec.
        """
        x = mean_pool(features)
        if x.shape[0] < 2:
            raise ValueError("fitting a feature spec needs the features of at least 2 photos.")
        if dim < 1:
            raise ValueError(f"dim must be at least 1 (got {dim}).")
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        scale = np.where(std > _EPS * max(1.0, float(np.abs(mean).max(initial=0.0))), std, 1.0)
        z = (x - mean) / scale
        # PCA of the standardised features through the SVD (no d_in x d_in covariance when n is small)
        _, sing, vt = np.linalg.svd(z, full_matrices=False)
        eig = sing**2 / x.shape[0]
        keep = int(min(dim, int(np.sum(eig > _EPS * max(float(eig.max(initial=0.0)), _EPS)))))
        keep = max(keep, 1)
        vecs = vt[:keep].T
        # a fixed sign per direction (largest loading positive): the same photos give the same spec on any BLAS
        signs = np.sign(vecs[np.abs(vecs).argmax(axis=0), np.arange(keep)])
        vecs = vecs * np.where(signs == 0, 1.0, signs)
        kept = np.maximum(eig[:keep], _EPS)
        basis = vecs / np.sqrt(kept) if whiten else vecs / np.sqrt(kept.mean())
        return cls(kind=kind, source=source, mean=mean, scale=scale, basis=basis)

    def transform(self, features: object) -> np.ndarray:
        """Raw features (n, d_in) or tower features (n, n_feat, d_in) → ``phi`` (n, dim), float64."""
        x = mean_pool(features)
        if x.shape[1] != self.d_in:
            raise ValueError(f"this feature spec takes {self.d_in} values per photo, got {x.shape[1]}.")
        return np.asarray(((x - self.mean) / self.scale) @ self.basis)

    def to_dict(self) -> JSONDict:
        """A JSON-able dict (floats written with ``repr`` precision by ``json``: the round trip is exact)."""
        return {
            "version": SPEC_VERSION,
            "kind": self.kind,
            "source": self.source,
            "mean": [float(v) for v in self.mean],
            "scale": [float(v) for v in self.scale],
            "basis": [[float(v) for v in row] for row in self.basis],
        }

    @classmethod
    def from_dict(cls, data: JSONDict) -> FeatureSpec:
        if data.get("version") != SPEC_VERSION:
            raise ValueError(f"unknown feature spec version {data.get('version')!r} (this code reads {SPEC_VERSION}).")
        mean = np.asarray(data["mean"], dtype=np.float64)
        scale = np.asarray(data["scale"], dtype=np.float64)
        basis = np.asarray(data["basis"], dtype=np.float64).reshape(mean.shape[0], -1)
        return cls(kind=str(data["kind"]), source=str(data["source"]), mean=mean, scale=scale, basis=basis)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FeatureSpec):
            return NotImplemented
        return (
            self.kind == other.kind
            and self.source == other.source
            and all(
                a.shape == b.shape and bool(np.array_equal(a, b))
                for a, b in ((self.mean, other.mean), (self.scale, other.scale), (self.basis, other.basis))
            )
        )

    __hash__ = None  # type: ignore[assignment]
