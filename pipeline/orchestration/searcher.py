"""A trained run loaded for searching: its encoders, model, codes, index (or exact search) and item table.

``cmh query`` builds one for a single query and drops it; ``cmh serve`` builds one at start and answers
every request with it. Either way a query goes through the encoders rebuilt from the cache manifests
the run recorded and through the run's own model (``stages.train.coding.codes``), so it is encoded
exactly like the run's query split was: from its own modality alone.

Loading refuses what ``cmh query`` refuses (an unfinished run, a stale encoding, a stale or damaged
index) before anything is searched. A ``Searcher`` is not safe to call from two threads at once: the
torch model is shared; the search service serialises its calls.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pipeline.ground.errors import ConfigError, WeightsError
from pipeline.ground.item_table import ItemTable
from pipeline.ground.store.aligned import AlignedFeatures, FeatureRef
from pipeline.ground.store.cache import Cache, DatasetCache
from pipeline.ground.store.codes import pack_codes
from pipeline.orchestration.indexing import CodesSource, load_index

log = logging.getLogger(__name__)

MODALITIES = ("image", "text")
#: What a query of one modality searches: the other modality's codes.
TARGET = {"image": "text", "text": "image"}


class NoKnownTerms(ConfigError):
    """A typed query that no encoder can read: empty, or with no term in the run's vocabulary.

    ``close`` holds the vocabulary terms nearest to the words typed (none for an empty text) and
    ``examples`` a few terms of the vocabulary, so a caller other than the CLI (the search service) can
    offer them on their own."""

    def __init__(self, message: str, close: Sequence[str], examples: Sequence[str]) -> None:
        super().__init__(message)
        self.close = list(close)
        self.examples = list(examples)


@dataclass
class QueryText:
    """What one typed text becomes: the texts each text encoder reads, the vocabulary terms matched and
    the words ignored (not in any vocabulary)."""

    texts: dict[str, list[str]]  # encoder id -> texts of the one query item
    matched: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def said(self) -> str | None:
        if not self.matched:
            return None
        return (f"query terms in the vocabulary: {_listed(self.matched)}"
                + (f" (not in it, ignored: {_listed(self.ignored)})" if self.ignored else ""))


#: Most words of a typed query that a message lists, or that are looked up for close vocabulary terms (each
#: lookup compares the word with every term: a pasted page of text would take minutes and print a page).
SAID_WORDS = 20


def _listed(words: Sequence[str]) -> str:
    """``a, b, c``, the first ``SAID_WORDS`` of them, and how many more."""
    more = len(words) - SAID_WORDS
    return ", ".join(words[:SAID_WORDS]) + (f" and {more} more" if more > 0 else "")


def _quoted(text: str, most: int = 80) -> str:
    """``text`` quoted for a one-line message, cut (and its length said) when longer than ``most``."""
    return repr(text) if len(text) <= most else f"{text[:most]!r}... ({len(text)} characters)"


@dataclass(frozen=True)
class SearchKind:
    """How one modality's codes are searched: a saved index (its kind and parameters) or exact search."""

    kind: str  # exact | flat | ivf | hash | multihash
    approximate: bool
    note: str  # the sentence that tells a user (``cmh query`` says it after each search)


def encoder_for(ds: DatasetCache, encoder_id: str) -> Any:
    """The encoder that made ``encoder_id``'s features of ``ds``, rebuilt from its manifest and prepared."""
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


class Searcher:
    """One run, loaded once, that encodes typed texts and pictures and ranks the codes it searches.

    ``dataset``: search every item of a dataset the run encoded (``cmh encode``) instead of its database.
    ``modalities``: the query modalities to load encoders for (``cmh query`` loads one, the service both).
    """

    def __init__(self, cache: Cache, run: str, *, dataset: str | None = None,
                 modalities: Sequence[str] = MODALITIES, say: Callable[[str], None] = log.info) -> None:
        from stages.train import methods  # noqa: F401  (registers every method)
        from stages.train.base import load_method

        self.cache = cache
        self.run = cache.find_run(run)
        self.run.require_trained()
        self.config = cache.require_current(self.run)  # its encoders and items are read from the cache as it is now
        self.searched = dataset  # None: the run's own database
        self.ds = cache.dataset(self.config["dataset"])  # queries are encoded with the run's dataset's encoders
        if dataset is not None:
            from pipeline.orchestration.encoding import read_encode_manifest

            read_encode_manifest(self.run, dataset, cache)  # refuse before the encoders load
        self.modalities = tuple(modalities)
        self.refs: dict[str, list[FeatureRef]] = {
            m: self.ds.feature_refs(self.config[f"{m}_features"], m) for m in self.modalities}
        self.encoders: dict[str, Any] = {}
        for refs in self.refs.values():
            for ref in refs:
                if ref.encoder not in self.encoders:
                    self.encoders[ref.encoder] = encoder_for(self.ds, ref.encoder)
        self.method = load_method(self.run.model_path, method=self.config["method"], bits=self.config["bits"],
                                  run_id=self.config.get("run_id"))
        self.source = CodesSource(self.run, dataset, cache)
        codes = self.source.read()
        self.n = len(codes["item_id"])
        if self.n == 0:
            raise ConfigError(f"{self.source.label} of run {self.run.run_id} holds no codes to search")
        self.bits = int(codes["bits"])
        self.item_ids: np.ndarray = codes["item_id"]
        self._words: dict[str, np.ndarray] = {}
        self._index: dict[str, tuple[Any, dict[str, Any]] | None] = {}
        self.kinds: dict[str, SearchKind] = {}
        for modality in self.modalities:
            target = TARGET[modality]
            self._words[target] = codes[f"{target}_words"]
            self._index[target] = load_index(self.source, target, codes, say)
            self.kinds[target] = self._kind(target)
        self.items: ItemTable = (cache.dataset(dataset) if dataset else self.ds).items
        self.row_of = {int(i): r for r, i in enumerate(self.items.item_id)}

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def dataset(self) -> str:
        """The dataset whose items are searched."""
        return self.searched or self.config["dataset"]

    def _kind(self, target: str) -> SearchKind:
        saved = self._index[target]
        where = f"{self.n} {target} codes of {self.source.label}"
        if saved is None:
            return SearchKind("exact", False, f"exact search over {where} (no index: `cmh index` builds one)")
        meta = saved[1]
        params = ", ".join(f"{key}={value}" for key, value in meta["params"].items())
        exact = bool(meta.get("exact"))
        return SearchKind(meta["kind"], not exact, f"searched the {meta['kind']} index of {where}"
                          + (f" ({params}; approximate: it may miss neighbours)" if not exact else " (exact)"))

    # -- queries ------------------------------------------------------------------------------------------
    def read_text(self, text: str) -> QueryText:
        """The texts each text encoder reads for a typed query. A bag of words gets its vocabulary terms
        (commas and spaces both separate, case ignored); a query with no term is refused, since an all-zero
        input ties every database item. A sentence encoder (CLIP) reads the text as typed."""
        self._require("text")
        bags = [e for e in self._text_encoders() if hasattr(e, "query_terms")]
        if not text.replace(",", " ").strip():  # separators only (" , ,") are as empty as ""
            examples = bags[0].vocab[:8] if bags else []
            raise NoKnownTerms("the query text is empty: give some words, e.g. --text \"dog, beach\"", [], examples)
        out = QueryText({})
        for encoder_id, encoder in self._text_encoders(ids=True):
            if not hasattr(encoder, "query_terms"):
                out.texts[encoder_id] = [text.strip()]
                continue
            known, unknown = encoder.query_terms(text)
            if not known:
                close = sorted({c for w in unknown[:SAID_WORDS] for c in encoder.close_terms(w)})
                hint = (f"; close terms: {', '.join(close)}" if close
                        else f"; none is close, its terms are like: {', '.join(encoder.vocab[:8])}")
                raise NoKnownTerms(f"no word of the query {_quoted(text)} is in the run's {len(encoder.vocab)}-term "
                                   f"vocabulary{hint} (the vocabulary is in the features' _manifest.json)",
                                   close, encoder.vocab[:8])
            out.texts[encoder_id] = known
            out.matched = list(dict.fromkeys([*out.matched, *known]))  # in order, once each
            out.ignored = list(dict.fromkeys([*out.ignored, *unknown]))
        return out

    def encode_text(self, query: QueryText) -> np.ndarray:
        """The packed code words (1, W) of a read text."""
        outputs = {e: self.encoders[e].encode(None, [texts], np.array([-1])) for e, texts in query.texts.items()}
        return self._code("text", outputs)

    def encode_image(self, picture: Any) -> np.ndarray:
        """The packed code words (1, W) of a picture (an RGB ``PIL.Image``)."""
        self._require("image")
        outputs = {}
        for encoder_id in dict.fromkeys(r.encoder for r in self.refs["image"]):
            encoder = self.encoders[encoder_id]
            pixels = encoder.image_transform()(picture).unsqueeze(0)
            outputs[encoder_id] = encoder.encode(pixels, None, np.array([-1]))
        return self._code("image", outputs)

    def _code(self, modality: str, outputs: dict[str, dict[str, np.ndarray]]) -> np.ndarray:
        from stages.train import coding

        refs = self.refs[modality]
        parts = {ref.key: np.asarray(outputs[ref.encoder][ref.column], dtype=np.float32) for ref in refs}
        features = AlignedFeatures("query", np.array([-1]), parts if modality == "image" else {},
                                   parts if modality == "text" else {}, np.zeros((1, 0), np.uint8))
        return pack_codes(coding.codes(self.method, features, (modality,))[modality])

    def search(self, words: np.ndarray, target: str, top_k: int) -> list[tuple[int, int]]:
        """(item id, Hamming distance) of the top-k ``target`` codes, with the saved index when there is one,
        by exact search otherwise (ties in database order for exact and ``flat``). ``top_k`` is capped at N."""
        k = min(top_k, self.n)
        saved = self._index[target]
        if saved is not None:
            from stages.evaluate.binary_index import search

            ids, dist = search(saved[0], words, k)
            return [(int(i), int(d)) for i, d in zip(ids[0], dist[0]) if i >= 0]
        from stages.evaluate.hamming import topk

        idx, dist = topk(words, self._words[target], k)
        return [(int(self.item_ids[j]), int(d)) for j, d in zip(idx[0], dist[0])]

    # -- items --------------------------------------------------------------------------------------------
    def row(self, item_id: int) -> int | None:
        """The item table row of a searched item, or None when the table has no such item."""
        return self.row_of.get(int(item_id))

    def _text_encoders(self, ids: bool = False) -> list[Any]:
        names = list(dict.fromkeys(r.encoder for r in self.refs["text"]))
        return [(n, self.encoders[n]) for n in names] if ids else [self.encoders[n] for n in names]

    def _require(self, modality: str) -> None:
        if modality not in self.modalities:
            raise ConfigError(f"this searcher loaded no {modality} encoder (modalities: {', '.join(self.modalities)})")
