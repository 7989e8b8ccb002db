"""Retrieval metrics over Hamming rankings: mAP@K, mAP, P@K, precision within a radius, PR curves.

Definitions (the usual ones of the hashing papers' evaluation code):

* **relevance**: a database item is relevant to a query when they share at least one label
  (multi-hot labels packed into uint64 words, ``(q & d) != 0``).
* **AP@K** (``calculate_top_map`` in DJSRH/UCMFH/CCAH): with ``R_K`` the relevant items in the top K,
  ``AP@K = (1/R_K) Σ_{r<=K, rel(r)} (#relevant at ranks <= r) / r``, normalised by the relevant items
  *retrieved in the top K* (not by min(K, R)); ``AP@K = 0`` when ``R_K = 0`` and such queries still
  count in the mean. When K exceeds the database size the top K is the whole database.
* **mAP** (``k=None``, ``calculate_map``): the same over the whole ranking; ``AP = 0`` for a query
  with no relevant item in the database, and it still counts in the mean.
* **P@K**: relevant items in the top K divided by K (K as requested, also when K > database size).
* **P@r** (precision within Hamming radius r): relevant / retrieved among items at distance <= r;
  **0 for a query that retrieves nothing** within the radius (the usual hashing convention), and the
  number of such queries is returned as ``n_empty``.
* **PR curve**: at each radius r = 0..bits, precision averaged over the queries that retrieve at
  least one item within r, recall (relevant within r / all relevant) averaged over the queries with
  at least one relevant item; ``n_retrieving[r]`` says how many queries the precision averages.

Tie rules (``tie=``), written into every report:

* ``"stable"`` (default): ties in Hamming distance broken by database index (= faiss
  ``IndexBinaryFlat`` order). Computed with one counting sort per query (numba, ``_kernels``).
* ``"reference"``: the published loop, *labelled as such*: distances ``0.5 * (bits - b_q · B^T)``
  in float32 (the dtype ``torch.sign(...).numpy()`` codes give) ranked by ``np.argsort`` with its
  default (unstable) kind, one query at a time. Its tie order depends on numpy's SIMD dispatch, i.e.
  on the CPU, so it is not reproducible across machines. Slow: about 5-15 ms
  per query at 185k database items (a sort per query).

Radius-based numbers (P@r, PR curve) do not depend on the tie rule.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

from pipeline.ground.errors import ConfigError, DataError
from pipeline.ground.store.codes import check_codes, pack_codes, pack_labels

TIE_RULES = {
    "stable": "stable: equal Hamming distances ordered by database index (= faiss IndexBinaryFlat order)",
    "reference": "reference: np.argsort default kind on float32 0.5*(bits - q.B^T), as the published "
                 "calculate_top_map loop; tie order depends on numpy's SIMD dispatch (CPU)",
}


class Scores(NamedTuple):
    """Per-query values ``(nq,)`` (or ``(nq, len(ks))``) and their mean over all queries."""

    per_query: np.ndarray
    mean: float | np.ndarray


class RadiusScores(NamedTuple):
    per_query: np.ndarray  # (nq,) precision within the radius, 0 where nothing was retrieved
    mean: float
    n_empty: int  # queries that retrieved nothing within the radius


class PRCurve(NamedTuple):
    radius: np.ndarray  # (bits+1,) 0..bits
    precision: np.ndarray  # (bits+1,) mean over queries retrieving >= 1 item (NaN if none do)
    recall: np.ndarray  # (bits+1,) mean over queries with >= 1 relevant item
    n_retrieving: np.ndarray  # (bits+1,) queries that retrieve >= 1 item within the radius


@dataclass(frozen=True)
class RankingStats:
    """Per-query sufficient statistics of one ranking; every metric here is a function of these.

    ks are the requested cut-offs; ``ks_eff = min(k, N)``. ``ap_all``, ``cnt``, ``rcnt`` are ``None``
    when only the top-K pass ran (``full=False``).
    """

    bits: int
    n_database: int
    ks: tuple[int, ...]
    ap_k: np.ndarray  # (nq, nk) AP@K
    hits_k: np.ndarray  # (nq, nk) relevant items in the top K
    ap_all: np.ndarray | None  # (nq,) AP over the whole ranking
    cnt: np.ndarray | None  # (nq, bits+1) database items at each Hamming distance
    rcnt: np.ndarray | None  # (nq, bits+1) relevant items at each Hamming distance
    tie: str

    @property
    def n_query(self) -> int:
        return int(self.ap_k.shape[0])


def _check_tie(tie: str) -> None:
    if tie not in TIE_RULES:
        raise ConfigError(f"unknown tie rule {tie!r}; choose one of {', '.join(TIE_RULES)}")


def _check_inputs(q_codes, d_codes, q_labels, d_labels) -> tuple[np.ndarray, ...]:
    q_codes = check_codes(q_codes, "query codes")
    d_codes = check_codes(d_codes, "database codes")
    q_labels, d_labels = np.asarray(q_labels), np.asarray(d_labels)
    if q_codes.shape[1] != d_codes.shape[1]:
        raise DataError(f"query codes have {q_codes.shape[1]} bits, database codes {d_codes.shape[1]}")
    if q_labels.ndim != 2 or d_labels.ndim != 2 or q_labels.shape[1] != d_labels.shape[1]:
        raise DataError(f"labels must be (n, n_labels) with the same n_labels; got {q_labels.shape}, {d_labels.shape}")
    if q_labels.shape[0] != q_codes.shape[0] or d_labels.shape[0] != d_codes.shape[0]:
        raise DataError(f"codes and labels disagree in rows: query {q_codes.shape[0]} vs {q_labels.shape[0]}, "
                        f"database {d_codes.shape[0]} vs {d_labels.shape[0]}")
    if d_codes.shape[0] == 0:
        raise DataError("the database split is empty")
    return q_codes, d_codes, q_labels, d_labels


def _reference_stats(q_codes, d_codes, q_lab, d_lab, ks: np.ndarray, full: bool) -> tuple[np.ndarray, ...]:
    """The published per-query loop (float32 distances, default np.argsort), O(Q · N log N)."""
    nq, bits = q_codes.shape
    nk = ks.shape[0]
    qf = q_codes.astype(np.float32)
    d_t = np.ascontiguousarray(d_codes.astype(np.float32).T)  # (bits, N)
    ap_k = np.zeros((nq, nk))
    hits_k = np.zeros((nq, nk), np.int64)
    ap_all = np.zeros(nq)
    cnt = np.zeros((nq, bits + 1), np.int64)
    rcnt = np.zeros((nq, bits + 1), np.int64)
    for i in range(nq):
        hamm = 0.5 * (bits - qf[i] @ d_t)  # (N,) float32, as calculate_hamming
        order = np.argsort(hamm)  # default kind: unstable, as the published loop
        rel = ((d_lab & q_lab[i]) != 0).any(axis=1)  # (N,) shares >= 1 label
        ranks = np.flatnonzero(rel[order]) + 1  # 1-based ranks of the relevant items
        prec = np.arange(1, ranks.shape[0] + 1) / ranks
        ap_all[i] = prec.mean() if ranks.shape[0] else 0.0
        for t in range(nk):
            inside = ranks <= ks[t]
            hits_k[i, t] = inside.sum()
            ap_k[i, t] = prec[inside].mean() if hits_k[i, t] else 0.0
        if full:
            dist = np.rint(hamm).astype(np.int64)
            cnt[i] = np.bincount(dist, minlength=bits + 1)
            rcnt[i] = np.bincount(dist[rel], minlength=bits + 1)
    return ap_k, hits_k, ap_all, cnt, rcnt


def ranking_stats(q_codes: np.ndarray, d_codes: np.ndarray, q_labels: np.ndarray, d_labels: np.ndarray,
                  ks: Sequence[int] = (), *, full: bool = True, tie: str = "stable",
                  threads: int | None = None) -> RankingStats:
    """Rank the database for every query once and collect what all metrics need.

    q_codes (Q, bits), d_codes (N, bits) ±1; q_labels (Q, L), d_labels (N, L) multi-hot.
    ``full=False`` computes AP@K/hits@K from the stable top-max(ks) only (faster; no mAP, no histograms).
    ``threads``: worker threads for the stable kernels (default: every CPU this process may use).
    """
    _check_tie(tie)
    q_codes, d_codes, q_labels, d_labels = _check_inputs(q_codes, d_codes, q_labels, d_labels)
    requested = tuple(int(k) for k in ks)
    if any(k < 1 for k in requested):
        raise ConfigError(f"cut-offs K must be >= 1, got {requested}")
    if not full and not requested:
        raise ConfigError("ranking_stats(full=False) needs at least one cut-off K")
    n, bits = d_codes.shape
    nq = q_codes.shape[0]
    ks_eff = np.array([min(k, n) for k in requested], dtype=np.int64)
    order = np.argsort(ks_eff, kind="stable")  # kernels want ascending cut-offs
    ks_sorted = np.ascontiguousarray(ks_eff[order])
    q_lab = pack_labels(q_labels)
    d_lab = pack_labels(d_labels)
    if tie == "reference":
        ap_k, hits_k, ap_all, cnt, rcnt = _reference_stats(q_codes, d_codes, q_lab, d_lab, ks_sorted, full)
    else:
        from stages.evaluate import _kernels  # numba compiles (or loads its cache) on first use

        q_words, d_words = pack_codes(q_codes), pack_codes(d_codes)
        d_t, dl_t = np.ascontiguousarray(d_words.T), np.ascontiguousarray(d_lab.T)  # word-major (W, N), (Lw, N)
        ap_k = np.zeros((nq, ks_sorted.shape[0]))
        hits_k = np.zeros((nq, ks_sorted.shape[0]), np.int64)
        ap_all = np.zeros(nq)
        cnt = np.zeros((nq, bits + 1), np.int64)
        rcnt = np.zeros((nq, bits + 1), np.int64)

        def work(lo: int, hi: int) -> None:  # each range writes its own rows of the outputs
            if full:
                _kernels.ranking_full(q_words[lo:hi], d_t, q_lab[lo:hi], dl_t, bits, ks_sorted, ap_all[lo:hi],
                                      ap_k[lo:hi], hits_k[lo:hi], cnt[lo:hi], rcnt[lo:hi])
            else:
                _kernels.ranking_topk(q_words[lo:hi], d_t, q_lab[lo:hi], dl_t, bits, ks_sorted, ap_k[lo:hi],
                                      hits_k[lo:hi])

        _kernels.run_parallel(work, nq, threads)
    if not full:
        ap_all = cnt = rcnt = None
    inverse = np.argsort(order)  # back to the requested order of ks
    return RankingStats(bits=bits, n_database=n, ks=requested, ap_k=ap_k[:, inverse], hits_k=hits_k[:, inverse],
                        ap_all=ap_all, cnt=cnt, rcnt=rcnt, tie=tie)


def _need_full(stats: RankingStats, what: str) -> None:
    if stats.cnt is None:
        raise ConfigError(f"{what} needs ranking_stats(full=True)")


def map_from_stats(stats: RankingStats, k: int | None) -> Scores:
    if k is None:
        _need_full(stats, "mAP over the whole ranking")
        return Scores(stats.ap_all, float(stats.ap_all.mean()) if stats.n_query else float("nan"))
    if k not in stats.ks:
        raise ConfigError(f"K={k} was not computed; ranking_stats was called with ks={stats.ks}")
    per = stats.ap_k[:, stats.ks.index(k)]
    return Scores(per, float(per.mean()) if stats.n_query else float("nan"))


def precision_at_k_from_stats(stats: RankingStats) -> Scores:
    per = stats.hits_k / np.array(stats.ks, dtype=np.float64)  # (nq, nk): divided by the requested K
    return Scores(per, per.mean(axis=0) if stats.n_query else np.full(len(stats.ks), np.nan))


def precision_within_radius_from_stats(stats: RankingStats, r: int = 2) -> RadiusScores:
    _need_full(stats, "precision within a radius")
    if r < 0:
        raise ConfigError(f"Hamming radius must be >= 0, got {r}")
    upto = min(r, stats.bits) + 1
    retrieved = stats.cnt[:, :upto].sum(axis=1)  # (nq,)
    relevant = stats.rcnt[:, :upto].sum(axis=1)
    per = np.divide(relevant, retrieved, out=np.zeros(stats.n_query), where=retrieved > 0)
    return RadiusScores(per, float(per.mean()) if stats.n_query else float("nan"), int((retrieved == 0).sum()))


def pr_curve_from_stats(stats: RankingStats) -> PRCurve:
    _need_full(stats, "a precision-recall curve")
    retrieved = np.cumsum(stats.cnt, axis=1)  # (nq, bits+1) items within radius r
    relevant = np.cumsum(stats.rcnt, axis=1)
    total_rel = relevant[:, -1]
    has = retrieved > 0
    prec = np.divide(relevant, retrieved, out=np.zeros(retrieved.shape), where=has)
    n_retrieving = has.sum(axis=0)
    precision = np.divide(prec.sum(axis=0), n_retrieving, out=np.full(n_retrieving.shape, np.nan),
                          where=n_retrieving > 0)
    with_rel = total_rel > 0
    recall = (relevant[with_rel] / total_rel[with_rel, None]).mean(axis=0) if with_rel.any() \
        else np.full(stats.bits + 1, np.nan)
    return PRCurve(np.arange(stats.bits + 1), precision, recall, n_retrieving)


def map_at_k(q_codes: np.ndarray, d_codes: np.ndarray, q_labels: np.ndarray, d_labels: np.ndarray,
             k: int | None, tie: str = "stable") -> Scores:
    """mAP@K (``k`` int) or mAP over the whole ranking (``k=None``); definitions in the module docstring."""
    if k is None:
        return map_from_stats(ranking_stats(q_codes, d_codes, q_labels, d_labels, (), full=True, tie=tie), None)
    stats = ranking_stats(q_codes, d_codes, q_labels, d_labels, (k,), full=False, tie=tie)
    return map_from_stats(stats, k)


def precision_at_k(q_codes: np.ndarray, d_codes: np.ndarray, q_labels: np.ndarray, d_labels: np.ndarray,
                   ks: Sequence[int], tie: str = "stable") -> Scores:
    """P@K for each K in ``ks``: per_query (Q, len(ks)), mean (len(ks),)."""
    return precision_at_k_from_stats(ranking_stats(q_codes, d_codes, q_labels, d_labels, ks, full=False, tie=tie))


def precision_within_radius(q_codes: np.ndarray, d_codes: np.ndarray, q_labels: np.ndarray,
                            d_labels: np.ndarray, r: int = 2) -> RadiusScores:
    """Precision of the items within Hamming radius ``r``; 0 for queries retrieving nothing (see docstring)."""
    return precision_within_radius_from_stats(ranking_stats(q_codes, d_codes, q_labels, d_labels, (), full=True), r)


def pr_curve(q_codes: np.ndarray, d_codes: np.ndarray, q_labels: np.ndarray, d_labels: np.ndarray) -> PRCurve:
    """Precision and recall at each Hamming radius 0..bits (averaging rules in the module docstring)."""
    return pr_curve_from_stats(ranking_stats(q_codes, d_codes, q_labels, d_labels, (), full=True))
