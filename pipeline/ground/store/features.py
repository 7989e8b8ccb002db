"""Feature shards: one Parquet dataset per (dataset, encoder), hive-partitioned by split.

Layout: ``features/dataset=<d>/encoder=<e>/split=<s>/part-NNNNN.parquet`` with ``item_id`` and one
``FixedSizeList`` column per output of the encoder. ``query`` and ``database`` shards are computed;
``train`` and ``validation`` (subsets of the database) are gathered from the database shards by
item id, so no image is encoded twice. ``_manifest.json`` holds what the shards were written with
(encoder config, code version, dataset and split fingerprints); a later run that asks for something
else is refused instead of mixing the two.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.ground.versions import CACHE_SCHEMA_VERSION
from pipeline.ground.errors import CacheError
from pipeline.ground.store.items import Splits, check_schema_version, extract_command
from pipeline.ground.store.layout import PHYSICAL_SPLITS, CacheLayout
from pipeline.ground.store.lock import held_alone
from pipeline.ground.store.parquet import (arrow_to_vectors, check_record, id_column_problem, raise_if_not_the_file,
                                           read_json_object, read_table, vector_column_problem, vectors_to_arrow,
                                           write_json_atomic, write_table_atomic)

log = logging.getLogger(__name__)


def config_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def splits_fingerprint(splits: Splits) -> str:
    h = hashlib.sha256()
    for name in sorted(splits):
        h.update(name.encode())
        h.update(np.ascontiguousarray(splits[name], dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class ColumnSpec:
    dim: int
    dtype: str  # numpy dtype name: float16, float32, uint8
    modality: str  # image | text


@dataclass(frozen=True)
class Shard:
    split: str
    part: int
    item_ids: np.ndarray


@dataclass(frozen=True)
class ShardSpec:
    """``--shard i/n``: this worker takes the parts whose index modulo n equals i."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> "ShardSpec":
        if not text:
            return cls()
        try:
            i, n = (int(v) for v in text.split("/"))
        except ValueError:
            raise CacheError(f"--shard expects i/n such as 0/4, got {text!r}") from None
        if not (n >= 1 and 0 <= i < n):
            raise CacheError(f"--shard {text}: need 0 <= i < n")
        return cls(i, n)


def _unreadable(exc: Exception, path: Path) -> str:
    """``shard_problem``'s reason for a shard whose footer or ids cannot be read; an error that is not the file's
    own (too many open files, no permission) is raised instead: it is no reason to delete the shard."""
    raise_if_not_the_file(exc, path)
    return f"unreadable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"


class FeatureWriter:
    """Plans, writes and finalises the shards of one (dataset, encoder)."""

    def __init__(
        self,
        layout: CacheLayout,
        dataset: str,
        encoder: str,
        *,
        encoder_config: Mapping[str, Any],
        columns: Mapping[str, ColumnSpec],
        default_columns: Mapping[str, Sequence[str]],
        dataset_fingerprint: str,
        splits: Splits,
        shard_size: int = 1024,
        code_version: str = "",
        provenance: Mapping[str, Any] | None = None,
        dropped: Sequence[int] | set[int] = (),
    ) -> None:
        self.layout, self.dataset, self.encoder = layout, dataset, encoder
        self.columns = dict(columns)
        self.splits = splits  # as drawn: the shard layout, and what the manifest's splits_fingerprint names
        #: split members whose pair the item table dropped after the splits were drawn (their image failed,
        #: found by an image encoder); never encoded here, absent from new shards like this encoder's own failures
        self.dropped = {int(i) for i in dropped}
        self.shard_size = shard_size
        self.manifest = {
            "schema_version": CACHE_SCHEMA_VERSION,
            "dataset": dataset,
            "encoder": encoder,
            "encoder_config": dict(encoder_config),
            "config_hash": config_hash(encoder_config),
            "code_version": code_version,
            "dataset_fingerprint": dataset_fingerprint,
            "splits_fingerprint": splits_fingerprint(splits),
            "columns": {k: vars(v) for k, v in self.columns.items()},
            "default_columns": {k: list(v) for k, v in default_columns.items()},
            "shard_size": shard_size,
            "parts": {s: self._n_parts(s) for s in PHYSICAL_SPLITS if s in splits},
            "provenance": dict(provenance or {}),
            "complete": False,
        }

    # -- planning ---------------------------------------------------------------------------
    def _n_parts(self, split: str) -> int:
        return max(1, -(-len(self.splits[split]) // self.shard_size))

    def check_or_create_manifest(self, overwrite: bool = False) -> None:
        path = self.layout.manifest_path(self.dataset, self.encoder)
        if path.exists() and not overwrite:
            old = read_json_object(path, "re-run `cmh extract` with --overwrite to rebuild these features")
            check_schema_version(old, path)
            keys = ("config_hash", "code_version", "dataset_fingerprint", "splits_fingerprint", "shard_size")
            diff = {k: (old.get(k), self.manifest[k]) for k in keys if old.get(k) != self.manifest[k]}
            if diff:
                raise CacheError(
                    f"cached features at {path.parent} were written with a different setup "
                    f"({', '.join(f'{k}: cached {a} vs requested {b}' for k, (a, b) in diff.items())}); "
                    f"re-run with --overwrite to replace them, or use another CACHE= directory"
                )
            return
        if overwrite and path.parent.exists():
            for p in path.parent.rglob("*.parquet"):
                p.unlink()
        write_json_atomic(self.manifest, path)

    def pending(self, shard: ShardSpec = ShardSpec()) -> list[Shard]:
        """Shards of the physical splits that this worker owns and that are not on disk yet."""
        todo: list[Shard] = []
        failed = self.failed_ids()
        for split in PHYSICAL_SPLITS:
            if split not in self.splits:
                continue
            ids = self.splits[split]
            for part in range(self._n_parts(split)):
                if part % shard.count != shard.index:
                    continue
                planned = ids[part * self.shard_size:(part + 1) * self.shard_size]
                keep = planned if not self.dropped else planned[~np.isin(planned, list(self.dropped))]
                path = self.layout.shard_path(self.dataset, self.encoder, split, part)
                if path.exists():
                    kept = len(keep) - len(failed & set(keep.tolist()))
                    # a shard written before some of its pairs were dropped still holds their rows (readers skip
                    # them): up to that many more rows is as good
                    problem = self.shard_problem(path, (kept, kept + len(planned) - len(keep)), planned)
                    if problem is None:
                        continue
                    log.warning("%s: %s; rebuilding it", path, problem)
                    path.unlink()
                todo.append(Shard(split, part, keep))
        return todo

    def shard_problem(self, path: Path, expected_rows: int | tuple[int, int] | None,
                      planned: np.ndarray | None = None) -> str | None:
        """Why a shard on disk cannot be trusted (unreadable footer, other columns or column types, other row
        count, an item id twice or, given ``planned``, one not planned for it), or None. Only the footer and the
        ids are read, so a rerun checks every shard cheaply; the values are checked by the reader.

        ``expected_rows``: the row count, or the (least, most) it may hold."""
        try:
            parquet = pq.ParquetFile(path)
            meta, schema = parquet.metadata, parquet.schema_arrow
        except (pa.ArrowException, OSError, ValueError) as exc:
            return _unreadable(exc, path)
        missing = sorted({"item_id", *self.columns} - set(schema.names))
        if missing:
            return f"lacks column(s) {missing}"
        for problem in (id_column_problem(schema),
                        *(vector_column_problem(schema, name, spec.dim) for name, spec in self.columns.items())):
            if problem:
                return problem
        if expected_rows is not None:
            low, high = expected_rows if isinstance(expected_rows, tuple) else (expected_rows, expected_rows)
            if not low <= meta.num_rows <= high:
                return f"holds {meta.num_rows} rows where {low if low == high else f'{low} to {high}'} were written"
        try:
            ids = parquet.read(columns=["item_id"])
        except (pa.ArrowException, OSError, ValueError) as exc:
            return _unreadable(exc, path)
        problem = id_column_problem(ids)
        if problem:
            return problem
        if planned is not None and not np.isin(ids.column("item_id").to_numpy(), planned).all():
            return "holds rows of items that are not planned for it"
        return None

    def failed_ids(self) -> set[int]:
        """Item ids listed in errors.parquet (unreadable images); a damaged list is dropped, with a warning,
        so shards missing those rows are rebuilt and the failures found again."""
        path = self.layout.errors_path(self.dataset, self.encoder)
        if not path.exists():
            return set()
        try:
            return {int(i) for i in pq.read_table(path, columns=["item_id"]).column("item_id").to_pylist()}
        except (pa.ArrowException, OSError, ValueError, KeyError) as exc:
            log.warning("%s is damaged (%s); removing it", path, exc)
            path.unlink()
            return set()

    def gathered_ok(self) -> bool:
        """True when every gathered split (train, validation) has readable shards holding its rows."""
        failed = self.failed_ids() | self.dropped
        for split, members in self.splits.items():
            if split in PHYSICAL_SPLITS:
                continue
            files = sorted(self.layout.split_dir(self.dataset, self.encoder, split).glob("part-*.parquet"))
            if not files or any(self.shard_problem(f, None) for f in files):
                return False
            rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
            if rows != len(members) - len(failed & set(members.tolist())):
                return False
        return True

    def done_parts(self) -> int:
        return sum(
            self.layout.shard_path(self.dataset, self.encoder, s, p).exists()
            for s, n in self.manifest["parts"].items() for p in range(n)
        )

    # -- writing ----------------------------------------------------------------------------
    def write_shard(self, shard: Shard, item_ids: np.ndarray, arrays: Mapping[str, np.ndarray]) -> Path:
        """Write the rows that succeeded; ``item_ids`` may be a subset of ``shard.item_ids`` (failures dropped)."""
        cols: dict[str, Any] = {"item_id": pa.array(np.asarray(item_ids, dtype=np.int64))}
        for name, spec in self.columns.items():
            x = np.asarray(arrays[name])
            if x.shape != (len(item_ids), spec.dim):
                raise ValueError(f"column {name}: got shape {x.shape}, expected ({len(item_ids)}, {spec.dim})")
            cols[name] = vectors_to_arrow(x.astype(spec.dtype, copy=False))
        return self._write_table(shard, pa.table(cols))

    def _write_table(self, shard: Shard, table: pa.Table) -> Path:
        meta = {k: self.manifest[k] for k in ("schema_version", "dataset", "encoder", "config_hash",
                                               "code_version", "dataset_fingerprint")}
        meta["provenance"] = _bounded(self.manifest["provenance"])
        return write_table_atomic(table.replace_schema_metadata(None),
                                  self.layout.shard_path(self.dataset, self.encoder, shard.split, shard.part),
                                  metadata=meta, vector_columns=list(self.columns))

    def write_errors(self, errors: Sequence[tuple[int, str, str]]) -> None:
        """Append (item_id, reference, reason) rows to errors.parquet (merged with earlier runs)."""
        path = self.layout.errors_path(self.dataset, self.encoder)
        rows = {"item_id": [int(e[0]) for e in errors], "reference": [e[1] for e in errors], "reason": [e[2] for e in errors]}
        if not rows["item_id"]:
            return
        with held_alone(self.layout.errors_lock_path(self.dataset, self.encoder)):  # other --shard workers merge too
            if path.exists() and self.failed_ids():  # failed_ids() removes a damaged list
                old = pq.read_table(path).to_pydict()
                seen = set(rows["item_id"])
                for i, ref, why in zip(old["item_id"], old["reference"], old["reason"]):
                    if i not in seen:
                        rows["item_id"].append(i); rows["reference"].append(ref); rows["reason"].append(why)
            write_table_atomic(pa.table({"item_id": pa.array(rows["item_id"], pa.int64()),
                                         "reference": pa.array(rows["reference"], pa.string()),
                                         "reason": pa.array(rows["reason"], pa.string())}), path)

    def finalize(self) -> bool:
        """Once every physical shard exists, gather train/validation from the database shards.

        Returns False (and does nothing) while other workers still have shards to write.
        """
        if self.done_parts() < sum(self.manifest["parts"].values()):
            return False
        # Arrow rows taken as they are stored: no round trip through numpy (for MIRFlickr's 18,015 AlexNet
        # rows, converting them to arrays and back was most of the 9 s this step took on 2 busy cores)
        files = sorted(self.layout.split_dir(self.dataset, self.encoder, "database").glob("part-*.parquet"))
        fix = f"re-run `{extract_command(self.layout, self.dataset, encoders=[self.encoder])}`, which rebuilds it"
        db = pa.concat_tables([read_table(f, ["item_id", *self.columns], fix) for f in files])
        pos = {int(i): r for r, i in enumerate(db.column("item_id").to_numpy())}
        for split, members in self.splits.items():
            if split in PHYSICAL_SPLITS:
                continue
            rows = np.array([pos[int(i)] for i in members if int(i) in pos and int(i) not in self.dropped],
                            dtype=np.int64)
            for part, start in enumerate(range(0, max(len(rows), 1), self.shard_size)):
                self._write_table(Shard(split, part, np.zeros(0, np.int64)),
                                  db.take(pa.array(rows[start:start + self.shard_size], pa.int64())))
        self.manifest["complete"] = True
        # the failures, counted where a reader of the manifest looks: this encoder's own (errors.parquet) and the
        # pairs the item table dropped because an image encoder failed on them
        self.manifest["failed_items"] = len(self.failed_ids())
        self.manifest["dropped_pairs"] = len(self.dropped)
        write_json_atomic(self.manifest, self.layout.manifest_path(self.dataset, self.encoder))
        return True


#: Largest provenance value (as JSON) copied into each shard's metadata; bigger ones (a vocabulary) stay in
#: ``_manifest.json`` only, so the metadata of every shard stays small whatever the data holds.
SHARD_META_VALUE_BYTES = 4096


def _bounded(provenance: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in provenance.items():
        size = len(json.dumps(value, default=str))
        out[key] = value if size <= SHARD_META_VALUE_BYTES else f"<{size} bytes: see _manifest.json>"
    return out


# -- reading -------------------------------------------------------------------------------------
def read_manifest(layout: CacheLayout, dataset: str, encoder: str) -> dict[str, Any]:
    path = layout.manifest_path(dataset, encoder)
    if not path.exists():
        from pipeline.ground.store.items import items_meta

        items_meta(layout, dataset)  # a dataset that is not cached at all is said as such
        if path.parent.is_dir():  # shards without the record of what wrote them cannot be trusted
            raise CacheError(f"the features of encoder {encoder!r} at {path.parent} have no {path.name} (deleted, or "
                             f"an extraction interrupted before it began): rebuild them with "
                             f"`{extract_command(layout, dataset, encoders=[encoder], overwrite=True)}`")
        have = layout.encoders(dataset)
        raise CacheError(
            f"no cached features for encoder {encoder!r} of dataset {dataset!r} under {layout.root} "
            f"(cached encoders: {', '.join(have) or 'none'}); extract them with "
            f"`{extract_command(layout, dataset, encoders=[encoder])}`"
        )
    fix = f"rebuild these features with `{extract_command(layout, dataset, encoders=[encoder], overwrite=True)}`"
    manifest = read_json_object(path, fix)
    check_schema_version(manifest, path)
    return check_record(manifest, path, fix, MANIFEST_FIELDS)


#: What every reader of a feature manifest takes from it, with the JSON types.
MANIFEST_FIELDS: dict[str, type] = {"columns": dict, "default_columns": dict, "shard_size": int, "parts": dict}


def read_split_raw(layout: CacheLayout, dataset: str, encoder: str, split: str,
                   columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """All shards of one split, concatenated in part order: {"item_id": (n,), column: (n, d)}."""
    files = sorted(layout.split_dir(dataset, encoder, split).glob("part-*.parquet"))
    if not files:
        raise CacheError(f"no shards for split {split!r} at {layout.split_dir(dataset, encoder, split)}: "
                         f"the extraction is incomplete; re-run `cmh extract` to resume it")
    fix = (f"re-run `cmh extract --dataset {dataset} --encoders {encoder.split('.')[0]}`, which checks every "
           f"shard and rebuilds the damaged ones")
    tables = [read_table(f, None if columns is None else ["item_id", *columns], fix) for f in files]
    table = pa.concat_tables(tables)
    out = {"item_id": table.column("item_id").to_numpy()}
    for name in table.column_names:
        if name != "item_id":
            out[name] = arrow_to_vectors(table.column(name))
    return out


def read_errors(layout: CacheLayout, dataset: str, encoder: str) -> dict[int, str]:
    """Item id -> reason of every item ``errors.parquet`` lists for one (dataset, encoder); {} without one
    (a damaged list is left to the next extraction of that encoder, which removes it and finds them again)."""
    path = layout.errors_path(dataset, encoder)
    if not path.exists():
        return {}
    try:
        table = pq.read_table(path, columns=["item_id", "reason"]).to_pydict()
    except (pa.ArrowException, OSError, ValueError, KeyError) as exc:
        log.warning("%s is damaged (%s); the next extraction of %s finds its failures again", path, exc, encoder)
        return {}
    return {int(i): str(why) for i, why in zip(table["item_id"], table["reason"])}


def rows_on_disk(layout: CacheLayout, dataset: str, encoder: str) -> dict[str, int]:
    """Rows per split directory of one (dataset, encoder), read from the shard footers."""
    out = {}
    base = layout.encoder_dir(dataset, encoder)
    for split_dir in sorted(base.glob("split=*")):
        out[split_dir.name.split("=", 1)[1]] = sum(pq.ParquetFile(f).metadata.num_rows
                                                   for f in split_dir.glob("part-*.parquet"))
    return out


def bytes_on_disk(layout: CacheLayout, dataset: str, encoder: str) -> int:
    """Bytes of every file of one (dataset, encoder): shards, manifest and error list."""
    return sum(p.stat().st_size for p in layout.encoder_dir(dataset, encoder).rglob("*") if p.is_file())


def _damaged(path: Path) -> bool:
    try:
        pq.read_schema(path)
        return False
    except (pa.ArrowException, OSError, ValueError):
        return True
