"""What every extraction engine shares: planning the shards, writing one shard, summing up.

An engine (the local runner, ``runner.py``; Ray Data, ``ray_engine.py``) only decides how batches
are decoded and encoded. Everything that makes a cache a cache is here, once: ``plan_extraction``
checks the splits, fits the encoder on the train split, creates or checks the manifest and lists
the shards still missing; ``write_shard_batches`` turns one shard's encoded batches and failures
into ``errors.parquet`` rows and an atomically written shard; ``finish_extraction`` gathers
train/validation once every part exists and builds the ``ExtractSummary``. So training cannot tell
which engine wrote a cache: only the ``engine`` entry of the provenance differs.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from pipeline.ground import versions
from pipeline.ground.item_table import ItemTable
from pipeline.ground.errors import DataError
from pipeline.ground.provenance import package_versions
from pipeline.ground.store.features import (FeatureWriter, Shard, ShardSpec, bytes_on_disk, read_manifest,
                                            rows_on_disk)
from pipeline.ground.store.layout import PHYSICAL_SPLITS, CacheLayout
from stages.extract.base import Encoder

log = logging.getLogger(__name__)

#: Packages whose versions can change what an encoder writes.
EXTRACT_PACKAGES = ("torch", "torchvision", "open_clip_torch", "numpy", "pillow", "pyarrow")


@dataclass
class ExtractSummary:
    """What one extraction call did."""

    dataset: str
    encoder: str
    device: str
    rows: dict[str, int]  # rows on disk per split after this run
    failed: int  # items dropped by this run (unreadable images); listed in errors.parquet
    shards_written: int
    shards_pending_elsewhere: int  # parts owned by other --shard workers that are not on disk yet
    complete: bool  # every part exists and train/validation were gathered
    seconds: float
    items_per_s: float  # items through the encode loop per second (decoding included)
    columns: dict[str, int] = field(default_factory=dict)  # column -> dim
    bytes_on_disk: int = 0
    # where the loop's time went: waiting for decoded batches (loader-bound), in encode (model-bound),
    # waiting for the shard writer (disk-bound). Ray: waiting = for the pipeline's results; encode = the
    # actors' encode time summed over actors (they run in parallel, so it can exceed the wall time)
    wait_s: float = 0.0
    encode_s: float = 0.0
    write_s: float = 0.0
    engine: str = "local"
    first_batch_s: float = 0.0  # loop start to the first encoded batch (worker/actor start-up, model load)
    loop_s: float = 0.0  # the encode loop's wall time (items_per_s's denominator)
    already_complete: bool = False  # nothing was left to do: every part on disk and gathered before this call
    resumed_parts: int = 0  # parts already on disk (an earlier, interrupted run or other workers) when it started

    def describe(self) -> str:
        rows = ", ".join(f"{k} {v}" for k, v in self.rows.items())
        cols = ", ".join(f"{k}:{v}" for k, v in self.columns.items())
        if self.already_complete:
            return (f"{self.dataset}/{self.encoder}: already complete, nothing extracted; rows {rows}; "
                    f"columns {cols}; {self.bytes_on_disk / 2**20:.1f} MiB on disk")
        state = ("complete" if self.complete
                 else f"incomplete ({self.shards_pending_elsewhere} part(s) left to other workers)")
        times = (f"waiting for data {self.wait_s:.1f} s, encoding {self.encode_s:.1f} s" if self.engine == "local"
                 else f"waiting for Ray {self.wait_s:.1f} s, actors encoding {self.encode_s:.1f} s in total")
        resumed = (f"resumed with {self.resumed_parts} shard(s) already on disk, "
                   if self.resumed_parts and self.shards_written else "")
        return (f"{self.dataset}/{self.encoder} on {self.device} ({self.engine}): {resumed}{self.shards_written} "
                f"shard(s) written, {state}; rows {rows}; {self.failed} failed; {self.items_per_s:.1f} items/s over "
                f"{self.seconds:.1f} s ({times}, writing {self.write_s:.1f} s); "
                f"columns {cols}; {self.bytes_on_disk / 2**20:.1f} MiB on disk")


@dataclass
class ExtractionPlan:
    """The shards one engine still has to write, and how to find an item's row."""

    writer: FeatureWriter
    todo: list[Shard]
    was_complete: bool  # nothing to do and the cache was already finalised
    resumed_parts: int  # parts on disk before this call (a resumed or shared extraction)
    row_of: dict[int, int]  # item id -> row of the item table
    started: float  # perf_counter at planning time (the summary's total seconds)

    def rows(self) -> np.ndarray:
        """Item-table rows of every pending shard's items, shard after shard (the flat positions)."""
        if not self.todo:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.array([self.row_of[int(i)] for i in s.item_ids], dtype=np.int64)
                               for s in self.todo])


def provenance(encoder: Encoder, items: ItemTable, engine: str) -> dict[str, Any]:
    """The encoder's own provenance (weights, preprocessing, ...) plus what the runner knows."""
    run = {"encoder_id": encoder.id, "encoder_config": encoder.config(), "packages": package_versions(EXTRACT_PACKAGES),
           "dataset_fingerprint": items.fingerprint(), "dataset_source": items.source,
           "text_kind": items.text_kind, "code_version": versions.__version__, "engine": engine}
    own = encoder.provenance()
    clash = sorted(set(own) & set(run))
    if clash:
        raise ValueError(f"encoder {encoder.id} provenance keys {clash} are reserved by the runner")
    return {**own, **run}


def plan_extraction(layout: CacheLayout, items: ItemTable, splits: dict[str, np.ndarray], encoder: Encoder, *,
                    shard: ShardSpec, shard_size: int, overwrite: bool, engine: str) -> ExtractionPlan:
    """Check the splits, fit the encoder on train, create/check the manifest and list the missing shards."""
    started = time.perf_counter()
    row_of = {int(i): r for r, i in enumerate(items.item_id)}
    for name, members in splits.items():
        unknown = [int(i) for i in members if int(i) not in row_of]
        if unknown:
            raise DataError(f"split {name!r} names {len(unknown)} item id(s) not in dataset {items.dataset!r}, "
                            f"e.g. {unknown[:5]}; the splits and the item table disagree (re-create the splits)")

    encoder.prepare(items, splits)
    writer = FeatureWriter(
        layout, items.dataset, encoder.id, encoder_config=encoder.config(), columns=encoder.columns,
        default_columns=encoder.default_columns, dataset_fingerprint=items.fingerprint(), splits=splits,
        shard_size=shard_size, code_version=versions.__version__, provenance=provenance(encoder, items, engine),
    )
    writer.check_or_create_manifest(overwrite)
    todo = writer.pending(shard)
    gathered = [s for s in splits if s not in PHYSICAL_SPLITS]
    was_complete = (not todo and bool(read_manifest(layout, items.dataset, encoder.id).get("complete"))
                    and (not gathered or writer.gathered_ok()))
    done = writer.done_parts()
    if not was_complete:  # what prepare found was said when these features were written; a rerun stays quiet
        for level, note in getattr(encoder, "notes", ()):
            log.log(level, "%s", note)
    if todo and done:
        log.info("%s/%s: resuming: %d of %d shard(s) already on disk, %d to write", items.dataset, encoder.id, done,
                 sum(writer.manifest["parts"].values()), len(todo))
    return ExtractionPlan(writer, todo, was_complete, done, row_of, started)


def write_shard_batches(writer: FeatureWriter, shard: Shard, acc: Sequence[tuple[np.ndarray, dict[str, np.ndarray]]],
                        errors: Sequence[tuple[int, str, str]], columns: Sequence[str]) -> None:
    """Concatenate one shard's encoded batches and write it (failed items absent from every column).

    ``acc``: (item ids, column -> rows) per batch, in the shard's item order; ``errors``: (item id,
    image reference, reason) of the shard's items that failed, written to errors.parquet first.
    """
    if errors:
        writer.write_errors(errors)
    if not acc:
        raise DataError(f"every item of shard {shard.split}/part-{shard.part:05d} ({len(shard.item_ids)} items) "
                        f"failed to load, e.g. {errors[0][2] if errors else '?'}; check the image paths/data "
                        f"directory (failures are listed in errors.parquet)")
    ids = np.concatenate([i for i, _ in acc])
    arrays = {name: np.concatenate([a[name] for _, a in acc]) for name in columns}
    writer.write_shard(shard, ids, arrays)


def finish_extraction(layout: CacheLayout, items: ItemTable, encoder: Encoder, plan: ExtractionPlan, *, device: str,
                      engine: str, failed: int, written: int, seen: int, loop_seconds: float,
                      wait_s: float = 0.0, encode_s: float = 0.0, write_s: float = 0.0,
                      first_batch_s: float = 0.0) -> ExtractSummary:
    """Gather train/validation when every part exists, warn about failures, and sum the run up."""
    writer = plan.writer
    complete = plan.was_complete or writer.finalize()
    if failed:
        log.warning("%s/%s: %d item(s) could not be read and were dropped from every column (listed in %s)",
                    items.dataset, encoder.id, failed, layout.errors_path(items.dataset, encoder.id))
    summary = ExtractSummary(
        dataset=items.dataset, encoder=encoder.id, device=device,
        rows=rows_on_disk(layout, items.dataset, encoder.id),
        failed=failed, shards_written=written,
        shards_pending_elsewhere=sum(writer.manifest["parts"].values()) - writer.done_parts(),
        complete=complete, seconds=time.perf_counter() - plan.started,
        items_per_s=seen / loop_seconds if seen and loop_seconds > 0 else 0.0,
        wait_s=wait_s, encode_s=encode_s, write_s=write_s, engine=engine, first_batch_s=first_batch_s,
        loop_s=loop_seconds,
        columns={k: v.dim for k, v in encoder.columns.items()},
        bytes_on_disk=bytes_on_disk(layout, items.dataset, encoder.id),
        already_complete=plan.was_complete and not written, resumed_parts=plan.resumed_parts,
    )
    log.debug("%s", summary.describe())  # the command says it once, as its summary
    return summary
