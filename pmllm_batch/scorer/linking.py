"""Bursts and near-duplicates: pooled visual embeddings, compared incrementally, linked in the database.

What "the same photo, nearly" means here (``[group]`` settings):

* the *pooled embedding* of a photo is the mean of its visual tokens (the tower features the scorer caches anyway),
  reduced to at most :data:`POOL_DIM` dimensions by a fixed random feature hashing (cosines near 1 survive it within
  about 6e-4, one standard deviation, at a cosine of 0.995) and scaled to unit length;
* two photos are **linked** when their cosine similarity is at least ``similarity`` and both capture times are known
  and at most ``seconds`` apart, or, when either capture time is unknown, when it is at least ``similarity_untimed``
  (stricter: no capture time backs the match up);
* a **group** is every photo linked to it directly or through others (the outputs take the connected components).

Incremental: a new embedding is compared only with its *candidates*: photos whose capture time lies within
``seconds`` of its own, and photos sharing one of its locality-sensitive hash buckets (4 tables of 10 random
hyperplanes through the library's mean embedding, probed with every 1-bit neighbour of its key), never with the whole
library. The hyperplanes' centre is re-taken (and every bucket re-filed) whenever the library has grown four-fold
since, so buckets stay balanced. Changing a ``[group]`` threshold re-links everything once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from pmllm_batch.config import GroupSettings
from pmllm_batch.contracts import JSONDict
from pmllm_batch.db.links import LSH_TABLES, EmbeddingRow
from pmllm_batch.db.store import Store
from pmllm_batch.log import get_logger

log = get_logger("scorer.linking")

POOL_DIM = 256  # pooled embeddings wider than this are projected down to it
MIN_DIM = 16  # narrower visual tokens (a stand-in model's) cannot tell photos apart: not grouped
LSH_BITS = 10  # hyperplanes per table: 1024 buckets
SCHEME = 1  # bump when the pooling or hashing changes (re-links everything)
_BATCH = 2000  # embeddings compared per round
_REDUCE = 256  # mean tokens reduced to POOL_DIM together
_BULK = 500  # this many new photos (or a twentieth of the library): read every embedding once
_RECENTER_GROWTH = 4  # re-take the centre when the library has grown this many times since
_MIN_CENTER = 64  # photos before the hyperplanes go through their mean (a few photos' mean splits near-duplicates)


def _sketch(dim: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A fixed random permutation and signs of ``dim`` coordinates (feature hashing), None when no reduction."""
    if dim <= POOL_DIM:
        return None
    rng = np.random.default_rng(0x9E3779B9 + dim)
    return rng.permutation(dim), rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=dim)


_SKETCHES: dict[int, tuple[np.ndarray, np.ndarray] | None] = {}


def token_means(tokens: Sequence[np.ndarray]) -> np.ndarray:
    """``(n, D)`` mean visual token of each photo (tokens ``(N_vis, D)`` each)."""
    return np.stack([np.asarray(t, dtype=np.float32).reshape(-1, np.shape(t)[-1]).mean(axis=0) for t in tokens])


def reduce_means(means: np.ndarray) -> np.ndarray:
    """Unit-length pooled embeddings ``(n, min(D, POOL_DIM))`` from mean tokens ``(n, D)``.

    Wider ones are reduced by feature hashing (signed coordinates summed into POOL_DIM buckets, each coordinate into
    one bucket): an inner-product-preserving random map like a Gaussian projection, at the cost of one pass over the
    data instead of a ``D x POOL_DIM`` matrix product.
    """
    dim = int(means.shape[1])
    if dim not in _SKETCHES:
        _SKETCHES[dim] = _sketch(dim)
    sketch = _SKETCHES[dim]
    if sketch is not None:
        perm, signs = sketch
        signed = means[:, perm] * signs
        pad = (-dim) % POOL_DIM
        if pad:
            signed = np.pad(signed, ((0, 0), (0, pad)))
        means = signed.reshape(len(means), -1, POOL_DIM).sum(axis=1)
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    return (means / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def pooled_embeddings(tokens: Sequence[np.ndarray]) -> np.ndarray:
    """Unit-length pooled embeddings ``(n, min(D, POOL_DIM))`` of photos' visual tokens (each ``(N_vis, D)``)."""
    return reduce_means(token_means(tokens))


def pooled_embedding(tokens: np.ndarray) -> np.ndarray:
    """Unit-length pooled embedding of one photo's visual tokens ``(N_vis, D)``."""
    return pooled_embeddings([tokens])[0]


_PLANES: dict[int, np.ndarray] = {}


def _planes(dim: int) -> np.ndarray:
    if dim not in _PLANES:
        rng = np.random.default_rng(0x5EED + dim)
        _PLANES[dim] = rng.standard_normal((LSH_TABLES, LSH_BITS, dim)).astype(np.float32)
    return _PLANES[dim]


_WEIGHTS = (1 << np.arange(LSH_BITS)).astype(np.int64)


def bucket_keys(vectors: np.ndarray, center: np.ndarray | None) -> np.ndarray:
    """``(n, LSH_TABLES)`` bucket keys of unit vectors ``(n, dim)``: the sign pattern of the hyperplanes through
    ``center``."""
    vecs = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    if center is not None and center.shape[0] == vecs.shape[1]:
        vecs = vecs - center[None, :]
    bits = np.einsum("tbd,nd->ntb", _planes(vecs.shape[1]), vecs) > 0
    return (bits.astype(np.int64) * _WEIGHTS).sum(axis=2)


def probes(key: int) -> list[int]:
    """A bucket key and its 1-bit neighbours (multi-probe LSH: a near-duplicate on the wrong side of one plane)."""
    return [key, *(key ^ (1 << b) for b in range(LSH_BITS))]


class Grouper:
    """Stores pooled embeddings and links each new one with its candidates (one per :class:`LibraryScorer`).

    Args:
        store: The library database.
        settings: The ``[group]`` settings (``similarity``, ``similarity_untimed``, ``seconds``).
    """

    def __init__(self, store: Store, settings: GroupSettings) -> None:
        self.store = store
        self.similarity = float(settings.similarity)
        self.similarity_untimed = float(settings.similarity_untimed)
        self.seconds = float(settings.seconds)
        self.backfilled: set[str] = set()
        self._centers: dict[str, np.ndarray | None] = {}  # per vision graph, until the next update() re-reads it
        # Pooled embeddings not yet stored, per vision graph: written in one transaction by update(). A run killed
        # before that loses them, and the next run's backfill pools them again from the cached visual tokens.
        self._pending: dict[str, dict[str, np.ndarray]] = {}
        self._means: dict[str, dict[str, np.ndarray]] = {}  # mean tokens still to be reduced (wider than POOL_DIM)
        self.compared = 0  # embeddings compared in this process (for the bench and the log)
        self.candidates = 0  # candidate pairs looked at

    def params(self) -> JSONDict:
        """What the stored links depend on: other values re-link everything."""
        return {"scheme": SCHEME, "pool_dim": POOL_DIM, "bits": LSH_BITS, "tables": LSH_TABLES,
                "similarity": self.similarity, "similarity_untimed": self.similarity_untimed,
                "seconds": self.seconds}

    # -- storing ------------------------------------------------------------------------------------------------------

    def _center(self, vision_id: str, fresh: np.ndarray) -> np.ndarray | None:
        if vision_id in self._centers:
            known = self._centers[vision_id]
            if known is None or known.shape[0] == fresh.shape[1]:
                return known
        found = self.store.group_state(vision_id)
        if found is not None and (found[1] is None or found[1].shape[0] == fresh.shape[1]):
            self._centers[vision_id] = found[1]
            return found[1]
        center = fresh.mean(axis=0).astype(np.float32) if len(fresh) >= _MIN_CENTER else None
        relink = found is not None  # a centre of another width: the vision graph changed shape
        self.store.set_group_state(vision_id, self.params(), center, len(fresh) if center is not None else 0,
                                   relink=relink)
        self._centers[vision_id] = center
        return center

    def add_tokens(self, tokens: Mapping[str, np.ndarray], vision_id: str) -> int:
        """Pool the visual tokens of freshly encoded (or cached) photos; stored by the next :meth:`update`. Returns
        how many were pooled."""
        hashes = [h for h, t in tokens.items() if np.shape(t)[-1] >= MIN_DIM]
        if not hashes:
            return 0
        means = self._means.setdefault(vision_id, {})
        means.update(zip(hashes, token_means([tokens[h] for h in hashes]), strict=True))
        if len(means) >= _REDUCE:
            self._reduce(vision_id)
        return len(hashes)

    def _reduce(self, vision_id: str) -> None:
        means = self._means.pop(vision_id, {})
        if means:
            vecs = reduce_means(np.stack(list(means.values())))
            self._pending.setdefault(vision_id, {}).update(zip(means, vecs, strict=True))

    def _flush(self, vision_id: str) -> int:
        """Store the pooled embeddings waiting for ``vision_id``, with their LSH buckets, in one transaction."""
        self._reduce(vision_id)
        waiting = self._pending.pop(vision_id, {})
        if not waiting:
            return 0
        hashes = list(waiting)
        vecs = np.stack([waiting[h] for h in hashes])
        keys = bucket_keys(vecs, self._center(vision_id, vecs))
        return self.store.put_embeddings(
            vision_id, {h: (vecs[i], tuple(int(k) for k in keys[i])) for i, h in enumerate(hashes)}
        )

    def backfill(self, vision_id: str, hashes: Sequence[str], chunk: int = 64) -> int:
        """Embeddings for ``hashes`` (ok photos) whose visual tokens are cached but that have none yet (a library
        scored before grouping existed); once per process and vision graph. Returns how many were added."""
        if vision_id in self.backfilled:
            return 0
        self.backfilled.add(vision_id)
        waiting = set(self._pending.get(vision_id, {})) | set(self._means.get(vision_id, {}))
        missing = sorted(set(hashes) - self.store.embedded_hashes(vision_id) - waiting)
        if not missing:
            return 0
        cached = sorted(self.store.cached_hashes(missing, vision_id))
        added = 0
        for i in range(0, len(cached), chunk):
            added += self.add_tokens(self.store.get_features(cached[i : i + chunk], vision_id), vision_id)
        if added:
            log.info("pooled embeddings for %d photos scored before grouping existed", added)
        return added

    # -- linking ------------------------------------------------------------------------------------------------------

    def _prepare(self, vision_id: str) -> None:
        """Re-link everything when the settings changed; re-take the centre when the library outgrew it."""
        found = self.store.group_state(vision_id)
        if found is None:
            return
        params, center, center_n = found
        relink = params != self.params()
        total = len(self.store.embedded_hashes(vision_id)) if not relink else 0
        if relink or (total >= _MIN_CENTER and (center is None or total >= _RECENTER_GROWTH * max(center_n, 1))):
            everything = self.store.all_embeddings(vision_id)
            if not everything:
                self.store.set_group_state(vision_id, self.params(), center, center_n, relink=relink)
                return
            vecs = np.stack([v for _, v in everything])
            new_center = vecs.mean(axis=0).astype(np.float32) if len(vecs) >= _MIN_CENTER else None
            keys = bucket_keys(vecs, new_center)
            buckets = {h: tuple(int(k) for k in keys[i]) for i, (h, _) in enumerate(everything)}
            self.store.set_group_state(vision_id, self.params(), new_center,
                                       len(everything) if new_center is not None else 0, relink=relink,
                                       buckets=buckets)
            if relink:
                log.info("[group] settings changed: linking %d photos again", len(everything))

    def update(self, vision_id: str) -> int:
        """Compare every embedding not yet compared with its candidates and store the links; returns how many links
        were found.

        A few new photos read only their candidates from the database (by capture time and LSH bucket); when many are
        new (a first run), every embedding is read once instead, and each is still compared with its candidates only.
        """
        self._centers.pop(vision_id, None)  # another process may have re-taken it since
        self._flush(vision_id)
        self._prepare(vision_id)
        unlinked = self.store.unlinked_hashes(vision_id)
        if not unlinked:
            return 0
        # Capture times first, for all of them: a candidate found in the database must carry its own.
        self.store.set_capture_times(vision_id, {h: t for h, t in self.store.capture_times(unlinked).items()
                                                 if t is not None})
        total = len(self.store.embedded_hashes(vision_id))
        everything: _Pool | None = None
        if len(unlinked) >= max(_BULK, total // 20):
            everything = _Pool(self.store.all_embedding_rows(vision_id))
        found = 0
        while True:
            batch = self.store.unlinked_embeddings(vision_id, _BATCH)
            if not batch:
                break
            links = self._link_batch(batch, everything or self._candidates(vision_id, batch))
            self.store.finish_linking(vision_id, [r.content_hash for r in batch], links)
            self.compared += len(batch)
            found += len(links)
        return found

    def _candidates(self, vision_id: str, batch: list[EmbeddingRow]) -> _Pool:
        """The batch's candidates from the database: photos taken within ``seconds`` of a timed one (one query for
        the batch's merged windows), photos in the LSH buckets of an untimed one, untimed photos in the buckets of a
        timed one (a timed pair needs the time)."""
        timed = [r for r in batch if r.taken_s is not None]
        untimed = [r for r in batch if r.taken_s is None]
        window = int(math.ceil(self.seconds))
        ranges: list[tuple[int, int]] = []
        for t in sorted(r.taken_s for r in timed if r.taken_s is not None):
            first, last = t - window, t + window
            if ranges and first <= ranges[-1][1] + 1:
                ranges[-1] = (ranges[-1][0], max(ranges[-1][1], last))
            else:
                ranges.append((first, last))

        def probe_sets(rows: list[EmbeddingRow]) -> list[set[int]]:
            return [{p for r in rows for p in probes(r.lsh[t])} for t in range(LSH_TABLES)]

        found = self.store.embeddings_taken_between(vision_id, ranges)
        if untimed:
            found += self.store.embeddings_in_buckets(vision_id, probe_sets(untimed))
        if timed:
            found += self.store.embeddings_in_buckets(vision_id, probe_sets(timed), untimed_only=True)
        pool: dict[str, EmbeddingRow] = {}
        for row in (*batch, *found):
            pool.setdefault(row.content_hash, row)
        return _Pool(list(pool.values()))

    def _link_batch(self, batch: list[EmbeddingRow], pool: _Pool) -> list[tuple[str, str, float, float | None]]:
        """Links of ``batch`` rows with their candidates in ``pool``, all candidate pairs at once (numpy)."""
        if not pool.rows:
            return []
        b_vec = np.stack([r.vector for r in batch])
        b_keys = np.array([r.lsh for r in batch], dtype=np.int64).reshape(len(batch), LSH_TABLES)
        b_timed = np.array([r.taken_s is not None for r in batch])
        b_time = np.array([r.taken_s if r.taken_s is not None else 0 for r in batch], dtype=np.int64)
        b_self = np.array([pool.index.get(r.content_hash, -1) for r in batch], dtype=np.int64)
        flips = np.array([0, *(1 << b for b in range(LSH_BITS))], dtype=np.int64)

        # LSH pairs (batch row, pool row): a pool key within one bit of the batch row's key, in any table. A timed
        # batch row only pairs with untimed pool rows here. All of them take the untimed threshold.
        lsh_i: list[np.ndarray] = []
        lsh_j: list[np.ndarray] = []
        owner = np.repeat(np.arange(len(batch)), len(flips))
        for t in range(LSH_TABLES):
            want = (b_keys[:, t][:, None] ^ flips[None, :]).ravel()
            lo = np.searchsorted(pool.sorted_keys[t], want, side="left")
            hi = np.searchsorted(pool.sorted_keys[t], want, side="right")
            i, j = _expand(owner, lo, hi, pool.orders[t])
            lsh_i.append(i)
            lsh_j.append(j)
        li, lj = np.concatenate(lsh_i), np.concatenate(lsh_j)
        keep = (lj != b_self[li]) & ~(b_timed[li] & pool.has_time[lj])
        li, lj = _unique_pairs(li[keep], lj[keep], len(pool.rows))

        # Time pairs: both capture times known and at most `seconds` apart; the timed threshold.
        ti = tj = np.empty(0, dtype=np.int64)
        owners = np.flatnonzero(b_timed)
        if len(owners) and len(pool.t_sorted):
            lo = np.searchsorted(pool.t_sorted, b_time[owners] - self.seconds, side="left")
            hi = np.searchsorted(pool.t_sorted, b_time[owners] + self.seconds, side="right")
            ti, tj = _expand(owners, lo, hi, pool.t_order)
            keep = tj != b_self[ti]
            ti, tj = ti[keep], tj[keep]

        self.candidates += int(len(li) + len(ti))
        out: dict[tuple[str, str], tuple[str, str, float, float | None]] = {}
        for pi, pj, threshold in ((ti, tj, self.similarity), (li, lj, self.similarity_untimed)):
            if not len(pi):
                continue
            sims = np.concatenate([np.einsum("ij,ij->i", b_vec[pi[k:k + _PAIRS]], pool.matrix[pj[k:k + _PAIRS]])
                                   for k in range(0, len(pi), _PAIRS)])
            hit = sims >= threshold
            for i, j, sim in zip(pi[hit].tolist(), pj[hit].tolist(), sims[hit].tolist(), strict=True):
                a, b = batch[i], pool.rows[j]
                apart = float(abs(a.taken_s - b.taken_s)) if a.taken_s is not None and b.taken_s is not None else None
                key = (a.content_hash, b.content_hash) if a.content_hash < b.content_hash else (
                    b.content_hash, a.content_hash)
                out.setdefault(key, (key[0], key[1], float(sim), apart))
        return list(out.values())


class _Pool:
    """Candidate embeddings as arrays, sorted once by every LSH table's key and by capture time."""

    def __init__(self, rows: list[EmbeddingRow]) -> None:
        self.rows = rows
        self.index = {r.content_hash: i for i, r in enumerate(rows)}
        dim = rows[0].vector.shape[0] if rows else 1
        self.matrix = np.stack([r.vector for r in rows]) if rows else np.empty((0, dim), np.float32)
        self.has_time = np.array([r.taken_s is not None for r in rows], dtype=bool)
        times = np.array([r.taken_s if r.taken_s is not None else 0 for r in rows], dtype=np.int64)
        keys = np.array([r.lsh for r in rows], dtype=np.int64).reshape(len(rows), LSH_TABLES)
        self.orders = [np.argsort(keys[:, t], kind="stable") for t in range(LSH_TABLES)]
        self.sorted_keys = [keys[self.orders[t], t] for t in range(LSH_TABLES)]
        self.t_order = np.flatnonzero(self.has_time)[np.argsort(times[self.has_time], kind="stable")]
        self.t_sorted = times[self.t_order]


_PAIRS = 1 << 16  # candidate pairs per similarity chunk


def _expand(owner: np.ndarray, lo: np.ndarray, hi: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (owner, order[pos]) for ``lo[k] <= pos < hi[k]``: ranges of a sorted array, as index pairs."""
    counts = hi - lo
    nonempty = counts > 0
    owner, lo, counts = owner[nonempty], lo[nonempty], counts[nonempty]
    total = int(counts.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    starts = np.repeat(lo - (np.cumsum(counts) - counts), counts)
    return np.repeat(owner, counts), order[np.arange(total) + starts]


def _unique_pairs(i: np.ndarray, j: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (i, j) pairs (a pair found in several LSH tables is compared once)."""
    codes = np.sort(i * width + j)
    if len(codes):
        codes = codes[np.concatenate(([True], codes[1:] != codes[:-1]))]
    return codes // width, codes % width
