"""DuckDB SQL over run artifacts: Hamming top-k in SQL, and cross-run report queries.

DuckDB facts this relies on (checked with duckdb 2.0):

* XOR is the ``xor(a, b)`` function; ``a ^ b`` is exponentiation and ``a # b`` is a syntax error.
* ``bit_count(UBIGINT)`` counts set bits; a ``FixedSizeList<uint64>`` Parquet column reads as ``UBIGINT[]``.
* Relations have no ``fetchone()`` in 2.0: run SQL with ``con.execute(sql, params).fetchall()``.

Codes are packed as in ``pipeline.ground.store.codes`` (bit j of the code -> bit j mod 64 of word j // 64),
so the Hamming distance of any code length is the sum over words of ``bit_count(xor(word, query_word))``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.ground.errors import ConfigError, DataError
from pipeline.ground.store.codes import CODE_COLUMNS, codes_path, pack_codes

#: Top-k of one query code against a codes file, any code length. Parameters: $path (file or glob),
#: $q (the query's uint64 words, a list), $k. Ties are ordered by item_id, which equals the stable
#: (distance, database row) order of stages.evaluate.hamming when item ids ascend in database row
#: order (write_codes records that as ``item_id_ascending`` in the file metadata).
HAMMING_TOPK_SQL = """
SELECT item_id,
       list_sum(list_transform(list_zip({column}::UBIGINT[], $q::UBIGINT[]),
                               lambda w: bit_count(xor(w[1], w[2]))))::INTEGER AS hamming
FROM read_parquet($path)
ORDER BY hamming, item_id
LIMIT $k
"""

#: One metric across runs: mean, std and seeds per configuration, over the report rows registered as
#: ``rows`` (``pipeline.ground.store.cache.read_report_rows``: the union of every run's columns).
RESULTS_SQL = """
SELECT dataset, method, image_features, text_features, eval_mode, tie_rule, epochs, config_hash, device, bits, task,
       count(*) AS n_seeds, avg(value) AS mean, stddev_samp(value) AS std, list(seed ORDER BY seed) AS seeds,
       max(paper_epochs) AS paper_epochs, bool_or(supervised) AS supervised
FROM rows
WHERE metric = $metric AND ($dataset IS NULL OR dataset = $dataset)
  AND ($run_ids IS NULL OR list_contains($run_ids, run_id))
GROUP BY ALL
ORDER BY dataset, method, image_features, text_features, eval_mode, tie_rule, epochs, config_hash, device, task, bits
"""

#: Per configuration and code length, the health of the runs' codes (``stages.evaluate.code_health``): the
#: fewest distinct database codes and the most constant bits over its seeds and modalities, and the database
#: size. Runs from before these rows were written have none and are not listed.
HEALTH_SQL = """
SELECT method, image_features, text_features, eval_mode, tie_rule, epochs, config_hash, device, bits,
       min(value) FILTER (WHERE metric = 'distinct_codes') AS distinct_codes,
       max(value) FILTER (WHERE metric = 'constant_bits') AS constant_bits,
       min(n_database) AS n_database, list(DISTINCT run_id) AS run_ids
FROM rows
WHERE metric IN ('distinct_codes', 'constant_bits') AND ($dataset IS NULL OR dataset = $dataset)
  AND ($run_ids IS NULL OR list_contains($run_ids, run_id))
GROUP BY ALL
"""

#: The same numbers pivoted to the papers' layout (rows = dataset, task, method, features and training
#: length; columns = bits). Every column that tells two configurations apart is grouped AND kept, so no cell
#: averages over feature sets or epochs, and no dataset is named, so ``-n<LIMIT>`` datasets show up too.
#: README.md's DuckDB section shows this very statement (tests/test_docs_claims.py keeps them equal).
PIVOT_SQL_EXAMPLE = """
PIVOT (SELECT dataset, task, method, image_features, text_features, epochs, bits, avg(value) AS map_at_50
       FROM read_parquet('cache/runs/*/report.parquet', union_by_name = true)
       WHERE metric = 'map@50' AND task IN ('i2t', 't2i')
       GROUP BY ALL)
ON bits USING first(map_at_50) ORDER BY ALL
"""


def hamming_topk_sql(con: Any, codes_dir: Path, split: str, modality: str, query_code: np.ndarray,
                     k: int) -> list[tuple[int, int]]:
    """Run :data:`HAMMING_TOPK_SQL` on a run's codes; returns ``[(item_id, hamming), ...]`` (k rows at most).

    con: a ``duckdb`` connection; query_code: one ±1 code ``(bits,)`` or its packed words ``(W,)`` uint64.
    """
    if modality not in CODE_COLUMNS:
        raise ConfigError(f"unknown modality {modality!r}; choose one of {', '.join(CODE_COLUMNS)}")
    path = codes_path(codes_dir, split)
    if not path.exists():
        raise DataError(f"no codes at {path}; encode the {split} split of this run first")
    code = np.asarray(query_code)
    words = code if code.dtype == np.uint64 else pack_codes(code.reshape(1, -1))[0]
    sql = HAMMING_TOPK_SQL.format(column=CODE_COLUMNS[modality])
    params = {"path": str(path), "q": [int(w) for w in words], "k": int(k)}
    return [(int(i), int(h)) for i, h in con.execute(sql, params).fetchall()]


def words_of(codes: Sequence[Sequence[int]] | np.ndarray) -> list[list[int]]:
    """±1 codes (n, bits) -> python lists of uint64 words, ready as SQL parameters."""
    return [[int(w) for w in row] for row in pack_codes(np.asarray(codes))]
