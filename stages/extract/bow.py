"""Encoder ``bow``: a bag of words over each item's tags or captions (the papers' text input).

The vocabulary, by ``vocabulary`` setting:

* ``auto`` (default): the dataset's own when it ships one, else ``train``.
* ``dataset``: the dataset's precomputed matrix (``ItemTable.bow``, e.g. NUS-WIDE's YAll) when there
  is one, else its fixed vocabulary (``ItemTable.vocabulary``: MIRFlickr's 1,386 tags in DCMH ``YAll``
  column order, so the result equals ``YAll``). Fails when the dataset ships neither.
* ``train``: the ``top_n`` terms by document frequency over the *train* split only (ties broken
  alphabetically), so query items never shape the features.

Terms: a tag dataset's terms are its tags (lower-cased, stripped); a caption dataset's are lower-cased
alphanumeric words minus a small English stop-word list (see ``vocabulary_index`` for entries
naming several terms). Values are binary presence by default
(``binary=False``: counts, clipped at 255), stored as uint8. Terms outside the vocabulary are ignored.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.ground.item_table import ItemTable
from pipeline.ground.errors import ConfigError, DataError
from pipeline.ground.store.features import ColumnSpec
from stages.extract.base import Encoder, register_encoder

log = logging.getLogger(__name__)

#: Dropped from caption words only (tags are kept as given). A short list: articles, pronouns,
#: auxiliaries and prepositions that dominate COCO captions and carry no content.
STOP_WORDS = frozenset("""
a an the and or but of on in at to for from with by as is are was were be been being it its this that these
those there their they them he she his her him we our you your i me my am do does did has have had having not
no so than then too very can will just into onto over under up down out off while about above below near some
any each other such what which who whom how when where why all both few more most own same s t
""".split())

_WORD = re.compile(r"[a-z0-9]+")

#: Longest term kept. The longest English words and Flickr tags are far shorter; a longer "term" is a
#: pasted blob or a missing separator, and as a vocabulary entry it would be copied into the
#: provenance of every feature file.
MAX_TERM_CHARS = 64

BOW_PRESETS: Mapping[str, Mapping[str, Any]] = {}


@dataclass(frozen=True)
class BowConfig:
    vocabulary: str = "auto"  # auto | dataset | train (see the module docstring)
    top_n: int = 2000  # vocabulary size when built from the train split (COCO DAEH BoW is 2000-d)
    binary: bool = True  # presence (DCMH YAll is binary) rather than counts
    stop_words: bool = True  # drop STOP_WORDS from caption words (never from tags)


def terms(texts: Sequence[str], kind: str, stop_words: bool = True) -> list[str]:
    """One item's terms: its tags, or the content words of its captions."""
    if kind == "tags":
        return [t.strip().lower() for t in texts if t.strip() and len(t.strip()) <= MAX_TERM_CHARS]
    words = [w for text in texts for w in _WORD.findall(text.lower()) if len(w) <= MAX_TERM_CHARS]
    return [w for w in words if not (stop_words and w in STOP_WORDS)]


def top_terms(docs: Sequence[Sequence[str]], n: int) -> list[str]:
    """The n terms occurring in the most documents; ties broken alphabetically (deterministic)."""
    df = Counter(t for doc in docs for t in set(doc))
    return [t for t, _ in sorted(df.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def vocabulary_index(vocab: Sequence[str]) -> dict[str, list[int]]:
    """term -> its column(s). An entry ``a|b`` matches either term, and a repeated entry gives a term
    several columns: MIRFlickr's DCMH vocabulary has two ``save7|save8`` columns (the tags always
    co-occur, so the DCMH files cannot tell them apart), and both are set when either tag is present."""
    index: dict[str, list[int]] = {}
    for j, entry in enumerate(vocab):
        for term in {t.strip().lower() for t in entry.split("|") if t.strip()}:
            index.setdefault(term, []).append(j)
    return index


@register_encoder("bow", config=BowConfig, variants=BOW_PRESETS)
class BowEncoder(Encoder):
    """Bag of words over tags or captions: the dataset's vocabulary, or the train split's top-N terms."""

    inputs = frozenset({"text"})

    def __init__(self, cfg: BowConfig) -> None:
        if cfg.vocabulary not in ("auto", "dataset", "train"):
            raise ConfigError(f"bow vocabulary must be auto, dataset or train, got {cfg.vocabulary!r}")
        if cfg.top_n < 1:
            raise ConfigError(f"bow top_n must be >= 1, got {cfg.top_n}")
        self.cfg = cfg
        self.id = "bow"
        self.source: str | None = None  # dataset-matrix | dataset-vocabulary | train-top-n, set by prepare()
        self.vocab: list[str] = []
        self._index: dict[str, list[int]] = {}
        self._kind = "tags"
        self._matrix: np.ndarray | None = None  # (n, V) shipped BoW
        self.empty_rows: dict[str, int] = {}  # split -> items with no vocabulary term, set by prepare()
        self._row: dict[int, int] = {}  # item id -> row of _matrix
        self.columns: dict[str, ColumnSpec] = {}
        self.default_columns = {"text": ["bow"]}

    # -- fitting ----------------------------------------------------------------------------------
    def prepare(self, items: ItemTable, splits: Mapping[str, np.ndarray]) -> None:
        self.notes = []
        mode = self.cfg.vocabulary
        ships = items.bow is not None or items.vocabulary is not None
        if mode == "dataset" and not ships:
            raise ConfigError(f"dataset {items.dataset!r} ships no vocabulary or BoW matrix; "
                              f"use the bow setting vocabulary=train (top-{self.cfg.top_n} train terms)")
        self._kind = items.text_kind
        if mode != "train" and items.bow is not None:
            self.source = "dataset-matrix"
            self._matrix = np.asarray(items.bow)
            self._row = {int(i): r for r, i in enumerate(items.item_id)}
            self.vocab = list(items.vocabulary) if items.vocabulary is not None else []
            width = self._matrix.shape[1]
        elif mode != "train" and items.vocabulary is not None:
            self.source = "dataset-vocabulary"
            self.vocab = list(items.vocabulary)
            width = len(self.vocab)
        else:
            if "train" not in splits:
                raise DataError(f"bow vocabulary=train needs a train split; {items.dataset!r} has "
                                f"{', '.join(splits)}")
            row = {int(i): r for r, i in enumerate(items.item_id)}
            docs = [terms(items.texts[row[int(i)]], self._kind, self.cfg.stop_words) for i in splits["train"]]
            self.source = "train-top-n"
            self.vocab = top_terms(docs, self.cfg.top_n)
            width = len(self.vocab)
            if width < self.cfg.top_n:
                self.notes.append((logging.WARNING, f"bow: the train split has only {width} distinct terms "
                                                    f"(< top_n={self.cfg.top_n})"))
        if width == 0:
            raise DataError(f"bow: empty vocabulary for dataset {items.dataset!r} ({self.source})")
        self._index = vocabulary_index(self.vocab)
        self.columns = {"bow": ColumnSpec(width, "uint8", "text")}
        self.notes.append((logging.INFO, f"bow: {width} terms from {self.source} ({self._kind})"))
        self.empty_rows = self._count_empty_rows(items, splits)

    def _count_empty_rows(self, items: ItemTable, splits: Mapping[str, np.ndarray]) -> dict[str, int]:
        """Per split, how many items get an all-zero bag of words (no term in the vocabulary); warned, recorded.

        Such items are kept (their image still counts for image queries) but every text code of theirs
        is the same, so a large count means the vocabulary does not fit the texts."""
        row = {int(i): r for r, i in enumerate(items.item_id)}
        counts: dict[str, int] = {}
        for split, members in splits.items():
            rows = [row[int(i)] for i in members if int(i) in row]
            if self._matrix is not None:
                counts[split] = int((np.asarray(self._matrix[rows]) == 0).all(axis=1).sum()) if rows else 0
            else:
                counts[split] = sum(not any(t in self._index for t in terms(items.texts[r], self._kind,
                                                                            self.cfg.stop_words)) for r in rows)
        if any(counts.values()):
            self.notes.append((logging.WARNING, f"bow: items whose text has no term of the "
                               f"{len(self.vocab) or self.columns['bow'].dim}-term vocabulary (all-zero bag of words): "
                               + ", ".join(f"{s} {counts[s]} of {len(splits[s])}" for s in counts)))
        return counts

    def _require_prepared(self) -> None:
        if self.source is None:
            raise RuntimeError("BowEncoder.prepare(items, splits) must run before config()/encode()")

    def config(self) -> dict[str, Any]:
        self._require_prepared()
        vocab_sha = hashlib.sha256("\n".join(self.vocab).encode()).hexdigest()[:16]
        return {"kind": "bow", **dataclasses.asdict(self.cfg), "source": self.source, "text_kind": self._kind,
                "vocab_size": self.columns["bow"].dim, "vocab_sha256": vocab_sha}

    def provenance(self) -> dict[str, Any]:
        self._require_prepared()
        return {"source": self.source, "vocab_size": self.columns["bow"].dim, "vocabulary": self.vocab,
                "rows_without_terms": dict(self.empty_rows),
                "tokenizer": ("tags as terms" if self._kind == "tags"
                              else "lowercase [a-z0-9]+ words, stop words dropped")}

    # -- queries typed by people -------------------------------------------------------------------
    def query_terms(self, text: str) -> tuple[list[str], list[str]]:
        """(vocabulary terms, unknown words) of a typed query: commas and spaces both separate terms,
        case is ignored; a tag vocabulary's multi-word entry matches when typed between commas."""
        self._require_prepared()
        words: list[str] = []
        for piece in (p.strip().lower() for p in text.split(",")):
            if not piece:
                continue
            if self._kind == "tags" and piece in self._index:
                words.append(piece)
            elif self._kind == "tags":
                words += [w for w in piece.split() if len(w) <= MAX_TERM_CHARS]
            else:
                words += [w for w in _WORD.findall(piece) if len(w) <= MAX_TERM_CHARS]
        words = list(dict.fromkeys(words))
        known = [w for w in words if w in self._index]
        unknown = [w for w in words if w not in self._index and not (self._kind != "tags" and w in STOP_WORDS)]
        return known, unknown

    def close_terms(self, word: str, n: int = 5) -> list[str]:
        import difflib

        return difflib.get_close_matches(word, list(self._index), n=n, cutoff=0.6)

    # -- encoding ---------------------------------------------------------------------------------
    def encode(self, images: Any, texts: Sequence[Sequence[str]] | None, item_ids: np.ndarray) -> dict[str, np.ndarray]:
        self._require_prepared()
        if self._matrix is not None:
            rows = np.array([self._row[int(i)] for i in item_ids], dtype=np.int64)
            x = np.asarray(self._matrix[rows])
            return {"bow": (x > 0).astype(np.uint8) if self.cfg.binary else np.minimum(x, 255).astype(np.uint8)}
        if texts is None:
            raise ValueError("the bow encoder needs texts")
        out = np.zeros((len(item_ids), len(self.vocab)), dtype=np.int64)  # (m, V)
        for r, item_texts in enumerate(texts):
            for t in terms(item_texts, self._kind, self.cfg.stop_words):
                for j in self._index.get(t, ()):
                    out[r, j] += 1
        out = (out > 0) if self.cfg.binary else np.minimum(out, 255)
        return {"bow": out.astype(np.uint8)}
