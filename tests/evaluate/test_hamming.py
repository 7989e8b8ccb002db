import numpy as np
import pytest

from pipeline.ground.errors import ConfigError, DataError
from pipeline.ground.store.codes import pack_codes
from stages.evaluate.hamming import hamming_matrix, iter_hamming, topk
from tests.evaluate.helpers import brute_distances, brute_order, correlated, random_codes


@pytest.mark.parametrize("bits", [16, 64, 128, 130, 300])
def test_distances_match_brute_force(bits):
    rng = np.random.default_rng(bits)
    q, d = random_codes(rng, 23, bits), random_codes(rng, 141, bits)
    got = hamming_matrix(pack_codes(q), pack_codes(d))
    assert np.array_equal(got, brute_distances(q, d))


def test_iter_hamming_chunks_cover_all_queries():
    rng = np.random.default_rng(0)
    q, d = random_codes(rng, 10, 64), random_codes(rng, 50, 64)
    starts = []
    for start, block in iter_hamming(pack_codes(q), pack_codes(d), chunk=4):
        starts.append(start)
        assert np.array_equal(block, brute_distances(q[start:start + block.shape[0]], d))
    assert starts == [0, 4, 8]


def test_hamming_matrix_refuses_large_outputs():
    w = np.zeros((10, 1), np.uint64)
    with pytest.raises(ConfigError, match="iter_hamming"):
        hamming_matrix(w, w, max_elements=50)


@pytest.mark.parametrize("backend", ["numpy", "numba", "faiss"])
@pytest.mark.parametrize("bits", [16, 64, 130])
def test_topk_is_stable_and_exact(backend, bits):
    rng = np.random.default_rng(bits)
    q, d, _, _ = correlated(rng, 17, 400, bits)  # label-correlated: many equal distances
    d[10] = d[3]  # exact duplicates of a database code: tie must keep index order
    d[200] = d[3]
    idx, dist = topk(pack_codes(q), pack_codes(d), 60, backend=backend)
    order = brute_order(q, d)[:, :60]
    assert np.array_equal(idx, order)
    assert np.array_equal(dist, np.take_along_axis(brute_distances(q, d), order, axis=1))


@pytest.mark.parametrize("backend", ["numpy", "numba", "faiss"])
def test_topk_whole_database_and_all_ties(backend):
    q = np.ones((2, 64), np.int8)
    d = np.ones((30, 64), np.int8)  # every distance is 0
    idx, dist = topk(pack_codes(q), pack_codes(d), 30, backend=backend)
    assert np.array_equal(idx, np.tile(np.arange(30), (2, 1))) and not dist.any()


def test_faiss_ids_equal_stable_order_with_heavy_ties():
    # regression guard: faiss IndexBinaryFlat tie order is an implementation property, not a contract
    rng = np.random.default_rng(7)
    q, d, _, _ = correlated(rng, 40, 3000, 16)
    ours, _ = topk(pack_codes(q), pack_codes(d), 100, backend="numpy")
    theirs, _ = topk(pack_codes(q), pack_codes(d), 100, backend="faiss")
    assert np.array_equal(ours, theirs)


def test_topk_errors():
    w = np.zeros((3, 1), np.uint64)
    with pytest.raises(ConfigError, match="backend"):
        topk(w, w, 1, backend="gpu")
    with pytest.raises(ConfigError, match="k <= database"):
        topk(w, w, 4)
    with pytest.raises(DataError, match="same W"):
        topk(w, np.zeros((3, 2), np.uint64), 1)
