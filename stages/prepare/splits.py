"""Train / query / database (/ validation) splits: the DJSRH-family per-label split and a random split.

Protocols:

* ``djsrh-mirflickr`` / ``djsrh-nuswide``: the per-label split of DJSRH ``datasets.py``,
  with the (Q0, T0, Q1, T1) counts (160, 400, 80, 200) and (200, 500, 200, 500) and 5,000 train.
* ``random``: a seeded random query set, database = the rest, train drawn from the database.

In every protocol ``train ⊂ database`` and ``query ∩ database = ∅``. Every protocol also draws a
``validation`` split for the choices a method makes (a ridge, a graph, a convergence check), so that no
choice ever reads the query set: it is drawn from the database minus train (``validation ⊂ database``,
``validation ∩ train = ∅``), like train it stays in the retrieval database so the test protocol is
the papers' unchanged, and by default it has as many items as the query split. Validation scores rank
validation queries against the training split (disjoint from them), never against the query set.

Random numbers: ``djsrh_split`` draws from ``numpy.random.RandomState(seed)``, the legacy generator the
reference code seeds with ``np.random.seed(1)`` (DSAH, CCAH), in the reference's call order, so its
draws are the reference's for the same seed if nothing else drew first [not checked against their
index files, which are not published]. ``random_split`` and the validation carve use
``numpy.random.default_rng`` (PCG64), seeded with ``seed`` and ``[seed, 1]``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.ground.item_table import ItemTable
from pipeline.ground.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DJSRHCounts:
    """Per-label counts: label 0 gives (q_first, t_first), each later one (q_rest, t_rest)."""

    q_first: int
    t_first: int
    q_rest: int
    t_rest: int
    train_size: int  # train is topped up to this size from the database

    def nominal_query(self, n_labels: int) -> int:
        return self.q_first + (n_labels - 1) * self.q_rest

    def nominal_train(self, n_labels: int) -> int:
        return self.t_first + (n_labels - 1) * self.t_rest


DJSRH_PRESETS = {
    "djsrh-mirflickr": DJSRHCounts(160, 400, 80, 200, 5000),  # DJSRH datasets.py, MIRFlickr: 160 + 23·80 = 2000
    "djsrh-nuswide": DJSRHCounts(200, 500, 200, 500, 5000),  # DJSRH datasets.py, NUS-WIDE: 200 + 9·200 = 2000
}
PROTOCOLS = (*DJSRH_PRESETS, "random")
#: Standard sizes of the random protocol: UCMFH's MS-COCO split, 2,000 query / 5,000 train.
RANDOM_QUERY, RANDOM_TRAIN = 2000, 5000
#: Scaled sizes for sets too small for the standard ones [inferred: no paper covers small sets].
SCALED_QUERY_FRACTION = 0.1  # query = 10% of the items
SCALED_TRAIN_FRACTION = 0.5  # train = at most half of the database (after validation)

_DEFAULT_PROTOCOL = {"mirflickr": "djsrh-mirflickr", "nuswide": "djsrh-nuswide"}


@dataclass
class SplitResult:
    """Item ids per split, with the protocol, the sizes actually drawn and notes on any substitution."""

    splits: dict[str, np.ndarray]  # split -> item ids (int64), in split order
    protocol: str
    seed: int
    sizes: dict[str, int]
    notes: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)  # the counts/sizes the draw used

    def to_meta(self) -> dict[str, Any]:
        """JSON-able summary for the split manifest and the run report."""
        return {"protocol": self.protocol, "seed": self.seed, "sizes": self.sizes, "notes": self.notes,
                "params": self.params}


def djsrh_split(labels: np.ndarray, seed: int, q_first: int = 160, t_first: int = 400, q_rest: int = 80,
                t_rest: int = 200, train_size: int = 5000) -> dict[str, np.ndarray]:
    """The DJSRH-family per-label split as ROW POSITIONS ``{query, database, train}``.

    For each label column l in order, its positive rows are permuted; the first label gives
    ``q_first`` queries then ``t_first`` train rows, every later label takes ``q_rest`` then ``t_rest``
    from its rows not yet in query or train (permuted order kept). database = all rows not in query
    (ascending); train is then topped up to ``train_size`` with randomly permuted database rows not
    yet in train. The reference tops up on MIRFlickr only; with the NUS-WIDE counts train already has
    5,000 rows so the top-up draws nothing. Extension: a train set longer than ``train_size``
    (impossible with the reference counts) is cut to its first ``train_size`` rows.
    The query set can come out smaller than nominal when rare labels run out.

    labels: (n, L) 0/1. Returns int64 arrays; query and train in draw order, database ascending.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ConfigError(f"djsrh_split needs an (n, L) label matrix, got shape {labels.shape}")
    n, n_labels = labels.shape
    rs = np.random.RandomState(seed)  # legacy generator, as the reference's np.random.seed(1)
    taken = np.zeros(n, dtype=bool)  # in query or train
    query: list[np.ndarray] = []
    train: list[np.ndarray] = []
    for col in range(n_labels):
        idx = rs.permutation(np.flatnonzero(labels[:, col] == 1))
        q_count, t_count = (q_first, t_first) if col == 0 else (q_rest, t_rest)
        rem = idx[~taken[idx]]  # for col 0 nothing is taken yet, as in the reference
        query.append(rem[:q_count])
        train.append(rem[q_count:q_count + t_count])
        taken[query[-1]] = True
        taken[train[-1]] = True
    query_rows = np.concatenate(query).astype(np.int64)
    train_rows = np.concatenate(train).astype(np.int64)
    in_query = np.zeros(n, dtype=bool)
    in_query[query_rows] = True
    database_rows = np.flatnonzero(~in_query).astype(np.int64)
    if len(train_rows) < train_size:
        in_train = np.zeros(n, dtype=bool)
        in_train[train_rows] = True
        pick = database_rows[~in_train[database_rows]]  # ascending, as the reference's list scan
        extra = rs.permutation(pick)[:train_size - len(train_rows)]
        train_rows = np.concatenate([train_rows, extra.astype(np.int64)])
    elif len(train_rows) > train_size:
        train_rows = train_rows[:train_size]
    return {"query": query_rows, "database": database_rows, "train": train_rows}


def djsrh_nuswide_split(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """``djsrh_split`` with the NUS-WIDE counts (200, 500, 200, 500) and 5,000 train."""
    c = DJSRH_PRESETS["djsrh-nuswide"]
    return djsrh_split(labels, seed, c.q_first, c.t_first, c.q_rest, c.t_rest, c.train_size)


def random_split(n: int, seed: int, n_query: int, n_train: int) -> dict[str, np.ndarray]:
    """Random ROW POSITIONS: ``n_query`` queries, database = the rest, ``n_train`` drawn from the database.

    Uses ``numpy.random.default_rng(seed)``. All three arrays are ascending.
    """
    if n_query < 1 or n_train < 1 or n_query + n_train > n:
        raise ConfigError(f"random split of {n} items: n_query={n_query} and n_train={n_train} must be >= 1 "
                          f"and n_train <= the {n - n_query} database items")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    query = np.sort(perm[:n_query])
    database = np.sort(perm[n_query:])
    train = np.sort(rng.choice(database, size=n_train, replace=False))
    return {"query": query.astype(np.int64), "database": database.astype(np.int64), "train": train.astype(np.int64)}


def default_protocol(dataset: str) -> str:
    """The protocol the papers use for a dataset source: DJSRH per-label for MIRFlickr and NUS-WIDE, else random."""
    from stages.prepare.datasets import get_dataset

    try:
        name = get_dataset(dataset).name
    except KeyError as exc:
        raise ConfigError(str(exc.args[0])) from None
    return _DEFAULT_PROTOCOL.get(name, "random")


def make_splits(table: ItemTable, *, protocol: str, seed: int, n_query: int | None = None,
                n_train: int | None = None, n_validation: int | None = None) -> SplitResult:
    """Draw the splits of ``table`` and return them as ITEM IDS in a SplitResult.

    ``n_query``/``n_train`` None mean the protocol's standard sizes (DJSRH: the per-label counts,
    nominally 2,000 / 5,000; random: 2,000 / 5,000). When the standard sizes do not fit the data,
    each size left None is scaled (query = 10% of the items, train = min(standard, half the
    database)), logged and written to ``notes``; a size given explicitly that does not fit raises
    ConfigError. For DJSRH protocols a query size other than nominal scales the per-label query
    counts by query/nominal (each at least 1), and a train size below nominal scales the train
    counts likewise; a larger one keeps them and the top-up fills the rest. ``n_validation`` None
    means as many as the query split, capped by the database items outside train (the cap is logged);
    an empty validation split is refused.
    """
    _check_request(protocol, n_query, n_train, n_validation)
    n, n_labels = len(table), table.labels.shape[1]
    counts = DJSRH_PRESETS.get(protocol)
    if counts is not None and n_labels == 0:
        raise ConfigError(f"protocol {protocol!r} draws queries per label, but {table.dataset!r} has no labels; "
                          f"use protocol 'random'")
    notes: list[str] = []
    q, t, v, scaled = _fitted_sizes(table.dataset, n, counts.nominal_query(n_labels) if counts else RANDOM_QUERY,
                            counts.train_size if counts else RANDOM_TRAIN, n_query, n_train, n_validation, notes)
    params: dict[str, Any] = {"n_query": q, "n_train": t, "n_validation": v}
    if counts is not None:
        rows = _djsrh_rows(table.labels, counts, seed, q, t, params, notes)
    else:
        params["generator"] = "numpy.random.default_rng"
        rows = random_split(n, seed, q, t)
    rows = _draw_validation(rows, v, seed, n)
    if scaled:
        _say_scaled(notes, scaled, q, t, rows, n_query, n_train)
    ids = np.asarray(table.item_id, dtype=np.int64)
    splits = {name: ids[r] for name, r in rows.items()}
    sizes = {name: int(len(r)) for name, r in splits.items()}
    log.info("splits (%s, seed %d): %s", protocol, seed, sizes)
    return SplitResult(splits=splits, protocol=protocol, seed=int(seed), sizes=sizes, notes=notes, params=params)


def _say_scaled(notes: list[str], scaled: str, q: int, t: int, rows: dict[str, np.ndarray], n_query: int | None,
                n_train: int | None) -> None:
    """The scaling note, first, with the sizes drawn, which the split file holds (DJSRH's per-label draw can
    give more or fewer queries than its target); the draw's own note about that is folded into it."""
    got_q, got_t = len(rows["query"]), len(rows["train"])
    asked = lambda size: " (as asked)" if size is not None else ""  # noqa: E731
    target = "" if (got_q, got_t) == (q, t) else f" (the per-label draw's target: query {q}, train {t})"
    notes[:] = ([f"{scaled}: scaled to query {got_q}{asked(n_query)}, train {got_t}{asked(n_train)}{target}"]
                + [n for n in notes if not n.startswith("the per-label split gave")])


def _check_request(protocol: str, n_query: int | None, n_train: int | None, n_validation: int | None) -> None:
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown split protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    for name, value in (("n_query", n_query), ("n_train", n_train), ("n_validation", n_validation)):
        if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
            raise ConfigError(f"{name}={value!r}: expected an integer >= 1")


def _fitted_sizes(dataset: str, n: int, std_query: int, std_train: int, n_query: int | None, n_train: int | None,
                  n_validation: int | None, notes: list[str]) -> tuple[int, int, int, str | None]:
    """(query, train, validation) sizes: as asked, else the standard ones, scaled down when they do not fit;
    and, when scaled, the start of the note that says so (finished by ``_say_scaled`` once drawn)."""
    q = int(n_query) if n_query is not None else std_query
    t = int(n_train) if n_train is not None else std_train
    v = int(n_validation) if n_validation is not None else 0  # the default is sized once train is known
    scaled = None
    if q + t + v > n:
        if n_query is None:
            q = max(1, int(round(SCALED_QUERY_FRACTION * n)))
        if n_train is None:
            t = max(0, min(std_train, int(SCALED_TRAIN_FRACTION * (n - q - v))))
        if q + t + v > n or t < 1 or n - q - v < 1:
            raise ConfigError(
                f"splits for {dataset!r} ({n} items): query {q} + train {t} + validation "
                f"{v if n_validation is not None else '(at least 1)'} do not fit "
                f"(train and validation are drawn from the {n - q} database items and must be disjoint); "
                f"ask for a smaller n_query, n_train or n_validation"
            )
        scaled = f"{n} items are too few for the standard {std_query} query / {std_train} train"
    if n_validation is None:
        v = min(q, n - q - t)
        if v < q:
            notes.append(f"validation: {v} items (all the database items outside train), not {q}")
        if v < 1:
            raise ConfigError(f"splits for {dataset!r} ({n} items): query {q} + train {t} leave no database "
                              f"item outside train for a validation split; ask for a smaller n_train")
    return q, t, v, scaled


def _djsrh_rows(labels: np.ndarray, counts: DJSRHCounts, seed: int, q: int, t: int, params: dict[str, Any],
                notes: list[str]) -> dict[str, np.ndarray]:
    """DJSRH's per-label draw at the fitted sizes; the counts used go into ``params``."""
    n_labels = labels.shape[1]
    used = _scaled_counts(counts, n_labels, q, t)
    params.update(q_first=used.q_first, t_first=used.t_first, q_rest=used.q_rest, t_rest=used.t_rest,
                  train_size=used.train_size, generator="numpy.random.RandomState")
    if used != counts:
        notes.append(f"per-label counts scaled from {counts} to {used}")
    rows = djsrh_split(labels, seed, used.q_first, used.t_first, used.q_rest, used.t_rest, used.train_size)
    nominal = used.nominal_query(n_labels)
    if len(rows["query"]) != nominal:
        note = (f"the per-label split gave {len(rows['query'])} queries, not the nominal {nominal}: rare labels "
                f"ran out of unused items")
        notes.append(note)  # the caller (stages.prepare) warns with every note, once
    return rows


def _scaled_counts(counts: DJSRHCounts, n_labels: int, n_query: int, n_train: int) -> DJSRHCounts:
    """Per-label counts for a target query/train size (the preset itself when the sizes are nominal)."""
    fq = n_query / counts.nominal_query(n_labels)
    q_first, q_rest = counts.q_first, counts.q_rest
    if fq != 1.0:
        q_first, q_rest = max(1, round(counts.q_first * fq)), max(1, round(counts.q_rest * fq))
    ft = n_train / counts.nominal_train(n_labels)
    t_first, t_rest = counts.t_first, counts.t_rest
    if ft < 1.0:
        t_first, t_rest = max(1, round(counts.t_first * ft)), max(1, round(counts.t_rest * ft))
    return DJSRHCounts(q_first, t_first, q_rest, t_rest, n_train)


def _draw_validation(rows: dict[str, np.ndarray], n_validation: int, seed: int, n: int) -> dict[str, np.ndarray]:
    """Draw ``n_validation`` random database rows that are not in train as the ``validation`` split.

    Query and train are drawn first and are not touched, so adding validation changes no test result.
    """
    in_train = np.zeros(n, dtype=bool)
    in_train[rows["train"]] = True
    candidates = rows["database"][~in_train[rows["database"]]]
    if len(candidates) < n_validation:
        raise ConfigError(f"n_validation={n_validation}, but only {len(candidates)} database items are outside "
                          f"train; ask for fewer")
    rng = np.random.default_rng([seed, 1])
    validation = np.sort(rng.choice(candidates, size=n_validation, replace=False)).astype(np.int64)
    overlap = {name: int(np.isin(validation, rows[name]).sum()) for name in ("query", "train")}
    if any(overlap.values()):  # cannot happen by construction; a guard against a future edit
        raise ConfigError(f"validation split overlaps {overlap} (sizes: validation {n_validation}, "
                          f"query {len(rows['query'])}, train {len(rows['train'])}); this is a bug")
    return {**rows, "validation": validation}
