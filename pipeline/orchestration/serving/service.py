"""The search service: one loaded run answering text, picture, item and thumbnail requests.

The encoders and the model run on one thread of their own (``_model``): every encode and search is
queued there, so concurrent requests are served in arrival order and torch never sees two threads in
one model. Decoding uploads and making thumbnails happen on the server's worker threads, beside it.
Answers are plain dicts (the JSON of the API, also what the page renders).
"""
from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import anyio.to_thread
import numpy as np

from pipeline.ground.store.cache import Cache
from pipeline.orchestration.searcher import TARGET, NoKnownTerms, Searcher
from pipeline.orchestration.serving.freshness import Freshness
from pipeline.orchestration.serving.refusals import Refusal
from pipeline.orchestration.serving.upload import MAX_PIXELS, preview_uri, read_picture

log = logging.getLogger(__name__)

DEFAULT_K = 10
#: Longest query text read; a longer one is refused rather than tokenised (a tag query is a few words).
MAX_TEXT_CHARS = 1000


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 20_000_000  # 20 MB: a large phone photo, with room to spare
    max_pixels: int = MAX_PIXELS
    freshness_s: float = 0.2  # how often the run's files on disk are compared with those loaded


def _one_search_thread() -> None:
    """faiss searches one query at a time here: its OpenMP team only adds waits (on a busy 2-core machine a
    single IVF query took 8.6 ms with two threads and 0.01 ms with one)."""
    import faiss

    faiss.omp_set_num_threads(1)


class SearchService:
    """A run loaded once (refusing a stale run, encoding or index as ``cmh query`` does), then searched."""

    def __init__(self, cache: Cache, run: str, *, dataset: str | None = None, limits: Limits = Limits(),
                 say: Callable[[str], None] = log.info) -> None:
        from stages.present.html.thumbnails import ThumbnailStore

        t0 = time.perf_counter()
        self.searcher = Searcher(cache, run, dataset=dataset, say=say)
        self.freshness = Freshness(self.searcher, limits.freshness_s)
        self.limits = limits
        self.cache = cache
        self.thumbs = ThumbnailStore(cache.reports_dir, self.searcher.dataset)
        self._thumbs_lock = threading.Lock()  # the store's counters and memo are not thread-safe
        self._model = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cmh-model", initializer=_one_search_thread)
        self._stale_said = False
        self.started = time.time()
        self.load_s = time.perf_counter() - t0
        for target, kind in self.searcher.kinds.items():
            say(f"{'text' if target == 'image' else 'image'} queries: {kind.note}")

    # -- what the service is ------------------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        return self.searcher.run_id

    def restart_command(self) -> str:
        dataset = f" --dataset {self.searcher.searched}" if self.searcher.searched else ""
        return f"cmh serve --run {self.run_id}{dataset}"

    def health(self) -> dict[str, Any]:
        s = self.searcher
        change = self.freshness.change()
        return {"status": "ok" if change is None else "stale", "run": s.run_id, "method": s.config.get("method"),
                "dataset": s.dataset, "trained_on": s.config["dataset"], "n": s.n, "bits": s.bits,
                "index": {("text" if t == "image" else "image") + "_queries": k.kind for t, k in s.kinds.items()},
                "code_version": s.config.get("code_version"), "git": s.config.get("git"),
                "uptime_s": round(time.time() - self.started, 1), "load_s": round(self.load_s, 2),
                "stale": None if change is None else f"{change.what}: {change.path}"}

    def info(self) -> dict[str, Any]:
        """What the search page says about the run it searches."""
        s = self.searcher
        return {"run": s.run_id, "method": s.config.get("method"), "bits": s.bits, "dataset": s.dataset, "n": s.n,
                "search": {m: s.kinds[TARGET[m]].kind for m in s.modalities},
                "approximate": {m: s.kinds[TARGET[m]].approximate for m in s.modalities},
                "max_k": s.n}

    def check_fresh(self) -> None:
        """A 409 naming the restart when the run's files changed since they were loaded."""
        change = self.freshness.change()
        if change is None:
            return
        if not self._stale_said:
            self._stale_said = True
            log.warning("run %s changed on disk since it was loaded (%s: %s); searches answer 409 until "
                        "`%s` is started again", self.run_id, change.what, change.path, self.restart_command())
        if change.removed and not self.searcher.run.path.is_dir():
            raise Refusal(409, f"run {self.run_id} was removed from the cache since this server loaded it",
                          "stop this server: train the run again (`cmh train`) and restart it, or serve another run "
                          "(`cmh ls` lists them)")
        fix = "to search the new codes" if not change.removed else "(it refuses the run until what is missing is made again)"
        raise Refusal(409, f"run {self.run_id} changed on disk since this server loaded it: {change.what}",
                      f"restart the server (`{self.restart_command()}`) {fix}")

    def top_k(self, raw: str | None) -> int:
        """``k`` of a request: 1..N, DEFAULT_K (at most N) when not given."""
        n = self.searcher.n
        if raw is None or raw == "":
            return min(DEFAULT_K, n)
        # decimal ASCII digits only: int() would also read "1_0", " 3 " and other scripts' digits
        if not re.fullmatch(r"-?[0-9]+", raw):
            raise Refusal(400, f"k must be a whole number, got {raw[:40]!r}", f"give k from 1 to {n}")
        # more than 18 digits is out of range whatever they are (and int() refuses over 4300 of them)
        if len(raw.lstrip("-")) > 18 or not 1 <= int(raw) <= n:
            raise Refusal(400, f"k={raw[:40]} is out of range: {n} items are searched", f"give k from 1 to {n}")
        return int(raw)

    # -- searches -----------------------------------------------------------------------------------------
    async def search_text(self, text: str | None, k: str | None) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.check_fresh()
        top_k = self.top_k(k)
        if text is None:
            raise Refusal(400, "no query text", "give one: /api/search?text=dog,beach")
        if len(text) > MAX_TEXT_CHARS:
            raise Refusal(400, f"the query text has {len(text)} characters, more than {MAX_TEXT_CHARS}",
                          "type a few words or tags")
        return await self._on_model(self._text, text, top_k, t0)

    async def search_image(self, data: bytes, k: str | None, *, preview: bool = False) -> dict[str, Any]:
        """``preview``: add ``query_preview``, a small JPEG of the picture as a data URI (for the page)."""
        t0 = time.perf_counter()
        self.check_fresh()
        top_k = self.top_k(k)
        picture = await anyio.to_thread.run_sync(read_picture, data, self.limits.max_pixels)
        answer = await self._on_model(self._image, picture, top_k, t0)
        if preview:
            answer["query_preview"] = await anyio.to_thread.run_sync(preview_uri, picture)
        return answer

    async def _on_model(self, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        """Run ``fn`` on the model's own thread, after every call queued before it."""
        return await asyncio.wrap_future(self._model.submit(fn, *args))

    def _text(self, text: str, k: int, t0: float) -> dict[str, Any]:
        s = self.searcher
        try:
            read = s.read_text(text)
        except NoKnownTerms as exc:
            if not text.strip():
                what, fix = "the query text is empty", f"type some words, e.g. {', '.join(exc.examples[:3]) or 'dog, beach'}"
            elif exc.close:
                what, fix = (f"no word of {text[:80]!r} is in the run's vocabulary",
                             f"try close terms: {', '.join(exc.close)}")
            else:
                what, fix = (f"no word of {text[:80]!r} is in the run's vocabulary, and none is close",
                             f"its terms are like: {', '.join(exc.examples)}")
            raise Refusal(400, what, fix, close_terms=exc.close or exc.examples) from None
        found = s.search(s.encode_text(read), "image", k)
        return self._answer("text", found, t0, matched=read.matched, ignored=read.ignored)

    def _image(self, picture: Any, k: int, t0: float) -> dict[str, Any]:
        s = self.searcher
        found = s.search(s.encode_image(picture), "text", k)
        return self._answer("image", found, t0)

    def _answer(self, modality: str, found: list[tuple[int, int]], t0: float, *, matched: list[str] | None = None,
                ignored: list[str] | None = None) -> dict[str, Any]:
        kind = self.searcher.kinds[TARGET[modality]]
        results = [{"rank": rank, "hamming": d, **self.item(item_id)} for rank, (item_id, d) in enumerate(found, 1)]
        return {"run": self.run_id, "dataset": self.searcher.dataset, "modality": modality,
                "matched_terms": matched or [], "ignored_terms": ignored or [], "search": kind.kind,
                "approximate": kind.approximate, "took_ms": round(1e3 * (time.perf_counter() - t0), 3),
                "results": results}

    # -- items --------------------------------------------------------------------------------------------
    def item(self, item_id: int) -> dict[str, Any]:
        """An item's texts, labels and picture URL; a 404 when the searched dataset has no such item."""
        s = self.searcher
        row = s.row(item_id)
        if row is None:
            raise Refusal(404, f"no item {item_id} in dataset {s.dataset!r}",
                          "take item ids from a search result (its item_id)")
        items = s.items
        sep = ", " if items.text_kind == "tags" else " / "
        labels = [items.label_names[j] for j in np.flatnonzero(items.labels[row])]
        return {"item_id": int(item_id), "text": sep.join(items.texts[row]), "texts": list(items.texts[row]),
                "text_kind": items.text_kind, "labels": labels, "image_url": f"/thumbs/{int(item_id)}.jpg"}

    def thumbnail(self, item_id: int) -> Path:
        """The item's thumbnail file, made on first use in the shared thumbnail store under the cache."""
        self.item(item_id)  # 404 for an unknown item
        ref = self.searcher.items.image[self.searcher.row(item_id)]
        try:
            with self._thumbs_lock:
                thumb = self.thumbs.get(item_id, ref)
        except OSError as exc:  # the store's folder is a file, read-only or on a full disk: the server's, not the request's
            log.warning("thumbnail of item %s not stored: %s", item_id, exc)
            raise Refusal(503, f"the thumbnail store {self.thumbs.dir} cannot be written ({exc.strerror})",
                          "make it a writable folder with free space (searches do not need it)") from None
        if thumb.path is None:
            raise Refusal(404, f"item {item_id} has no picture to show: {thumb.problem}",
                          "put the dataset's images back where `cmh extract` read them")
        path = Path(thumb.path).resolve()
        if not path.is_relative_to(self.cache.root.resolve()):  # never a file outside the cache
            raise Refusal(404, f"no thumbnail for item {item_id}", "take image URLs from a search result")
        return path

    def close(self) -> None:
        self._model.shutdown(wait=True, cancel_futures=True)
