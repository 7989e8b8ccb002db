"""Aligned features: row i of every requested feature column is the same item of one split.

A feature spec names an encoder and optionally some of its columns: ``alexnet`` (the encoder's
default columns for that modality), ``alexnet:cov`` or ``alexnet:cov+pool`` (those columns), and
several specs joined by ``,`` (``alexnet:pool,clip``).

There is one record, :class:`AlignedFeatures`, and one reader, :func:`read_aligned`: it yields a
split ``chunk_rows`` planned items at a time (a whole split is one chunk), reading only the shards
that cover the chunk, so a large collection never sits in memory whole. Shard ``p`` of a split holds
its planned items ``[p * shard_size, (p + 1) * shard_size)`` minus those that failed to extract. Items
missing from any requested encoder (an image that failed to decode, say) are dropped from every
modality of the chunk, and their ids are kept in ``dropped``. Members whose pair the item table dropped
after the splits were drawn (an image that failed in an image encoder's pass) are skipped, whatever
features an encoder wrote for them before; the table's ``skipped`` list records them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np

from pipeline.ground.errors import CacheError
from pipeline.ground.item_table import ItemTable
from pipeline.ground.store.items import extract_command
from pipeline.ground.store.layout import PHYSICAL_SPLITS, CacheLayout
from pipeline.ground.store.features import read_errors
from pipeline.ground.store.parquet import arrow_to_vectors, id_column_problem, read_table, vector_column_problem


class DatasetCache(Protocol):
    """What the reader needs of a cached dataset (``pipeline.ground.store.cache.DatasetCache``)."""

    layout: CacheLayout
    name: str

    @property
    def items(self) -> ItemTable: ...

    @property
    def items_meta(self) -> dict[str, Any]: ...

    @property
    def splits(self) -> dict[str, np.ndarray]: ...

    @property
    def planned_splits(self) -> dict[str, np.ndarray]: ...

    @property
    def splits_fingerprint(self) -> str: ...

    def manifest(self, encoder: str) -> dict[str, Any]: ...

    def encoders(self) -> list[str]: ...


@dataclass(frozen=True)
class FeatureRef:
    encoder: str
    column: str

    @property
    def key(self) -> str:
        return f"{self.encoder}:{self.column}"


@dataclass
class AlignedFeatures:
    """Items of one split in split order; row i of every array is the same item.

    ``image``/``text`` map ``encoder:column`` to (n, d) float32 in the order they were asked for; a
    modality that was not asked for is an empty dict. ``labels`` is (n, L) uint8 (zero columns for
    features that come from outside the cache, e.g. a typed query).
    """

    split: str
    item_id: np.ndarray  # (n,) int64
    image: dict[str, np.ndarray]
    text: dict[str, np.ndarray]
    labels: np.ndarray
    dropped: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # planned ids missing somewhere

    def __len__(self) -> int:
        return int(self.item_id.shape[0])

    @property
    def image_matrix(self) -> np.ndarray:
        return _concat(self.image, len(self))

    @property
    def text_matrix(self) -> np.ndarray:
        return _concat(self.text, len(self))


def _concat(parts: dict[str, np.ndarray], n: int) -> np.ndarray:
    if not parts:
        return np.zeros((n, 0), np.float32)
    return np.concatenate(list(parts.values()), axis=1)


def canonical_feature_spec(spec: str, encoder_name: Callable[[str], str] = lambda name: name) -> str:
    """``spec`` as the parser reads it, without the blanks around its separators and the empty parts
    (``"alexnet : pool+cov, "`` -> ``"alexnet:pool+cov"``), so that two spellings of the same features name
    one run, not two; ``encoder_name`` respells each encoder (a run's identity names a preset that is its
    kind's defaults by the kind: ``stages.extract.spec_encoder_name``). A spec with no part at all is returned
    as given (the parser refuses it as empty)."""
    parts = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        encoder, colon, cols = part.partition(":")
        parts.append(encoder_name(encoder.strip()) + (":" + "+".join(c.strip() for c in cols.split("+")) if colon else ""))
    return ",".join(parts) or spec


def parse_feature_spec(dataset: DatasetCache, spec: str, modality: str) -> list[FeatureRef]:
    """The feature columns ``spec`` names for ``modality`` in ``dataset``; CacheError naming what exists."""
    refs: list[FeatureRef] = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        encoder, _, cols = part.partition(":")
        encoder = resolve_cached_encoder(dataset, encoder)
        manifest = dataset.manifest(encoder)
        available = manifest["columns"]
        if cols:
            names = cols.split("+")
        else:
            names = manifest["default_columns"].get(modality, [])
            if not names:
                raise CacheError(f"encoder {encoder!r} has no {modality} output; its columns: {', '.join(available)}")
        for name in names:
            if name not in available:
                raise CacheError(f"encoder {encoder!r} has no column {name!r}; available: {', '.join(available)}")
            if available[name]["modality"] != modality:
                raise CacheError(f"column {encoder}:{name} is a {available[name]['modality']} feature, "
                                 f"but it was asked for as the {modality} input")
            if FeatureRef(encoder, name) in refs:  # read once either way: a second run id of the same features
                raise CacheError(f"the {modality} feature spec {spec!r} names {encoder}:{name} twice; name each "
                                 f"column once")
            refs.append(FeatureRef(encoder, name))
    if not refs:
        raise CacheError(f"empty {modality} feature spec {spec!r}")
    return refs


def resolve_cached_encoder(dataset: DatasetCache, name: str) -> str:
    """A short name (``alexnet``, ``clip``) stands for the one cached id it prefixes (``alexnet.imagenet``)."""
    cached = dataset.layout.encoder_folders(dataset.name)  # a folder without its manifest is named by read_manifest
    if name in cached:
        return name
    matches = [e for e in cached if e.startswith(name + ".") or e.startswith(name + "-")]
    if len(matches) > 1:
        raise CacheError(f"{name!r} matches several cached encoders of {dataset.name!r}: {', '.join(matches)}; "
                         f"name one of them")
    return matches[0] if matches else name


class _ShardCursor:
    """Reads one encoder's shards of a split in order, keeping only the shards the current chunk needs."""

    def __init__(self, dataset: DatasetCache, encoder: str, split: str, columns: Sequence[str]) -> None:
        manifest = dataset.manifest(encoder)
        if not manifest.get("complete"):
            raise CacheError(f"features of encoder {encoder!r} for {dataset.name!r} are incomplete: re-run "
                             f"`{extract_command(dataset.layout, dataset.name, encoders=[encoder])}` to finish them")
        check_features_match_items(dataset, encoder, manifest)
        self.dataset, self.encoder, self.split = dataset, encoder, split
        self.columns = sorted(set(columns))
        self.widths = {c: (manifest["columns"].get(c) or {}).get("dim") for c in self.columns}
        self._failed: set[int] | None = None
        self.shard_size = int(manifest["shard_size"])
        layout = dataset.layout
        if split in PHYSICAL_SPLITS:
            self.n_parts = int(manifest["parts"].get(split, 0))
            self.whole = False
        else:  # gathered from the database after extraction (train, validation): shards hold the present rows
            self.n_parts = len(list(layout.split_dir(dataset.name, encoder, split).glob("part-*.parquet")))
            self.whole = True  # so a chunk reads every shard (these splits are small)
        self._cache: dict[int, dict[str, np.ndarray]] = {}

    def _part(self, p: int) -> dict[str, np.ndarray]:
        if p not in self._cache:
            name = self.dataset.name
            path = self.dataset.layout.shard_path(name, self.encoder, self.split, p)
            fix = f"re-run `{extract_command(self.dataset.layout, name, encoders=[self.encoder])}`"
            if not path.exists():
                raise CacheError(f"feature shard {path} is missing: {fix}, which rebuilds it")
            table = read_table(path, ["item_id", *self.columns], f"{fix}, which rebuilds damaged shards")
            problem = id_column_problem(table) or next(
                (why for c in self.columns if (why := vector_column_problem(table, c, self.widths[c]))), None)
            if problem:  # a Parquet file, but not one this extraction wrote: rows would pair with other items
                raise CacheError(f"feature shard {path} {problem}: {fix}, which rebuilds it")
            part = {"item_id": table.column("item_id").to_numpy(),
                    **{c: arrow_to_vectors(table.column(c)) for c in self.columns}}
            for c in self.columns:
                if part[c].dtype.kind == "f" and not np.isfinite(part[c]).all():
                    # no encoder writes one: a NaN would surface as a loss or codes "diverged", far from here
                    bad = int((~np.isfinite(part[c])).sum())
                    rebuild = extract_command(self.dataset.layout, name, encoders=[self.encoder], overwrite=True)
                    raise CacheError(f"feature shard {path} holds {bad} non-finite value(s) (NaN or infinity) in "
                                     f"column {c!r}: rebuild the features with `{rebuild}`")
            self._cache[p] = part
        return self._cache[p]

    def check_lost(self, lost: np.ndarray) -> None:
        """CacheError when ``lost`` (items of the table that this encoder's shards lack) holds any that its
        ``errors.parquet`` does not list as failed: a shard lost rows, and training on the rest would shrink
        a split without a word."""
        if self._failed is None:
            self._failed = set(read_errors(self.dataset.layout, self.dataset.name, self.encoder))
        unexplained = [int(i) for i in lost if int(i) not in self._failed]
        if unexplained:
            layout, name = self.dataset.layout, self.dataset.name
            raise CacheError(
                f"the {self.encoder} features of split {self.split!r} of {name!r} lack {len(unexplained)} item(s) "
                f"that its errors.parquet does not list as failed (e.g. {unexplained[:5]}): a shard under "
                f"{layout.split_dir(name, self.encoder, self.split)} lost rows; re-run "
                f"`{extract_command(layout, name, encoders=[self.encoder])}`, which rebuilds it")

    def rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Every stored row whose planned position lies in ``[start, stop)`` (possibly a few more)."""
        if self.whole:
            first, last = 0, self.n_parts - 1
        else:
            first, last = start // self.shard_size, min((stop - 1) // self.shard_size, self.n_parts - 1)
            for p in [p for p in self._cache if p < first]:
                del self._cache[p]  # chunks move forward only
        parts = [self._part(p) for p in range(first, last + 1)]
        if not parts:
            return {"item_id": np.zeros(0, np.int64)}
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}


def check_features_match_items(dataset: DatasetCache, encoder: str, manifest: dict[str, Any]) -> None:
    """CacheError unless ``encoder``'s features were extracted from the items and splits cached now.

    Features are joined to items by id alone, so features of one collection beside the item table of
    another (an extraction with --overwrite that rebuilt some encoders only, or two extractions into
    one cache at once) would pair rows of different pictures and texts without a word."""
    checks = (("items", manifest.get("dataset_fingerprint"), lambda: dataset.items_meta.get("fingerprint")),
              ("splits", manifest.get("splits_fingerprint"), lambda: dataset.splits_fingerprint))
    for what, recorded, now in checks:
        current = now() if recorded is not None else None
        if recorded is not None and recorded != current:
            raise CacheError(
                f"the {encoder} features of {dataset.name!r} were extracted from other {what} than the cache holds "
                f"now (fingerprint {recorded} vs {current}): the dataset was extracted again without them, or by "
                f"two `cmh extract` at once; rebuild them with "
                f"`{extract_command(dataset.layout, dataset.name, encoders=[encoder], overwrite=True)}`")


def _locate(stored: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row in ``stored`` of each wanted id, whether it is there); rows of absent ids are 0 (masked by callers)."""
    if len(stored) == 0:
        return np.zeros(len(wanted), np.int64), np.zeros(len(wanted), dtype=bool)
    order = np.argsort(stored, kind="stable")
    at = np.minimum(np.searchsorted(stored[order], wanted), len(stored) - 1)
    return order[at], stored[order[at]] == wanted


def read_aligned(dataset: DatasetCache, split: str, image: Sequence[FeatureRef], text: Sequence[FeatureRef],
                 *, chunk_rows: int | None = None, start: int = 0) -> Iterator[AlignedFeatures]:
    """Chunks of ``split`` (its items in split order), ``chunk_rows`` planned items each (None: the whole
    split in one chunk), from planned position ``start`` on (a resumed job skips the chunks it wrote)."""
    dataset.splits  # noqa: B018 -- checks that every member is in the item table or recorded as dropped from it
    splits = dataset.planned_splits  # planned positions: the shard layout
    if split not in splits:
        raise CacheError(f"dataset {dataset.name!r} has no split {split!r} (splits: {', '.join(sorted(splits))}); "
                         f"the cache predates validation splits: re-run "
                         f"`{extract_command(dataset.layout, dataset.name, overwrite=True)}` (or another CACHE=)")
    members = splits[split]
    if chunk_rows is not None and chunk_rows < 1:
        raise CacheError(f"chunk size {chunk_rows}: give 1 or more rows")
    # a whole split is one chunk, even an empty one (a chunked read of an empty split yields none)
    step = max(1, len(members)) if chunk_rows is None else chunk_rows
    starts = [start] if chunk_rows is None else range(start, len(members), step)
    by_encoder: dict[str, list[str]] = {}
    for ref in [*image, *text]:
        by_encoder.setdefault(ref.encoder, []).append(ref.column)
    cursors = {e: _ShardCursor(dataset, e, split, cols) for e, cols in by_encoder.items()}
    items = dataset.items
    label_row = _label_rows(dataset)
    for first in starts:
        planned = members[first:first + step]
        table_rows, known = label_row(planned)  # a pair the item table dropped is skipped here, silently:
        present = known.copy()  # its drop was reported (and recorded) when it happened
        picks: dict[str, tuple[dict[str, np.ndarray], np.ndarray]] = {}
        for encoder, cursor in cursors.items():
            data = cursor.rows(first, first + len(planned))
            rows, found = _locate(data["item_id"], planned)
            if not found[known].all():
                cursor.check_lost(planned[known & ~found])
            present &= found
            picks[encoder] = (data, rows)
        keep = planned[present]

        def gather(refs: Sequence[FeatureRef]) -> dict[str, np.ndarray]:
            out = {}
            for ref in refs:
                data, rows = picks[ref.encoder]
                out[ref.key] = np.asarray(data[ref.column][rows[present]], dtype=np.float32)
            return out

        labels = items.labels[table_rows[present]]
        yield AlignedFeatures(split, keep, gather(image), gather(text), labels, planned[known & ~present])


def _label_rows(dataset: DatasetCache):
    """item ids -> (rows of the item table, whether each id is in it), vectorised."""
    ids = dataset.items.item_id
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]

    def rows(wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not len(ids):
            return np.zeros(len(wanted), np.int64), np.zeros(len(wanted), dtype=bool)
        at = np.minimum(np.searchsorted(sorted_ids, wanted), len(ids) - 1)
        return order[at], sorted_ids[at] == wanted

    return rows
