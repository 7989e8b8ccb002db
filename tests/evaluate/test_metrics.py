import numpy as np
import pytest

from pipeline.ground.errors import ConfigError, DataError
from stages.evaluate.metrics import (
    map_at_k, pr_curve, precision_at_k, precision_within_radius, ranking_stats,
)
from tests.evaluate.helpers import brute_metrics, brute_relevance, correlated

# --- a hand-computed case -------------------------------------------------------------------------
# 4-bit codes. Query 0 = ++++ has distances (0, 1, 0, 2, 4) to the database; the stable order is
# d0, d2, d1, d3, d4 with relevance 0, 1, 1, 0, 1 (labels below), so relevant ranks are 2, 3, 5.
# Query 1 shares no label with any item (AP 0, still counted in the mean).
DB = np.array([[1, 1, 1, 1], [-1, 1, 1, 1], [1, 1, 1, 1], [-1, -1, 1, 1], [-1, -1, -1, -1]], np.int8)
DB_LABELS = np.array([[0, 1, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 0]])
Q = np.array([[1, 1, 1, 1], [-1, -1, -1, -1]], np.int8)
Q_LABELS = np.array([[1, 0, 0], [0, 0, 1]])


def test_hand_computed_map():
    ap_all = (1 / 2 + 2 / 3 + 3 / 5) / 3
    scores = map_at_k(Q, DB, Q_LABELS, DB_LABELS, None)
    assert scores.per_query == pytest.approx([ap_all, 0.0])
    assert scores.mean == pytest.approx(ap_all / 2)  # the no-relevant query counts as 0
    assert map_at_k(Q, DB, Q_LABELS, DB_LABELS, 2).per_query == pytest.approx([1 / 2, 0.0])
    assert map_at_k(Q, DB, Q_LABELS, DB_LABELS, 3).per_query == pytest.approx([(1 / 2 + 2 / 3) / 2, 0.0])
    # K=1: the top item (d0, tie winner by index) is irrelevant -> AP@1 = 0
    assert map_at_k(Q, DB, Q_LABELS, DB_LABELS, 1).per_query == pytest.approx([0.0, 0.0])


def test_hand_computed_tie_rule_matters():
    # swapping d0 and d2 (both at distance 0) moves the relevant tie winner first: ranks 1, 3, 5
    swapped = DB[[2, 1, 0, 3, 4]]
    labels = DB_LABELS[[2, 1, 0, 3, 4]]
    got = map_at_k(Q[:1], swapped, Q_LABELS[:1], labels, None).mean
    assert got == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)


def test_hand_computed_precision():
    p = precision_at_k(Q, DB, Q_LABELS, DB_LABELS, [1, 2, 3, 5, 10])
    assert p.per_query[0] == pytest.approx([0, 1 / 2, 2 / 3, 3 / 5, 3 / 10])  # K > N still divides by K
    assert p.per_query[1] == pytest.approx([0, 0, 0, 0, 0])
    r2 = precision_within_radius(Q, DB, Q_LABELS, DB_LABELS, r=2)
    assert r2.per_query == pytest.approx([2 / 4, 0.0]) and r2.n_empty == 0
    # radius 0 for a query with no code at distance 0: nothing retrieved -> precision 0, counted as empty
    lonely = np.array([[1, -1, 1, -1]], np.int8)
    r0 = precision_within_radius(lonely, DB, Q_LABELS[:1], DB_LABELS, r=0)
    assert r0.per_query.tolist() == [0.0] and r0.n_empty == 1


def test_hand_computed_pr_curve():
    pr = pr_curve(Q[:1], DB, Q_LABELS[:1], DB_LABELS)
    # radius:    0    1    2    3    4  -> retrieved 2, 3, 4, 4, 5; relevant 1, 2, 2, 2, 3 (of 3)
    assert pr.precision == pytest.approx([1 / 2, 2 / 3, 2 / 4, 2 / 4, 3 / 5])
    assert pr.recall == pytest.approx([1 / 3, 2 / 3, 2 / 3, 2 / 3, 1])
    assert pr.n_retrieving.tolist() == [1, 1, 1, 1, 1]


@pytest.mark.parametrize("bits", [8, 16, 64, 130])
def test_metrics_match_brute_force(bits):
    rng = np.random.default_rng(bits)
    q, d, ql, dl = correlated(rng, 25, 300, bits)
    ks = (1, 7, 50, 300, 500)
    want = brute_metrics(q, d, ql, dl, ks)
    stats = ranking_stats(q, d, ql, dl, ks, full=True)
    assert np.allclose(stats.ap_k, want["ap_k"], atol=1e-12)
    assert np.allclose(stats.ap_all, want["ap_all"], atol=1e-12)
    fast = ranking_stats(q, d, ql, dl, ks, full=False)
    assert np.allclose(fast.ap_k, want["ap_k"], atol=1e-12) and np.array_equal(fast.hits_k, stats.hits_k)
    assert np.allclose(precision_at_k(q, d, ql, dl, ks).per_query, want["p_k"])
    for k in (7, 50, None):
        col = want["ap_all"] if k is None else want["ap_k"][:, ks.index(k)]
        assert map_at_k(q, d, ql, dl, k).mean == pytest.approx(col.mean(), abs=1e-12)


@pytest.mark.parametrize("bits", [16, 64])
def test_radius_and_pr_match_brute_force(bits):
    rng = np.random.default_rng(100 + bits)
    q, d, ql, dl = correlated(rng, 20, 250, bits)
    want = brute_metrics(q, d, ql, dl, ())
    dist, rel = want["dist"], want["rel"]
    for r in (0, 2, bits // 4):
        inside = dist <= r
        n_in = inside.sum(axis=1)
        per = np.array([rel[i][inside[i]].mean() if n_in[i] else 0.0 for i in range(len(q))])
        got = precision_within_radius(q, d, ql, dl, r)
        assert np.allclose(got.per_query, per) and got.n_empty == int((n_in == 0).sum())
    pr = pr_curve(q, d, ql, dl)
    for r in range(bits + 1):
        inside = dist <= r
        n_in = inside.sum(axis=1)
        has = n_in > 0
        p = [rel[i][inside[i]].mean() for i in range(len(q)) if has[i]]
        rec = [rel[i][inside[i]].sum() / rel[i].sum() for i in range(len(q)) if rel[i].sum()]
        assert pr.n_retrieving[r] == has.sum()
        assert (np.isnan(pr.precision[r]) and not p) or pr.precision[r] == pytest.approx(np.mean(p))
        assert pr.recall[r] == pytest.approx(np.mean(rec))


def _published_loop(q, d, ql, dl, topk):
    """calculate_top_map as published (float32 codes, default np.argsort), rewritten for the test."""
    qf, df = q.astype(np.float32), d.astype(np.float32)
    total = 0.0
    for i in range(q.shape[0]):
        gnd = (ql[i] @ dl.T > 0).astype(np.float32)
        hamm = 0.5 * (q.shape[1] - qf[i] @ df.T)
        gnd = gnd[np.argsort(hamm)][:topk]
        tsum = int(gnd.sum())
        if tsum == 0:
            continue
        count = np.linspace(1, tsum, tsum)
        where = np.asarray(np.where(gnd == 1)) + 1.0
        total += np.mean(count / where)
    return total / q.shape[0]


def test_reference_tie_rule_reproduces_published_loop():
    rng = np.random.default_rng(5)
    q, d, ql, dl = correlated(rng, 30, 2000, 16)
    for k in (50, 2000):
        got = map_at_k(q, d, ql, dl, k, tie="reference").mean
        assert got == pytest.approx(_published_loop(q, d, ql, dl, k), abs=1e-12)
    # radius statistics do not depend on the tie rule
    ref = ranking_stats(q, d, ql, dl, (50,), tie="reference")
    stable = ranking_stats(q, d, ql, dl, (50,))
    assert np.array_equal(ref.cnt, stable.cnt) and np.array_equal(ref.rcnt, stable.rcnt)


def test_relevance_is_shared_label():
    rng = np.random.default_rng(9)
    _, _, ql, dl = correlated(rng, 5, 40, 16, n_labels=70)  # two label words
    q = np.ones((5, 16), np.int8)
    d = np.ones((40, 16), np.int8)  # all distances 0: P@40 is the share of relevant items
    p = precision_at_k(q, d, ql, dl, [40]).per_query[:, 0]
    assert np.allclose(p, brute_relevance(ql, dl).mean(axis=1))


def test_input_errors():
    with pytest.raises(ConfigError, match="tie rule"):
        map_at_k(Q, DB, Q_LABELS, DB_LABELS, 5, tie="quick")
    with pytest.raises(DataError, match="bits"):
        map_at_k(Q[:, :3], DB, Q_LABELS, DB_LABELS, 5)
    with pytest.raises(DataError, match="rows"):
        map_at_k(Q, DB, Q_LABELS[:1], DB_LABELS, 5)
    with pytest.raises(DataError, match="multi-hot"):
        map_at_k(Q, DB, Q_LABELS * 2, DB_LABELS, 5)
    with pytest.raises(ConfigError, match=">= 1"):
        map_at_k(Q, DB, Q_LABELS, DB_LABELS, 0)


def test_thread_count_does_not_change_results():
    rng = np.random.default_rng(11)
    q, d, ql, dl = correlated(rng, 13, 500, 32)
    one = ranking_stats(q, d, ql, dl, (5, 60), threads=1)
    many = ranking_stats(q, d, ql, dl, (5, 60), threads=3)  # 12 ranges over 13 queries
    for a, b in ((one.ap_all, many.ap_all), (one.ap_k, many.ap_k), (one.cnt, many.cnt), (one.hits_k, many.hits_k)):
        assert np.array_equal(a, b)
    fast = ranking_stats(q, d, ql, dl, (60,), full=False, threads=4).ap_k[:, 0]
    assert np.allclose(fast, one.ap_k[:, 1], rtol=0, atol=1e-12)  # summed in rank vs index order


def test_query_ranges_cover_every_query_once():
    from stages.evaluate._kernels import query_ranges

    for n, threads in ((0, 2), (1, 2), (7, 2), (100, 3)):
        ranges = query_ranges(n, threads)
        covered = [i for lo, hi in ranges for i in range(lo, hi)]
        assert covered == list(range(n)) and len(ranges) <= max(1, 4 * threads)
