"""numba kernels for exact Hamming ranking with the stable tie rule (counting sorts, no comparison sort).

Stable rule: order by Hamming distance, ties by database index. With a histogram ``cnt[b]`` of the
distances, the stable rank of item ``j`` is ``#(distance < d_j) + #(distance == d_j and index <= j)``,
so one walk over ``j`` in index order assigns every rank (a counting sort that moves nothing).

* Top-k (``_select_topk``): a scan with a shrinking acceptance threshold. Items with a distance above
  the threshold are skipped; once ``k`` items lie at distance ``<= b``, later items at distance ``b``
  cannot enter (they have larger indices), so the threshold drops to ``b - 1``. Distances are
  computed 256 items at a time (vectorised XOR + popcount), and a block whose minimum is above the
  threshold is skipped without a scalar loop.
* Whole ranking (``ranking_full``): one walk in index order keeps running per-distance counts (this
  is the histogram and, at the same time, each item's position inside its distance bucket); the
  precision at each relevant item follows once the histogram is complete.

The database is word-major (``d_t`` is ``(W, N)``, labels ``(Lw, N)``) so inner loops stream over N.
Each kernel handles the query rows it is given and releases the GIL (``nogil=True``); ``run_parallel``
hands contiguous query ranges to a few Python threads, each range writing its own rows of the
outputs. Kernels compile on first call and are cached on disk (``cache=True``); importing this module
compiles nothing.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
from numba import njit

_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)
_BLOCK = 256  # database items per vectorised distance block
_LOW32 = np.uint64(0xFFFFFFFF)


@njit(cache=True)
def _popcount(x):
    """SWAR popcount of one uint64 (LLVM lowers it to popcnt / vpshufb)."""
    x = x - ((x >> np.uint64(1)) & _M1)
    x = (x & _M2) + ((x >> np.uint64(2)) & _M2)
    x = (x + (x >> np.uint64(4))) & _M4
    return (x * _H01) >> np.uint64(56)


@njit(cache=True)
def _block_distances(q, d_t, start, length, dist):
    """dist[:length] = Hamming(q, database start:start+length); q (W,), d_t (W, N), dist (BLOCK,) int32."""
    for jj in range(length):
        dist[jj] = 0
    for w in range(d_t.shape[0]):
        qw = q[w]
        row = d_t[w]
        for jj in range(length):
            dist[jj] += np.int32(_popcount(qw ^ row[start + jj]))


@njit(cache=True)
def _block_relevance(ql, l_t, start, length, rel):
    """rel[:length] = 1 where the query shares a label; ql (Lw,), l_t (Lw, N), rel (BLOCK,) int32."""
    for jj in range(length):
        rel[jj] = 0
    for w in range(l_t.shape[0]):
        qw = ql[w]
        row = l_t[w]
        for jj in range(length):
            rel[jj] |= np.int32((qw & row[start + jj]) != np.uint64(0))


@njit(cache=True)
def _select_topk(q, d_t, bits, k, dist, cnt, pos, cand, cand_d, out_idx, out_dist):
    """Stable top-k of one query into out_idx[:k], out_dist[:k]; k <= N.

    Scratch: dist (BLOCK,) int32; cnt, pos (bits+1,) int64; cand, cand_d (N,) int64 / int32.
    """
    n = d_t.shape[1]
    cnt[:] = 0
    accept = bits  # accept items with distance <= accept
    m = 0
    for start in range(0, n, _BLOCK):
        length = min(_BLOCK, n - start)
        _block_distances(q, d_t, start, length, dist)
        low = bits + 1
        for jj in range(length):
            low = min(low, dist[jj])
        if low > accept:
            continue
        for jj in range(length):
            d = dist[jj]
            if d <= accept:
                cand[m] = start + jj
                cand_d[m] = d
                m += 1
                cnt[d] += 1
                total = 0
                for b in range(accept + 1):  # smallest b with k items at distance <= b
                    total += cnt[b]
                    if total >= k:
                        accept = b - 1
                        break
    last = accept + 1  # distance of the k-th item; counts at distances <= last are complete enough
    offset = 0
    for b in range(bits + 1):
        pos[b] = offset
        offset += cnt[b]
    taken = 0
    for mm in range(m):  # candidates are in index order: ranks follow the stable rule
        d = cand_d[mm]
        if d > last:
            continue
        p = pos[d]
        pos[d] = p + 1
        if p < k:
            out_idx[p] = cand[mm]
            out_dist[p] = d
            taken += 1
            if taken == k:
                break


@njit(nogil=True, cache=True)
def topk_stable(q_words, d_t, bits, k, out_idx, out_dist):
    """Exact stable top-k. q_words (m, W), d_t (W, N) -> out_idx (m, k) int64, out_dist (m, k) int32."""
    n = d_t.shape[1]
    dist = np.empty(_BLOCK, np.int32)
    cnt = np.zeros(bits + 1, np.int64)
    pos = np.zeros(bits + 1, np.int64)
    cand = np.empty(n, np.int64)
    cand_d = np.empty(n, np.int32)
    for i in range(q_words.shape[0]):
        _select_topk(q_words[i], d_t, bits, k, dist, cnt, pos, cand, cand_d, out_idx[i], out_dist[i])


@njit(nogil=True, cache=True)
def ranking_topk(q_words, d_t, q_labels, l_t, bits, ks, ap_k, hits_k):
    """AP@K and relevant-in-top-K for ascending ks (each <= N) from the stable top-max(ks).

    ap_k, hits_k (Q, nk) must be zero on entry. Relevance is computed for the selected items only.
    """
    n = d_t.shape[1]
    nk = ks.shape[0]
    kmax = ks[nk - 1]
    dist = np.empty(_BLOCK, np.int32)
    cnt = np.zeros(bits + 1, np.int64)
    pos = np.zeros(bits + 1, np.int64)
    cand = np.empty(n, np.int64)
    cand_d = np.empty(n, np.int32)
    top = np.empty(kmax, np.int64)
    top_d = np.empty(kmax, np.int32)
    for i in range(q_words.shape[0]):
        _select_topk(q_words[i], d_t, bits, kmax, dist, cnt, pos, cand, cand_d, top, top_d)
        r = 0
        for p in range(kmax):
            j = top[p]
            hit = False
            for w in range(l_t.shape[0]):
                if (q_labels[i, w] & l_t[w, j]) != np.uint64(0):
                    hit = True
                    break
            if hit:
                r += 1
                prec = r / (p + 1)
                for t in range(nk):
                    if p + 1 <= ks[t]:
                        ap_k[i, t] += prec
                        hits_k[i, t] += 1
        for t in range(nk):
            if hits_k[i, t] > 0:
                ap_k[i, t] /= hits_k[i, t]


@njit(nogil=True, cache=True)
def ranking_full(q_words, d_t, q_labels, l_t, bits, ks, ap_all, ap_k, hits_k, cnt_out, rcnt_out):
    """Whole stable ranking per query: one pass over N, then one over the relevant items.

    Pass 1 walks the database in index order keeping, per distance b, a running count of items and
    of relevant items (packed in one uint64: low 32 bits all, high 32 bits relevant, one scatter per
    item); each relevant item records its distance and both running counts. Once the histogram is
    complete, item j's stable rank is ``#(distance < d_j) + running count``, and its relevant rank
    likewise, so pass 2 sums precision over the relevant items only.

    ks (nk,) ascending, each <= N. Outputs (zero on entry): ap_all (Q,) AP over the whole ranking
    (0 without relevant items); ap_k (Q, nk) AP@K normalised by the relevant items in the top K (0 when
    none); hits_k (Q, nk) relevant items in the top K; cnt_out / rcnt_out (Q, bits+1) all / relevant
    items at each Hamming distance.
    """
    n = d_t.shape[1]
    nk = ks.shape[0]
    kmax = ks[nk - 1] if nk > 0 else 0
    dist = np.empty(_BLOCK, np.int32)
    rel = np.empty(_BLOCK, np.int32)
    running = np.zeros(bits + 1, np.uint64)  # per distance: items so far | relevant items so far << 32
    rel_dist = np.empty(n, np.int32)  # per relevant item, in database order
    rel_pos = np.empty(n, np.int32)  # its position among the items at its distance (1-based)
    rel_rank = np.empty(n, np.int32)  # its position among the relevant items at its distance
    before = np.zeros(bits + 1, np.int64)  # items at a smaller distance
    rbefore = np.zeros(bits + 1, np.int64)  # relevant items at a smaller distance
    for i in range(q_words.shape[0]):
        running[:] = 0
        m = 0
        for start in range(0, n, _BLOCK):
            length = min(_BLOCK, n - start)
            _block_distances(q_words[i], d_t, start, length, dist)
            _block_relevance(q_labels[i], l_t, start, length, rel)
            for jj in range(length):  # branch-free: always write slot m, advance it when relevant
                d = dist[jj]
                r = rel[jj]
                x = running[d] + (np.uint64(1) | (np.uint64(r) << np.uint64(32)))
                running[d] = x
                rel_dist[m] = d
                rel_pos[m] = np.int32(x & _LOW32)
                rel_rank[m] = np.int32(x >> np.uint64(32))
                m += r
        offset = 0
        roffset = 0
        for b in range(bits + 1):
            c = np.int64(running[b] & _LOW32)
            rc = np.int64(running[b] >> np.uint64(32))
            cnt_out[i, b] = c
            rcnt_out[i, b] = rc
            before[b] = offset
            rbefore[b] = roffset
            offset += c
            roffset += rc
        total = 0.0
        for mm in range(m):
            d = rel_dist[mm]
            p = before[d] + rel_pos[mm]  # 1-based stable rank
            prec = (rbefore[d] + rel_rank[mm]) / p
            total += prec
            if p <= kmax:  # rare: most relevant items rank beyond every cut-off
                for t in range(nk - 1, -1, -1):
                    if p > ks[t]:
                        break
                    ap_k[i, t] += prec
                    hits_k[i, t] += 1
        ap_all[i] = total / roffset if roffset > 0 else 0.0
        for t in range(nk):
            if hits_k[i, t] > 0:
                ap_k[i, t] /= hits_k[i, t]


def query_ranges(n_queries: int, threads: int) -> list[tuple[int, int]]:
    """Contiguous query ranges, a few per thread for load balance (each range allocates its scratch once)."""
    parts = max(1, min(n_queries, 4 * threads))
    bounds = [n_queries * p // parts for p in range(parts + 1)]
    return [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]


def default_threads() -> int:
    """CPUs this process may run on (``os.sched_getaffinity`` where available)."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_parallel(work: Callable[[int, int], None], n_queries: int, threads: int | None = None) -> None:
    """Call ``work(lo, hi)`` over query ranges on ``threads`` Python threads (the kernels release the GIL).

    Plain threads rather than numba's ``parallel=True``: compiling a parfor costs seconds more on a
    cold cache, and a second OpenMP pool would fight faiss's and torch's for the same cores.
    """
    threads = threads or default_threads()
    ranges = query_ranges(n_queries, threads)
    if threads == 1 or len(ranges) == 1:
        for lo, hi in ranges:
            work(lo, hi)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in pool.map(lambda r: work(*r), ranges):  # re-raises a worker's exception here
            pass
