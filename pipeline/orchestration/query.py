"""``cmh query``: encode one new image or text with a trained run, rank its database by Hamming distance.

The run is loaded by :class:`pipeline.orchestration.searcher.Searcher` (the search service loads the same
one and keeps it), with only the encoders of the query's modality.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pipeline.ground.images import load_query_image
from pipeline.ground.errors import ConfigError
from pipeline.ground.paths import require_folder
from pipeline.ground.store.cache import Cache
from pipeline.orchestration.searcher import TARGET, Searcher

log = logging.getLogger(__name__)


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
    if req.html is not None and req.html.is_dir():
        raise ConfigError(f"--html {str(req.html)!r} is a folder: give the page's file name, e.g. "
                          f"{str(req.html / 'query.html')!r}")
    if req.html is not None and req.html.suffix.lower() not in (".html", ".htm"):
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
    # Every input is checked before the run's encoders and model are loaded (seconds): a typo fails at once.
    if top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {top_k}")
    if text is not None and not text.strip():
        raise ConfigError("the query text is empty: give some words, e.g. --text \"dog, beach\"")
    picture = load_query_image(str(image)) if image is not None else None  # exists, is a file, decodes
    cache.find_run(run)  # a run that is not cached, with the near matches
    modality = "image" if image is not None else "text"
    searcher = Searcher(cache, run, dataset=dataset, modalities=(modality,), say=say)
    if picture is not None:
        words = searcher.encode_image(picture)
    else:
        read = searcher.read_text(text or "")
        if read.said():
            say(read.said())
        words = searcher.encode_text(read)
    target = TARGET[modality]
    found = searcher.search(words, target, top_k)
    say(searcher.kinds[target].note)
    items = searcher.items
    rows = []
    for rank, (item, d) in enumerate(found, start=1):
        r = searcher.row(item)
        if r is None:  # codes of an item the table no longer has: said in the row rather than dropped
            rows.append((rank, item, d, "(not in the cached item table)", ""))
            continue
        rows.append((rank, item, d, ", ".join(items.texts[r])[:80], items.image[r]))
    return rows
