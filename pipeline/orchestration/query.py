"""Retrieval with a trained run: encode a new image or text, rank the run's database by Hamming distance.

The query goes through the same encoders (rebuilt from the cache manifests the run recorded) and the
run's own trained model, so it is encoded exactly like the query split was: from its own modality alone.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.ground.images import load_image
from pipeline.ground.paths import require_folder
from pipeline.ground.errors import CacheError, ConfigError, WeightsError
from pipeline.ground.store.aligned import AlignedFeatures, FeatureRef
from pipeline.ground.store.cache import Cache, DatasetCache
from pipeline.ground.store.codes import pack_codes
from pipeline.ground.store.lineage import train_command
from pipeline.orchestration.indexing import CodesSource, load_index
from stages.evaluate.hamming import topk

log = logging.getLogger(__name__)


def _encoder_for(ds: DatasetCache, encoder_id: str):
    from stages.extract import ENCODERS, create_encoder, load_encoders

    load_encoders()  # a fresh process (the CLI) has registered none yet
    manifest = ds.manifest(encoder_id)
    config = dict(manifest["encoder_config"])
    entry = ENCODERS.get(config.get("kind", encoder_id.split(".")[0]))
    fields = {f.name for f in dataclasses.fields(entry.config)}
    options = {k: v for k, v in config.items() if k in fields}
    pretrained = options.get("pretrained")
    if isinstance(pretrained, str) and pretrained.startswith("file:"):
        path = (manifest.get("provenance", {}).get("weights") or {}).get("path")
        if not path or not Path(path).exists():
            raise WeightsError(f"run features came from a local CLIP weights file ({pretrained}) that is not at "
                               f"{path!r}: pass it again with CLIP_WEIGHTS=/path/to/file")
        options["pretrained"] = path
    encoder = create_encoder(entry.name, **options)
    if hasattr(encoder, "prepare"):
        encoder.prepare(ds.items, ds.splits)
    return encoder


def _query_texts(encoder: Any, text: str, say: Callable[[str], None]) -> list[str]:
    """The texts one encoder reads for a typed query. A bag of words gets its vocabulary terms (commas and
    spaces both separate, case ignored; the matches are shown); one with no term is refused, since an
    all-zero input ties every database item."""
    if not text.strip():
        raise ConfigError("the query text is empty: give some words, e.g. --text \"dog, beach\"")
    if not hasattr(encoder, "query_terms"):
        return [text.strip()]  # a sentence encoder (CLIP) reads the text as typed
    known, unknown = encoder.query_terms(text)
    if not known:
        close = sorted({c for w in unknown for c in encoder.close_terms(w)})
        hint = (f"; close terms: {', '.join(close)}" if close
                else f"; none is close, its terms are like: {', '.join(encoder.vocab[:8])}")
        raise ConfigError(f"no word of the query {text!r} is in the run's {len(encoder.vocab)}-term vocabulary"
                          f"{hint} (the vocabulary is in the features' _manifest.json)")
    say(f"query terms in the vocabulary: {', '.join(known)}"
        + (f" (not in it, ignored: {', '.join(unknown)})" if unknown else ""))
    return known


def _features(ds: DatasetCache, refs: list[FeatureRef], image: Path | None, text: str | None,
              say: Callable[[str], None] = log.info) -> AlignedFeatures:
    """The query's features, one item of one modality, from the run's own encoders."""
    by_encoder: dict[str, list[str]] = {}
    for ref in refs:
        by_encoder.setdefault(ref.encoder, []).append(ref.column)
    outputs: dict[str, dict[str, np.ndarray]] = {}
    for encoder_id in by_encoder:
        encoder = _encoder_for(ds, encoder_id)
        if image is not None:
            pixels = encoder.image_transform()(load_image(str(image))).unsqueeze(0)
            outputs[encoder_id] = encoder.encode(pixels, None, np.array([-1]))
        else:
            outputs[encoder_id] = encoder.encode(None, [_query_texts(encoder, text, say)], np.array([-1]))
    parts = {ref.key: np.asarray(outputs[ref.encoder][ref.column], dtype=np.float32) for ref in refs}
    modality = "image" if image is not None else "text"
    return AlignedFeatures("query", np.array([-1]), parts if modality == "image" else {},
                           parts if modality == "text" else {}, np.zeros((1, 0), np.uint8))


@dataclass
class QueryRequest:
    run: str  # run id or folder
    text: str | None = None
    image: Path | None = None
    top_k: int = 10
    dataset: str | None = None  # search a dataset the run encoded instead of its database
    html: Path | None = None  # also write the result as a self-contained gallery page


@dataclass
class QueryResult:
    rows: list[tuple[Any, ...]]  # (rank, item_id, hamming, texts, image)
    html: Path | None = None


def query(cache: Cache, req: QueryRequest, say: Callable[[str], None] = log.info) -> QueryResult:
    """``cmh query``: the top-k rows for one new image or text, and its gallery page when asked."""
    if (req.text is None) == (req.image is None):
        raise ConfigError("give exactly one of --text or --image")
    if req.html is not None and (req.html.is_dir() or req.html.suffix.lower() not in (".html", ".htm")):
        raise ConfigError(f"--html expects a file name ending in .html, got {str(req.html)!r}")
    if req.html is not None:
        require_folder(req.html.parent, "--html's folder")  # before the search, not after it
    rows = query_run(cache, req.run, text=req.text, image=req.image, top_k=req.top_k, dataset=req.dataset, say=say)
    page = None
    if req.html is not None:
        from stages.present.html.query_page import write_query_page

        page = write_query_page(cache, req.run, rows, req.html, text=req.text, image=req.image)
    return QueryResult(rows, page)


def query_run(cache: Cache, run: str, *, text: str | None = None, image: Path | None = None,
              top_k: int = 10, dataset: str | None = None,
              say: Callable[[str], None] = log.info) -> list[tuple[Any, ...]]:
    """Rows (rank, item_id, hamming, texts, image) of the top-k database items for one new query.

    ``dataset``: search every item of a dataset the run encoded (``cmh encode``) instead of its database.
    ``say`` receives what the user should see about the query itself (the vocabulary terms matched, the
    search used: a saved index or exact)."""
    if top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {top_k}")
    from stages.train import coding
    from stages.train import methods  # noqa: F401  (registers every method)
    from stages.train.base import load_method

    run_dir = cache.find_run(run)
    run_dir.require_trained()
    config = cache.require_current(run_dir)  # its encoders and items are read from the cache as it is now
    searched = dataset  # None: the run's own database
    ds = cache.dataset(config["dataset"])  # the query is encoded with the encoders of the run's dataset
    if searched is not None:
        from pipeline.orchestration.encoding import read_encode_manifest

        read_encode_manifest(run_dir, searched, cache)  # refuse before the encoders load
    modality = "image" if image is not None else "text"
    refs = ds.feature_refs(config[f"{modality}_features"], modality)
    method = load_method(run_dir.model_path)
    code = coding.codes(method, _features(ds, refs, image, text, say), (modality,))[modality]
    target = "text" if modality == "image" else "image"
    found = _search(CodesSource(run_dir, searched, cache), target, pack_codes(code), top_k, say)
    items = (cache.dataset(searched) if searched else ds).items
    row_of = {int(i): r for r, i in enumerate(items.item_id)}
    unknown = [item for item, _ in found if item not in row_of]
    if unknown:  # codes of items the cache no longer holds: showing other items under their ids would mislead
        fix = (f"`cmh encode --run {run_dir.run_id} --dataset {searched}`" if searched
               else f"`{train_command(config)} --force`")
        raise CacheError(f"the codes searched name item(s) {unknown[:5]} that {(searched or ds.name)!r} no longer "
                         f"holds (the dataset was extracted again since they were written): make them again with "
                         f"{fix}")
    rows = []
    for rank, (item, d) in enumerate(found, start=1):
        r = row_of[item]
        rows.append((rank, item, d, ", ".join(items.texts[r])[:80], items.image[r]))
    return rows


def _search(source: CodesSource, target: str, q_words: np.ndarray, top_k: int,
            say: Callable[[str], None]) -> list[tuple[int, int]]:
    """(item id, Hamming distance) of the top-k ``target`` codes of ``source``: with its saved index when
    there is one (said), by exact search otherwise. Ties are in database order either way for ``flat``."""
    codes = source.read()
    n = len(codes["item_id"])
    if n == 0:
        raise ConfigError(f"{source.label} of run {source.run.run_id} holds no codes to search")
    k = min(top_k, n)
    saved = load_index(source, target, codes, say)
    if saved is not None:
        from stages.evaluate.binary_index import search

        index, meta = saved
        params = ", ".join(f"{key}={value}" for key, value in meta["params"].items())
        say(f"searched the {meta['kind']} index of {n} {target} codes of {source.label}"
            + (f" ({params}; approximate: it may miss neighbours)" if not meta.get("exact") else " (exact)"))
        ids, dist = search(index, q_words, k)
        return [(int(i), int(d)) for i, d in zip(ids[0], dist[0]) if i >= 0]
    say(f"exact search over {n} {target} codes of {source.label} (no index: `cmh index` builds one)")
    idx, dist = topk(q_words, codes[f"{target}_words"], k)
    return [(int(codes["item_id"][j]), int(d)) for j, d in zip(idx[0], dist[0])]
