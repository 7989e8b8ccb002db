"""``cmh encode``: code every item of another cached dataset with a trained run's model.

This is how a collection of one's own is indexed with a model trained on a benchmark: extract the
collection's features with the run's encoder settings (``cmh extract``), encode it here, then
``cmh index --dataset`` and ``cmh query --dataset``. The codes go to
``runs/<run>/encoded/<dataset>/codes/split=<s>/part-NNNNN.parquet`` in the run's own codes layout
(item ids, both modalities), one part per chunk of feature rows, so memory is bounded by a chunk and
not by the collection. ``_encode.json`` beside them records the provenance (run id, config hash,
model fingerprint, the dataset's feature fingerprints) and whether the encoding is complete; a rerun
with the same provenance resumes at the first missing part, and one with other provenance starts over.

Both engines code a chunk with :func:`stages.train.coding.codes`, the one path from features to codes.
"""
from __future__ import annotations

import hashlib
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pipeline.ground.errors import CacheError, ConfigError
from pipeline.ground.provenance import environment
from pipeline.ground.store.cache import Cache, DatasetCache
from pipeline.ground.store.checkpoints import run_lock
from pipeline.ground.store.lock import dataset_held_shared
from pipeline.orchestration.engines import check_engine_options
from pipeline.ground.store.features import config_hash
from pipeline.ground.store.layout import PHYSICAL_SPLITS
from pipeline.ground.store.parquet import read_json, read_metadata, write_json_atomic
from pipeline.ground.store.aligned import FeatureRef
from pipeline.ground.store.runs import RunDir, drop_leftovers
from stages.train import coding

log = logging.getLogger(__name__)

#: Feature rows per chunk (and per codes part): the extraction's shard size, so a chunk reads about one shard.
CHUNK_ROWS = 1024


@dataclass
class EncodeResult:
    run_id: str
    dataset: str
    out_dir: Path
    items: int
    dropped: int
    parts_written: int
    parts_reused: int


def file_fingerprint(path: Path) -> str:
    """sha256 of a file's bytes, 16 hex digits (a retrained model changes it even when its config does not)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _refs_for(ds: DatasetCache, run: RunDir, config: dict[str, Any], dims: Any, dataset: str,
              modality: str) -> list[FeatureRef]:
    """The run's feature columns of ``modality`` in ``dataset``; CacheError when missing or different."""
    spec = config[f"{modality}_features"]
    where = f"cannot encode {dataset!r} with run {run.run_id}"
    try:
        refs = ds.feature_refs(spec, modality)
    except CacheError as exc:
        raise CacheError(f"{where}: it lacks the run's {modality} features {spec!r} ({exc})") from None
    want = dict(dims.image_parts if modality == "image" else dims.text_parts)
    if [r.key for r in refs] != list(want):
        raise CacheError(f"{where}: its {modality} features {spec!r} resolve to {[r.key for r in refs]}, the run "
                         f"read {list(want)}; extract {dataset!r} with the same encoders (`cmh extract --encoders`)")
    recorded = config.get("features", {})
    for ref in refs:
        manifest = ds.manifest(ref.encoder)
        if not manifest.get("complete"):  # refused here, before anything under the run is written
            raise CacheError(f"{where}: its {ref.encoder} features are incomplete (an interrupted extraction): "
                             f"re-run `cmh extract --dataset {dataset} --encoders {ref.encoder.split('.')[0]}` to "
                             f"finish them")
        dim = int(manifest["columns"][ref.column]["dim"])
        if dim != int(want[ref.key]):
            raise CacheError(f"{where}: feature {ref.key} is {dim}-d in {dataset!r} but {want[ref.key]}-d in the run; "
                             f"extract {dataset!r} with the run's encoder settings (its config.json -> features)")
        run_hash = (recorded.get(ref.encoder) or {}).get("config_hash")
        if run_hash is not None and manifest.get("config_hash") != run_hash:
            raise CacheError(f"{where}: its {ref.encoder} features were extracted with another encoder setup "
                             f"(config hash {manifest.get('config_hash')} vs the run's {run_hash}: other weights or "
                             f"another vocabulary), so its codes would be meaningless; extract {dataset!r} with the "
                             f"run's encoder settings (its config.json -> features -> encoder_config)")
    return refs


def encode_dataset(cache: Cache, run: str, dataset: str, *, chunk_rows: int = CHUNK_ROWS,
                   progress: bool = True, say: Callable[[str], None] = log.info, engine: str = "local",
                   ray_address: str | None = None, concurrency: int | None = None,
                   device: str | None = None) -> EncodeResult:
    """Write ``runs/<run>/encoded/<dataset>/`` (codes of every query and database item; see the module docstring).

    ``engine="ray"`` codes the missing parts on Ray actors (:mod:`pipeline.orchestration.encoding_ray`; ``ray_address``,
    ``concurrency`` and ``device`` apply there only): same files, resumable by either engine."""
    check_engine_options(engine, ray_address=ray_address, concurrency=concurrency, device=device)
    from stages.train import methods  # noqa: F401  (registers every method)

    if chunk_rows < 1:
        raise CacheError(f"--chunk-rows {chunk_rows}: give 1 or more")
    run_dir = cache.find_run(run)
    # the run's writer lock, held to the end: a `cmh rm`, training or second encode of the run meanwhile is
    # refused naming this process, and leftovers of a killed encode can be told from a live one's files. The
    # dataset's lock, held shared as an extraction holds it: a `cmh rm` of the dataset meanwhile is refused naming
    # this process, and this encode is refused naming the `cmh rm` deleting the features it would read
    with run_lock(run_dir.path, run_dir.run_id, "encoding", create=False), \
            dataset_held_shared(cache, dataset, "encoding"):
        return _encode_held(cache, run_dir, dataset, chunk_rows=chunk_rows, progress=progress, say=say,
                            engine=engine, ray_address=ray_address, concurrency=concurrency, device=device)


def _encode_held(cache: Cache, run_dir: RunDir, dataset: str, *, chunk_rows: int, progress: bool,
                 say: Callable[[str], None], engine: str, ray_address: str | None, concurrency: int | None,
                 device: str | None) -> EncodeResult:
    """``encode_dataset`` holding the run's writer lock."""
    from stages.train.base import load_method
    from pipeline.ground.progress import progress_bar

    ds = cache.dataset(dataset)  # an unknown or unsafe name is said before any path is formed from it
    drop_leftovers(run_dir.encode_partials(dataset), "encode")
    run_dir.require_trained()
    config = cache.require_current(run_dir)
    method = load_method(run_dir.model_path, method=config["method"], bits=config["bits"],
                         run_id=config.get("run_id"))
    refs = {m: _refs_for(ds, run_dir, config, method.dims, dataset, m) for m in ("image", "text")}
    encoders = sorted({r.encoder for rs in refs.values() for r in rs})
    features = _feature_fingerprints(ds, encoders)
    provenance = {"run_id": run_dir.run_id, "config_hash": config.get("config_hash"),
                  "model_fingerprint": file_fingerprint(run_dir.model_path), "bits": int(config["bits"]),
                  "method": config.get("method"), "eval_mode": config.get("eval_mode", "single"),
                  "dataset": dataset, "features": features, "chunk_rows": chunk_rows,
                  "image_features": config["image_features"], "text_features": config["text_features"]}
    key = config_hash(provenance)
    out = run_dir.encoded_dir(dataset)
    manifest_path = run_dir.encode_record_path(dataset)
    if manifest_path.exists():
        try:
            old = read_json(manifest_path)
        except CacheError:
            old = None
        if not isinstance(old, dict):  # the codes are all derived: a damaged record costs a re-encode, nothing more
            say(f"{manifest_path} is damaged; encoding {dataset!r} again")
            shutil.rmtree(out)
        elif old.get("encode_key") != key:
            say(f"{out} was encoded from another model or other features; encoding {dataset!r} again")
            shutil.rmtree(out)
    splits = ds.planned_splits  # chunks are planned positions (pairs dropped later are skipped by the reader)
    present = [s for s in PHYSICAL_SPLITS if s in splits]
    write_json_atomic({**provenance, "encode_key": key, "complete": False,
                       "data_fingerprint": ds.items_meta.get("fingerprint")}, manifest_path)
    codes_dir = run_dir.encoded_codes_dir(dataset)
    paired = config.get("eval_mode") == "paired"
    total = sum(len(splits[s]) for s in present)
    bar = progress_bar(total, f"encode {dataset} with {run_dir.run_id}", "items") if progress else None
    t0 = time.perf_counter()
    part_meta = {"run_id": run_dir.run_id, "bits": int(config["bits"]), "method": config.get("method"),
                 "dataset": dataset, "encode_key": key}
    try:
        if engine == "ray":
            written, reused, items, dropped = _encode_on_ray(
                cache, dataset, splits, present, refs, run_dir.model_path, codes_dir, part_meta, chunk_rows, paired,
                bar, ray_address=ray_address, concurrency=concurrency, device=device)
        else:
            written, reused, items, dropped = _encode_locally(
                ds, splits, present, refs, method, codes_dir, part_meta, chunk_rows, paired, bar)
    finally:
        if bar is not None:
            bar.close()
    if dropped:
        log.warning("%d item(s) of %s missing from some encoder (see errors.parquet) were not encoded", dropped, dataset)
    write_json_atomic({**provenance, "encode_key": key, "complete": True, "items": items, "dropped": dropped,
                       "splits": {s: len(splits[s]) for s in present}, "seconds": time.perf_counter() - t0,
                       "data_fingerprint": ds.items_meta.get("fingerprint"),
                       "environment": environment()}, manifest_path)
    return EncodeResult(run_dir.run_id, dataset, out, items, dropped, written, reused)


def _encode_locally(ds: DatasetCache, splits: dict[str, np.ndarray], present: list[str],
                    refs: dict[str, list[FeatureRef]], method: Any, codes_dir: Path, part_meta: dict[str, Any],
                    chunk_rows: int, paired: bool, bar: Any) -> tuple[int, int, int, int]:
    """(parts written, parts reused, items, dropped): parts are written in order, so each split resumes
    at its first part not written with this encoding and rewrites every part from there on."""
    from pipeline.ground.store.codes import codes_parts, codes_path, write_codes

    key = part_meta["encode_key"]
    written = reused = items = dropped = 0
    for split in present:
        members = splits[split]
        n_chunks = -(-len(members) // chunk_rows)
        done = 0  # parts are written in order: resume at the first one not written with this key
        while done < n_chunks:
            meta = _part_meta(codes_path(codes_dir, split, done))
            if meta.get("encode_key") != key:
                break  # missing, damaged or from another encoding: rewritten from here on
            items += int(meta["rows"])
            dropped += int(meta["dropped"])
            done += 1
        reused += done
        for stale in codes_parts(codes_dir, split)[done:]:
            stale.unlink()
        if bar is not None and done:
            bar.update(min(done * chunk_rows, len(members)), "resumed")
        chunks = ds.chunks(split, refs["image"], refs["text"], chunk_rows=chunk_rows, start=done * chunk_rows)
        for part, chunk in enumerate(chunks, start=done):
            coded = coding.codes(method, chunk, paired=paired)
            write_codes(codes_dir, split, chunk.item_id, coded["image"], coded["text"],
                        {**part_meta, "part": part, "rows": len(chunk), "dropped": len(chunk.dropped)}, part=part)
            written += 1
            items += len(chunk)
            dropped += len(chunk.dropped)
            if bar is not None:
                bar.update(len(chunk) + len(chunk.dropped))
    return written, reused, items, dropped


def _encode_on_ray(cache: Cache, dataset: str, splits: dict[str, np.ndarray], present: list[str],
                   refs: dict[str, list[FeatureRef]], model_path: Path, codes_dir: Path, part_meta: dict[str, Any],
                   chunk_rows: int, paired: bool, bar: Any, *, ray_address: str | None, concurrency: int | None,
                   device: str | None) -> tuple[int, int, int, int]:
    """(parts written, parts reused, items, dropped): every part already written with this encoding is
    kept (Ray writes parts in any order, so each is checked on its own) and the rest go to Ray."""
    from pipeline.ground.store.codes import codes_parts, codes_path
    from stages.extract.ray_engine import ray_session
    from pipeline.orchestration.encoding_ray import code_parts_ray

    todo: list[tuple[str, int]] = []
    written = reused = items = dropped = 0
    for split in present:
        n = len(splits[split])
        n_chunks = -(-n // chunk_rows)
        for part in range(n_chunks):
            meta = _part_meta(codes_path(codes_dir, split, part))
            if meta.get("encode_key") == part_meta["encode_key"]:
                reused += 1
                items += int(meta["rows"])
                dropped += int(meta["dropped"])
                if bar is not None:
                    bar.update(min(chunk_rows, n - part * chunk_rows), "resumed")
            else:
                todo.append((split, part))
        for stale in codes_parts(codes_dir, split)[n_chunks:]:
            stale.unlink()
    if todo:
        with ray_session(ray_address):
            for _, _, rows, lost in code_parts_ray(cache, dataset, model_path, codes_dir, refs["image"], refs["text"],
                                                   todo, chunk_rows=chunk_rows, paired=paired, meta=part_meta,
                                                   concurrency=concurrency, device=device):
                written += 1
                items += rows
                dropped += lost
                if bar is not None:
                    bar.update(rows + lost)
    return written, reused, items, dropped


def _part_meta(path: Path) -> dict[str, Any]:
    """A written part's metadata; {} when it is missing or unreadable (a damaged part is rewritten)."""
    if not path.exists():
        return {}
    try:
        return read_metadata(path)
    except CacheError:
        log.warning("%s is damaged; encoding it again", path)
        return {}


def _feature_fingerprints(ds: DatasetCache, encoders: list[str]) -> dict[str, dict[str, Any]]:
    """What identifies each encoder's features of the dataset now (a re-extraction with other settings changes it)."""
    return {e: {k: ds.manifest(e).get(k)
                for k in ("config_hash", "dataset_fingerprint", "splits_fingerprint", "code_version")}
            for e in encoders}


def read_encode_manifest(run_dir: RunDir, dataset: str, cache: Cache | None = None) -> dict[str, Any]:
    """The complete ``_encode.json`` of an encoded dataset; CacheError naming ``cmh encode`` otherwise.

    With ``cache`` the codes are also checked to be current: the run's model file and the dataset's
    items and features must be the ones they were encoded from (a retrained run or a re-extracted
    dataset would otherwise be searched with codes of the old model or the old features)."""
    path = run_dir.encode_record_path(dataset)
    fix = f"run `cmh encode --run {run_dir.run_id} --dataset {dataset}`"
    if not path.exists():
        if cache is not None:
            cache.dataset(dataset).items_meta  # a dataset not in the cache: name the cached ones, not `cmh encode`
        raise CacheError(f"run {run_dir.run_id} has not encoded {dataset!r} ({path} missing): {fix}")
    manifest = read_json(path, fix)
    if not isinstance(manifest, dict):
        raise CacheError(f"{path} is damaged (not a JSON object): {fix}")
    if not manifest.get("complete"):
        raise CacheError(f"the encoding of {dataset!r} with run {run_dir.run_id} is incomplete: {fix} to resume it")
    if manifest.get("run_id") != run_dir.run_id:  # an encoded/ folder copied from another run
        raise CacheError(f"{path.parent} was encoded by run {manifest.get('run_id')}, not {run_dir.run_id}: {fix}")
    if cache is not None:
        stale = _stale_reason(cache.dataset(dataset), run_dir, manifest)
        if stale:
            raise CacheError(f"the codes of {dataset!r} are stale: {stale} since they were encoded; re-encode: {fix}")
    return manifest


def _stale_reason(ds: DatasetCache, run_dir: RunDir, manifest: dict[str, Any]) -> str | None:
    """Why an encoding no longer matches its run and dataset, or None when it does."""
    if manifest.get("model_fingerprint") != file_fingerprint(run_dir.model_path):
        return f"run {run_dir.run_id}'s model.pt changed (retrained)"
    recorded = manifest.get("features")
    try:
        now = _feature_fingerprints(ds, sorted(recorded or {}))
        data = ds.items_meta.get("fingerprint")
    except CacheError as exc:
        return f"{ds.name!r}'s features cannot be read ({exc})"
    if not recorded or now != recorded:
        return f"{ds.name!r} was extracted again with other settings"
    if data != manifest.get("data_fingerprint"):
        return f"{ds.name!r}'s items changed"
    return None
