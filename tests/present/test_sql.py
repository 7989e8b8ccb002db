from pathlib import Path

import duckdb
import numpy as np
import pytest

from pipeline.ground.errors import ConfigError
from pipeline.ground.store.codes import pack_codes, write_codes
from stages.evaluate.hamming import topk
from stages.present.sql import HAMMING_TOPK_SQL, hamming_topk_sql
from tests.evaluate.helpers import correlated


def test_sql_uses_xor_function_not_operators():
    assert "xor(" in HAMMING_TOPK_SQL and "^" not in HAMMING_TOPK_SQL and "#" not in HAMMING_TOPK_SQL


@pytest.mark.parametrize("bits", [16, 128])
def test_sql_topk_equals_numpy_topk(tmp_path: Path, bits: int):
    rng = np.random.default_rng(bits)
    q, d, _, _ = correlated(rng, 6, 500, bits)
    d[7] = d[2]  # a guaranteed tie
    ids = np.arange(1000, 1500)  # ascending with row order, as the database split is written
    write_codes(tmp_path, "database", ids, d, -d, {"bits": bits})
    want_idx, want_dist = topk(pack_codes(q), pack_codes(d), 40)
    con = duckdb.connect()
    for i in range(q.shape[0]):
        got = hamming_topk_sql(con, tmp_path, "database", "image", q[i], 40)
        assert [g[0] for g in got] == (ids[want_idx[i]]).tolist()
        assert [g[1] for g in got] == want_dist[i].tolist()
    # text codes are the negated image codes, so the negated query gives the same distances (packed words here)
    got = hamming_topk_sql(con, tmp_path, "database", "text", pack_codes(-q[:1])[0], 5)
    assert [g[1] for g in got] == want_dist[0, :5].tolist()


def test_sql_unknown_modality(tmp_path: Path):
    with pytest.raises(ConfigError, match="modality"):
        hamming_topk_sql(duckdb.connect(), tmp_path, "database", "audio", np.ones(16), 3)
