"""``cmh index``: a faiss binary index of a run's database codes, or of a dataset the run encoded, for ``cmh query``.

One index per searched modality (a text query searches the image codes, an image query the text
codes), saved beside the codes it was built from:

* ``runs/<run>/index/{image,text}.faissindex`` + ``.json`` over the run's ``database`` split;
* ``runs/<run>/encoded/<dataset>/index/...`` over every item ``cmh encode`` wrote for that dataset.

The ``.json`` records the run id, config hash, bits, kind, parameters with the rule that chose them,
n, the fingerprint of the codes (item ids + words) the index was built from and the sha256 of the
index file. ``cmh query`` refuses an index whose record does not match the run and codes it is
asked to search (another run, another code length, retrained or re-encoded since, a file that is not
the one recorded) and says how to rebuild it. Evaluation never reads an index.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from pipeline.ground.errors import CacheError
from pipeline.ground.store.cache import Cache
from pipeline.ground.store.checkpoints import run_lock
from pipeline.ground.store.parquet import read_json, write_bytes_atomic, write_json_atomic
from pipeline.ground.store.runs import RunDir, drop_leftovers

log = logging.getLogger(__name__)

MODALITIES = ("image", "text")


@dataclass(frozen=True)
class CodesSource:
    """The codes an index is built over: a run's database split, or a dataset the run encoded (all of it)."""

    run: RunDir
    dataset: str | None = None
    #: With the cache, an encoded dataset's codes are checked to be current (see ``read_encode_manifest``).
    cache: Cache | None = None

    @property
    def label(self) -> str:
        return f"{self.dataset} (encoded)" if self.dataset else "the run's database"

    @property
    def codes_dir(self) -> Path:
        return self.run.codes_dir if self.dataset is None else self.run.encoded_codes_dir(self.dataset)

    @property
    def index_dir(self) -> Path:
        return self.run.index_dir(self.dataset)

    def index_paths(self, modality: str) -> tuple[Path, Path]:
        return self.index_dir / f"{modality}.faissindex", self.index_dir / f"{modality}.json"

    def read(self) -> dict[str, Any]:
        """{"item_id": (n,), "bits", "image_words", "text_words"} of every item this source searches."""
        from pipeline.ground.store.codes import read_codes

        if self.dataset is None:
            self.run.require_trained()
            return self.run.read_codes("database", unpack=False)  # checked against the count the run coded
        from pipeline.orchestration.encoding import read_encode_manifest

        manifest = read_encode_manifest(self.run, self.dataset, self.cache)
        fix = f"run `cmh encode --run {self.run.run_id} --dataset {self.dataset}` again"
        parts = [read_codes(self.codes_dir, s, unpack=False, fix=fix)
                 for s, size in (manifest.get("splits") or {}).items() if size]
        if not parts:
            raise CacheError(f"{self.label} of run {self.run.run_id} holds no codes: nothing to search or index")
        out = {"item_id": np.concatenate([p["item_id"] for p in parts]), "bits": parts[0]["bits"],
               **{f"{m}_words": np.concatenate([p[f"{m}_words"] for p in parts]) for m in MODALITIES}}
        if len(out["item_id"]) != manifest.get("items"):  # a part lost or replaced after the encoding finished
            raise CacheError(f"{self.codes_dir} holds codes of {len(out['item_id'])} of the {manifest.get('items')} "
                             f"items encoded (a part is missing or was replaced): {fix} to restore them")
        return out


def codes_fingerprint(item_id: np.ndarray, words: np.ndarray) -> str:
    h = hashlib.sha256(np.ascontiguousarray(item_id, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(words, dtype=np.uint64).tobytes())
    return h.hexdigest()[:16]


@dataclass
class IndexInfo:
    modality: str
    path: Path
    meta: dict[str, Any]


def build_indexes(cache: Cache, run: str, *, dataset: str | None = None, kind: str = "flat",
                  overrides: Mapping[str, Any] | None = None,
                  say: Callable[[str], None] = log.info) -> list[IndexInfo]:
    """Build and save the index of each modality's codes (replacing an earlier one of any kind)."""
    from stages.evaluate import binary_index

    binary_index.check_kind(kind)
    source = CodesSource(cache.find_run(run), dataset, cache)
    # the run's writer lock, held to the end: a `cmh rm`, training, encode or second index of the run meanwhile
    # is refused naming this process, and a killed build's leftovers can be told from a live one's files
    with run_lock(source.run.path, source.run.run_id, "indexing", create=False):
        return _build_held(cache, source, kind, overrides, say)


def _build_held(cache: Cache, source: CodesSource, kind: str, overrides: Mapping[str, Any] | None,
                say: Callable[[str], None]) -> list[IndexInfo]:
    """``build_indexes`` holding the run's writer lock."""
    from stages.evaluate import binary_index

    dataset = source.dataset
    config = cache.require_current(source.run)
    drop_leftovers(source.run.index_partials(dataset), "index build")
    codes = source.read()
    n, bits = len(codes["item_id"]), int(codes["bits"])
    if n == 0:
        raise CacheError(f"{source.label} of run {source.run.run_id} holds no codes: nothing to index")
    params = binary_index.default_params(kind, n, bits, overrides)
    out = []
    for modality in MODALITIES:
        words = codes[f"{modality}_words"]
        say(f"building the {kind} index of {n} {modality} codes of {source.label} "
            f"({', '.join(f'{k}={v}' for k, v in params.items()) or 'no parameters'})")
        t0 = time.perf_counter()
        index = binary_index.build_index(words, codes["item_id"], kind, params)
        build_s = time.perf_counter() - t0
        data = binary_index.to_bytes(index)
        index_path, meta_path = source.index_paths(modality)
        meta = {"run_id": source.run.run_id, "config_hash": config.get("config_hash"), "bits": bits,
                "kind": kind, "params": params, "rule": binary_index.PARAMETER_RULES[kind],
                "overridden": sorted(k for k, v in (overrides or {}).items() if v is not None),
                "n": n, "modality": modality, "source": dataset or "database",
                "codes_fingerprint": codes_fingerprint(codes["item_id"], words),
                "index_sha256": hashlib.sha256(data).hexdigest(), "index_bytes": len(data),
                "build_s": round(build_s, 3), "faiss": _faiss_version(),
                "exact": kind == "flat"}
        # the index first, then its record: a record always describes a complete file (checked by sha256)
        write_bytes_atomic(data, index_path)
        write_json_atomic(meta, meta_path)
        out.append(IndexInfo(modality, index_path, meta))
    return out


def _faiss_version() -> str:
    import faiss

    return faiss.__version__


#: Fields of an index record that ``load_index`` reads; a record without one of them is refused.
RECORD_FIELDS = ("run_id", "config_hash", "bits", "kind", "params", "codes_fingerprint", "index_sha256")


def load_index(source: CodesSource, modality: str, codes: Mapping[str, Any],
               say: Callable[[str], None] = log.info) -> tuple[Any, dict[str, Any]] | None:
    """The saved index over ``modality``'s codes of ``source``, checked against ``codes``; None when none is saved."""
    from stages.evaluate import binary_index

    index_path, meta_path = source.index_paths(modality)
    run_id = source.run.run_id
    rebuild = f"rebuild it with `cmh index --run {run_id}{f' --dataset {source.dataset}' if source.dataset else ''}`"
    if not meta_path.exists():
        if index_path.exists():  # the record is written last: its build was interrupted
            say(f"{index_path} is without its record {meta_path.name} (an interrupted build) and is not used; "
                f"{rebuild}")
        return None
    meta = read_json(meta_path, rebuild)
    if not isinstance(meta, dict) or any(f not in meta for f in RECORD_FIELDS):
        missing = [f for f in RECORD_FIELDS if f not in meta] if isinstance(meta, dict) else ["(not a JSON object)"]
        raise CacheError(f"{meta_path} is damaged (missing {', '.join(missing)}): {rebuild}")
    if not isinstance(meta["bits"], int) or not isinstance(meta["params"], dict):
        raise CacheError(f"{meta_path} is damaged (bits or params of the wrong type): {rebuild}")
    if meta.get("run_id") != run_id:
        raise CacheError(f"the index at {meta_path.parent} was built for run {meta.get('run_id')}, not {run_id}: "
                         f"{rebuild}")
    bits = int(codes["bits"])
    if meta["bits"] != bits:
        raise CacheError(f"the index at {meta_path.parent} holds {meta.get('bits')}-bit codes but run {run_id} has "
                         f"{bits}-bit codes: {rebuild}")
    config_hash = source.run.read_config().get("config_hash")
    if meta.get("config_hash") != config_hash:
        raise CacheError(f"run {run_id} changed since its index was built (config hash {meta.get('config_hash')} -> "
                         f"{config_hash}): {rebuild}")
    if meta.get("codes_fingerprint") != codes_fingerprint(codes["item_id"], codes[f"{modality}_words"]):
        raise CacheError(f"the {modality} codes of {source.label} changed since the index was built (retrained with "
                         f"--force or re-encoded): {rebuild}")
    if not index_path.exists():
        raise CacheError(f"{index_path} is missing though its record {meta_path.name} exists: {rebuild}")
    data = index_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != meta.get("index_sha256"):
        raise CacheError(f"{index_path} is not the file its record describes (an interrupted build or a copied "
                         f"file): {rebuild}")
    try:
        index = binary_index.from_bytes(data)
        binary_index.set_search_params(index, meta["kind"], meta["params"])
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise CacheError(f"{index_path} cannot be read by faiss ({(str(exc).splitlines() or [type(exc).__name__])[0][:120]}): "
                         f"{rebuild}") from None
    return index, meta
