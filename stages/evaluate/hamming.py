"""Exact Hamming ranking over packed ``uint64`` codes, with a stable tie rule.

Tie rule ("stable"): database items are ordered by Hamming distance, ties by database index (row
order of the database split). This is the order ``faiss.IndexBinaryFlat`` returns (checked by a
test; it is an implementation property of faiss, not a documented contract), and the order the SQL
in ``stages.present.sql`` produces with ``ORDER BY hamming, item_id`` when item ids ascend with row order.

Backends for :func:`topk`:

* ``"numpy"``: query chunks against the word-major database ``(W, N)`` with ``np.bitwise_xor`` +
  ``np.bitwise_count`` into preallocated buffers, then a composite key ``(distance << 32) | index``
  with ``argpartition``; memory is ``O(chunk * N)``, never ``O(Q * N)``.
* ``"numba"``: a shrinking-threshold counting scan per query (``_kernels.topk_stable``), query ranges
  on parallel threads.
* ``"faiss"``: ``IndexBinaryFlat`` on the same bytes (faiss needs the bit count to be a multiple of 8;
  zero-padded words are, and padding adds nothing to a distance).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from pipeline.ground.errors import ConfigError, DataError

BACKENDS = ("numpy", "numba", "faiss")


def _check_words(q_words: np.ndarray, d_words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q_words = np.ascontiguousarray(q_words, dtype=np.uint64)
    d_words = np.ascontiguousarray(d_words, dtype=np.uint64)
    if q_words.ndim != 2 or d_words.ndim != 2 or q_words.shape[1] != d_words.shape[1]:
        raise DataError(f"packed codes must be (n, W) uint64 with the same W; got query {q_words.shape}, "
                        f"database {d_words.shape}")
    return q_words, d_words


def distance_dtype(bits: int) -> type:
    """Smallest unsigned dtype holding distances 0..bits."""
    return np.uint8 if bits <= 255 else np.uint16


def hamming_block(q_words: np.ndarray, d_words_t: np.ndarray, out: np.ndarray | None = None,
                  scratch: np.ndarray | None = None) -> np.ndarray:
    """Distances of a few queries to the whole database.

    q_words (m, W) uint64, d_words_t (W, N) uint64 word-major -> (m, N) uint8 (uint16 beyond 255 bits).
    ``out`` (m, N) and ``scratch`` (m, N) uint64 may be passed to avoid page faults on fresh buffers.
    """
    m, width = q_words.shape
    n = d_words_t.shape[1]
    dtype = distance_dtype(64 * width)
    out = np.empty((m, n), dtype) if out is None else out[:m]
    scratch = np.empty((m, n), np.uint64) if scratch is None else scratch[:m]
    counts = np.empty((m, n), np.uint8) if width > 1 else out
    for w in range(width):
        np.bitwise_xor(q_words[:, w, None], d_words_t[w, None, :], out=scratch)  # (m, N)
        if w == 0:
            np.bitwise_count(scratch, out=out)  # uint8 counts, widened to uint16 beyond 255 bits
        else:
            np.bitwise_count(scratch, out=counts)
            np.add(out, counts, out=out)
    return out


def iter_hamming(q_words: np.ndarray, d_words: np.ndarray, chunk: int = 16) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, block)`` with block (m <= chunk, N) distances for queries ``start:start+m``.

    The block buffer is reused between iterations: copy it if you keep it.
    """
    q_words, d_words = _check_words(q_words, d_words)
    d_t = np.ascontiguousarray(d_words.T)  # (W, N) word-major
    n = d_words.shape[0]
    out = np.empty((chunk, n), distance_dtype(64 * q_words.shape[1]))
    scratch = np.empty((chunk, n), np.uint64)
    for start in range(0, q_words.shape[0], chunk):
        block = q_words[start:start + chunk]
        yield start, hamming_block(block, d_t, out, scratch)


def hamming_matrix(q_words: np.ndarray, d_words: np.ndarray, max_elements: int = 50_000_000) -> np.ndarray:
    """Full (Q, N) distance matrix, for small inputs only (tests, interactive use).

    Refuses more than ``max_elements`` entries: evaluation reduces each chunk instead (see metrics).
    """
    q_words, d_words = _check_words(q_words, d_words)
    if q_words.shape[0] * d_words.shape[0] > max_elements:
        raise ConfigError(f"hamming_matrix of {q_words.shape[0]} x {d_words.shape[0]} exceeds {max_elements} "
                          "entries; use iter_hamming or topk instead")
    out = np.empty((q_words.shape[0], d_words.shape[0]), distance_dtype(64 * q_words.shape[1]))
    for start, block in iter_hamming(q_words, d_words):
        out[start:start + block.shape[0]] = block
    return out


def _topk_numpy(q_words: np.ndarray, d_words: np.ndarray, k: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    n = d_words.shape[0]
    idx_out = np.empty((q_words.shape[0], k), np.int64)
    dist_out = np.empty((q_words.shape[0], k), np.int32)
    index = np.arange(n, dtype=np.uint64)
    key = np.empty((chunk, n), np.uint64)
    for start, block in iter_hamming(q_words, d_words, chunk):
        m = block.shape[0]
        kb = key[:m]
        np.left_shift(block, np.uint64(32), out=kb, casting="unsafe")  # (m, N) distance in the high bits
        np.bitwise_or(kb, index, out=kb)  # index breaks ties: stable order
        if k < n:
            part = np.argpartition(kb, k - 1, axis=1)[:, :k]
            top = np.take_along_axis(kb, part, axis=1)
        else:
            top = kb.copy()
        top.sort(axis=1)
        idx_out[start:start + m] = (top & np.uint64(0xFFFFFFFF)).astype(np.int64)
        dist_out[start:start + m] = (top >> np.uint64(32)).astype(np.int32)
    return idx_out, dist_out


def _topk_numba(q_words: np.ndarray, d_words: np.ndarray, k: int, threads: int | None) -> tuple[np.ndarray, np.ndarray]:
    from stages.evaluate import _kernels

    idx = np.empty((q_words.shape[0], k), np.int64)
    dist = np.empty((q_words.shape[0], k), np.int32)
    d_t = np.ascontiguousarray(d_words.T)  # (W, N) word-major
    bits = 64 * q_words.shape[1]  # padding bits are 0 on both sides: distances stay <= real bits

    def work(lo: int, hi: int) -> None:
        _kernels.topk_stable(q_words[lo:hi], d_t, bits, k, idx[lo:hi], dist[lo:hi])

    _kernels.run_parallel(work, q_words.shape[0], threads)
    return idx, dist


def _topk_faiss(q_words: np.ndarray, d_words: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    index = faiss.IndexBinaryFlat(64 * d_words.shape[1])
    index.add(d_words.view(np.uint8))  # (N, 8 W) bytes, same bits as the words
    dist, idx = index.search(q_words.view(np.uint8), k)
    return idx.astype(np.int64, copy=False), dist.astype(np.int32, copy=False)


def topk(q_words: np.ndarray, d_words: np.ndarray, k: int, *, backend: str = "numpy",
         chunk: int = 16, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k database rows per query, ordered by (Hamming distance, database index).

    q_words (Q, W), d_words (N, W) packed uint64 -> (indices (Q, k) int64, distances (Q, k) int32).
    ``threads`` (numba backend): worker threads, default all CPUs this process may use.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown Hamming backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    q_words, d_words = _check_words(q_words, d_words)
    n = d_words.shape[0]
    if not 1 <= k <= n:
        raise ConfigError(f"top-k needs 1 <= k <= database size ({n}), got k={k}")
    if backend == "numba":
        return _topk_numba(q_words, d_words, k, threads)
    if backend == "faiss":
        return _topk_faiss(q_words, d_words, k)
    return _topk_numpy(q_words, d_words, k, chunk)
