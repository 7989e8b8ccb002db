"""Binary Hamming indexes (faiss) over packed codes: which kinds, their parameters, build, search, bytes.

Kinds (all search Hamming distance over the same bytes as :mod:`stages.evaluate.hamming`):

* ``flat`` -- ``IndexBinaryFlat``: exhaustive, exact; same order as the exact top-k (distance, then row).
* ``ivf`` -- ``IndexBinaryIVF``: k-means (on the bits) into ``nlist`` lists; a query scans ``nprobe`` lists.
* ``hash`` -- ``IndexBinaryHash``: the first ``hash_bits`` bits are a bucket key; a query visits every
  bucket within ``nflip`` flipped key bits, then ranks those items by full distance.
* ``multihash`` -- ``IndexBinaryMultiHash``: ``nhash`` tables keyed on disjoint ``hash_bits``-bit slices, the
  union of their buckets within ``nflip`` flips is ranked.

Only ``flat`` is exact; the others may miss neighbours. Evaluation (mAP) never uses an index: it stays
on the exact ranking in :mod:`stages.evaluate.metrics`. An index is for interactive search
(``cmh query``) over a large collection.

Default parameters are rules of N (items) and the code length, stated in :data:`PARAMETER_RULES`;
every one can be overridden and the values used are recorded with the index.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from pipeline.ground.errors import ConfigError, DataError

KINDS = ("flat", "ivf", "hash", "multihash")

#: The rule behind each default, recorded with every index built.
PARAMETER_RULES = {
    "ivf": "nlist = round(sqrt(N)) (at most N // 39, faiss' points-per-centroid floor), k-means on a seeded "
           "sample of min(N, 40 * nlist) codes; nprobe = max(1, round(nlist / 16)) (bench_search: recall@50 "
           "0.97 at 1M realistic 64-bit codes)",
    "hash": "hash_bits = min(bits, max(1, round(log2 N) - 4)) (about 16 items per bucket); nflip = 4",
    "multihash": "nhash = 2; hash_bits = min(bits // nhash, max(1, round(log2 N) - 4)); nflip = 3",
    "flat": "exhaustive: no parameters",
}

#: Parameters each kind accepts (build-time and search-time).
PARAMETERS = {"flat": (), "ivf": ("nlist", "nprobe", "train_size", "seed"),
              "hash": ("hash_bits", "nflip"), "multihash": ("nhash", "hash_bits", "nflip")}


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ConfigError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
    return kind


def default_params(kind: str, n: int, bits: int, overrides: Mapping[str, Any] | None = None) -> dict[str, int]:
    """The parameters of ``kind`` for ``n`` codes of ``bits`` bits: the rules above, then ``overrides``."""
    check_kind(kind)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    bad = sorted(set(overrides) - set(PARAMETERS[kind]))
    if bad:
        raise ConfigError(f"index kind {kind} has no parameter(s) {', '.join(bad)}; "
                          f"it takes: {', '.join(PARAMETERS[kind]) or 'none'}")
    width = 64 * ((bits + 63) // 64)  # faiss sees the zero-padded words
    log_n = max(1, round(math.log2(max(n, 2))) - 4)
    params: dict[str, int] = {}
    if kind == "ivf":
        nlist = int(overrides.get("nlist", max(1, min(round(math.sqrt(n)), n // 39 or 1))))
        params = {"nlist": nlist, "nprobe": min(nlist, max(1, round(nlist / 16))),
                  "train_size": min(n, 40 * nlist), "seed": 1234}
    elif kind == "hash":
        hash_bits = min(bits, log_n)
        params = {"hash_bits": hash_bits, "nflip": min(4, hash_bits)}
    elif kind == "multihash":
        nhash = int(overrides.get("nhash", 2 if bits >= 2 else 1))
        hash_bits = min(max(bits // max(nhash, 1), 1), log_n)
        params = {"nhash": nhash, "hash_bits": hash_bits, "nflip": min(3, hash_bits)}
    params.update({k: int(v) for k, v in overrides.items()})
    _check_params(kind, params, n, bits, width)
    return params


def _check_params(kind: str, p: Mapping[str, int], n: int, bits: int, width: int) -> None:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ConfigError(f"index {kind}: {what} (N={n}, {bits} bits)")

    if kind == "ivf":
        need(1 <= p["nlist"] <= n, f"nlist={p['nlist']} must be between 1 and the number of codes")
        need(1 <= p["nprobe"] <= p["nlist"], f"nprobe={p['nprobe']} must be between 1 and nlist={p['nlist']}")
        need(p["nlist"] <= p["train_size"] <= n, f"train_size={p['train_size']} must be between nlist and N")
    if kind in ("hash", "multihash"):
        nhash = p.get("nhash", 1)
        need(nhash >= 1, f"nhash={nhash} must be >= 1")
        need(1 <= p["hash_bits"] and nhash * p["hash_bits"] <= bits,
             f"nhash x hash_bits = {nhash} x {p['hash_bits']} must be between 1 and the code length")
        need(0 <= p["nflip"] <= p["hash_bits"], f"nflip={p['nflip']} must be between 0 and hash_bits={p['hash_bits']}")
        need(p["hash_bits"] <= 64, f"hash_bits={p['hash_bits']}: faiss hash keys are 64-bit words, give 64 or fewer")


def _as_bytes(words: np.ndarray) -> np.ndarray:
    words = np.ascontiguousarray(words, dtype=np.uint64)
    if words.ndim != 2:
        raise DataError(f"packed codes must be (n, W) uint64, got shape {words.shape}")
    return words.view(np.uint8)  # (n, 8 W): the same bits as the words, little-endian


def build_index(words: np.ndarray, ids: np.ndarray, kind: str, params: Mapping[str, int]) -> Any:
    """A faiss binary index of ``kind`` over packed codes ``words`` (N, W), returning ``ids`` (N,) int64."""
    import faiss

    check_kind(kind)
    data = _as_bytes(words)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if ids.shape != (data.shape[0],):
        raise DataError(f"{data.shape[0]} codes but {ids.shape} ids")
    d = 8 * data.shape[1]
    if kind == "flat":
        index = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(d))
    elif kind == "ivf":
        quantizer = faiss.IndexBinaryFlat(d)
        index = faiss.IndexBinaryIVF(quantizer, d, int(params["nlist"]))  # faiss' wrapper keeps the quantizer alive
        sample = np.random.default_rng(int(params["seed"])).choice(data.shape[0], int(params["train_size"]),
                                                                   replace=False)
        index.cp.seed = int(params["seed"])
        index.train(data[np.sort(sample)])
    elif kind == "hash":
        index = faiss.IndexBinaryHash(d, int(params["hash_bits"]))
    else:  # multihash has no add_with_ids: the id map wraps it
        index = faiss.IndexBinaryIDMap(faiss.IndexBinaryMultiHash(d, int(params["nhash"]), int(params["hash_bits"])))
    index.add_with_ids(data, ids)
    set_search_params(index, kind, params)
    return index


def _inner(index: Any) -> Any:
    import faiss

    return faiss.downcast_IndexBinary(index.index) if isinstance(index, faiss.IndexBinaryIDMap) else index


def set_search_params(index: Any, kind: str, params: Mapping[str, int]) -> None:
    """Apply the search-time parameters (nprobe, nflip) to a built or loaded index."""
    inner = _inner(index)
    if kind == "ivf":
        inner.nprobe = int(params["nprobe"])
    elif kind in ("hash", "multihash"):
        inner.nflip = int(params["nflip"])


def search(index: Any, q_words: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids (Q, k) int64, distances (Q, k) int32); an approximate index that finds fewer than k items pads
    with id -1 (callers drop those)."""
    k = min(int(k), int(index.ntotal))
    if k < 1:
        raise ConfigError("the index is empty: nothing to search")
    dist, ids = index.search(_as_bytes(q_words), k)
    return ids.astype(np.int64, copy=False), dist.astype(np.int32, copy=False)


def to_bytes(index: Any) -> bytes:
    import faiss

    return faiss.serialize_index_binary(index).tobytes()


def from_bytes(data: bytes) -> Any:
    import faiss

    return faiss.deserialize_index_binary(np.frombuffer(data, dtype=np.uint8))
