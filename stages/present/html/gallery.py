"""Retrieval galleries: a fixed, seeded set of queries, each with its Hamming top-K and relevance marked.

The queries are drawn from the dataset's cached query split with a seeded generator, independently of
any run, so every run's gallery shows the same queries and two methods can be compared side by side.
The ranking uses the run's stored codes and the evaluation's exact top-k (ties by database order);
relevance is the evaluation's rule: the query and the retrieved item share at least one label.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from pipeline.ground.item_table import ItemTable
from pipeline.ground.errors import CacheError
from pipeline.ground.store.runs import RunDir
from stages.evaluate.hamming import topk
from stages.present.plots import TASK_TITLES
from stages.evaluate.report import CROSS_TASKS
from stages.present.html.page import esc
from stages.present.html.thumbnails import Thumb

log = logging.getLogger(__name__)

TEXT_CHARS = 70  # a tag list or caption is cut here (about five lines of a cell); the full text is in the tooltip


@dataclass
class Hit:
    rank: int
    item_id: int
    hamming: int
    relevant: bool | None  # None: unknown (an ad-hoc query has no labels)


@dataclass
class GalleryQuery:
    task: str  # i2t | t2i
    item_id: int | None  # None for an ad-hoc query
    text: str | None = None  # the query text (t2i) or None
    image_ref: str | None = None  # the query image (i2t) or None
    hits: list[Hit] = field(default_factory=list)
    note: str | None = None  # why this query shows no hits in this run


@dataclass
class Gallery:
    run_id: str
    queries: list[GalleryQuery] = field(default_factory=list)
    problem: str | None = None  # why the whole gallery is empty (no codes, ...)


class Items:
    """Item lookups by id: texts, image reference, labels."""

    def __init__(self, table: ItemTable) -> None:
        self.table = table
        self.row = {int(i): r for r, i in enumerate(table.item_id)}

    def text(self, item_id: int) -> str:
        r = self.row.get(int(item_id))
        if r is None:
            return f"(item {item_id} is not in the cached dataset)"
        sep = ", " if self.table.text_kind == "tags" else " / "
        return sep.join(self.table.texts[r])

    def image(self, item_id: int) -> str | None:
        r = self.row.get(int(item_id))
        return None if r is None else self.table.image[r]

    def label_names(self, item_id: int) -> list[str]:
        """The names of the item's labels ([] for an item not in the table)."""
        r = self.row.get(int(item_id))
        if r is None:
            return []
        names = self.table.label_names
        return [names[j] for j in np.flatnonzero(self.table.labels[r]) if j < len(names)]

    def labels(self, ids: Sequence[int]) -> np.ndarray | None:
        rows = [self.row.get(int(i)) for i in ids]
        if any(r is None for r in rows):
            return None
        return self.table.labels[rows].astype(bool)


def pick_queries(query_ids: Sequence[int], per_task: int, seed: int) -> dict[str, list[int]]:
    """``per_task`` distinct query items per cross-modal task, drawn with ``seed`` (i2t first, then t2i)."""
    ids = np.asarray(query_ids, dtype=np.int64)
    want = 2 * per_task
    if len(ids) < want:
        log.warning("the query split has %d items, fewer than the %d gallery queries asked for: "
                    "the tasks share them", len(ids), want)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(ids, size=min(want, len(ids)), replace=False).tolist()
    if len(chosen) < want:
        return {"i2t": chosen[:per_task], "t2i": chosen[-per_task:]}
    return {"i2t": chosen[:per_task], "t2i": chosen[per_task:]}


def run_gallery(run: RunDir, items: Items, queries: dict[str, list[int]], top_k: int = 10) -> Gallery:
    """Each chosen query's top-``top_k`` database items under this run's codes."""
    gallery = Gallery(run.run_id)
    try:
        q = run.read_codes("query")
        d = run.read_codes("database")
    except CacheError as err:
        gallery.problem = str(err)
        return gallery
    position = {int(i): n for n, i in enumerate(q["item_id"])}
    k = min(top_k, len(d["item_id"]))
    for task, ids in queries.items():
        q_mod, d_mod = CROSS_TASKS[task]
        for item in ids:
            entry = GalleryQuery(task, int(item), text=items.text(item) if q_mod == "text" else None,
                                 image_ref=items.image(item) if q_mod == "image" else None)
            gallery.queries.append(entry)
            if item not in position:
                entry.note = f"query item {item} is not among this run's query codes"
                continue
            if f"{q_mod}_words" not in q or f"{d_mod}_words" not in d:
                entry.note = f"this run stored no {q_mod} query codes or no {d_mod} database codes"
                continue
            idx, dist = topk(q[f"{q_mod}_words"][[position[item]]], d[f"{d_mod}_words"], k)
            found = [int(d["item_id"][j]) for j in idx[0]]
            q_labels = items.labels([item])
            d_labels = items.labels(found)
            relevant = (None if q_labels is None or d_labels is None
                        else (d_labels & q_labels[0]).any(axis=1).tolist())
            entry.hits = [Hit(rank, hit, int(h), None if relevant is None else bool(relevant[rank - 1]))
                          for rank, (hit, h) in enumerate(zip(found, dist[0].tolist()), start=1)]
    return gallery


def adhoc_gallery(run_id: str, rows: Sequence[tuple], *, text: str | None, image: Path | None) -> Gallery:
    """A gallery of one new query from ``query_run``'s rows (rank, item_id, hamming, ...); no labels, so
    relevance is unknown."""
    task = "i2t" if image is not None else "t2i"
    entry = GalleryQuery(task, None, text=text, image_ref=None if image is None else str(image),
                         hits=[Hit(int(r[0]), int(r[1]), int(r[2]), None) for r in rows])
    return Gallery(run_id, [entry])


# --- HTML --------------------------------------------------------------------------------------------

ImageSource = Callable[[int | None, str], Thumb]


def image_html(thumb: Thumb, src: str | None, alt: str) -> str:
    """An ``<img>`` of a thumbnail, or a placeholder naming the path that could not be read."""
    if thumb.path is None or src is None:
        return (f'<div class="missing" title="{esc(thumb.problem)}">image not shown<br>'
                f'<code>{esc(thumb.problem)}</code></div>')
    return f'<img src="{esc(src)}" alt="{esc(alt)}" loading="lazy" decoding="async">'


def short_text(text: str, limit: int = TEXT_CHARS) -> str:
    """``text`` cut to at most ``limit`` characters at a word boundary (a space or a comma), with "…"."""
    if len(text) <= limit:
        return text
    cut = text[:limit - 1]
    at = max(cut.rfind(" "), cut.rfind(","))
    if at > limit // 3:  # one very long word is cut inside it rather than shown as "…" alone
        cut = cut[:at]
    return cut.rstrip(" ,/") + "…"


def _text_html(text: str, limit: int = TEXT_CHARS) -> str:
    return f'<div class="txt" title="{esc(text)}">{esc(short_text(text, limit))}</div>'


#: A retrieved item shows its picture and its text, so its text gets fewer characters than a text query.
HIT_TEXT_CHARS = 45


def _item_html(items: Items | None, thumb: "ImageSource", src: Callable[[Thumb], str | None], item_id: int) -> str:
    """A database item as the page shows it in either direction: its picture, then its text (cut)."""
    if items is None:
        return _text_html(f"item {item_id}")
    ref = items.image(item_id)
    if ref is None:
        return _text_html(f"(item {item_id} is not in the cached dataset)")
    t = thumb(item_id, ref)
    return image_html(t, src(t), f"item {item_id}") + _text_html(items.text(item_id), HIT_TEXT_CHARS)


def _labels_note(items: Items | None, item_id: int | None) -> str:
    if items is None or item_id is None:
        return ""
    names = items.label_names(item_id)
    return f"labels: {', '.join(names) if names else 'none'}"


def _mark(hit: Hit) -> tuple[str, str, str]:
    """CSS class, symbol and tooltip of a hit's relevance."""
    if hit.relevant is None:
        return "unk", "?", "relevance unknown (an ad-hoc query has no labels)"
    return ("rel", "✓", "relevant: shares a label") if hit.relevant else ("irr", "✗", "not relevant: no shared label")


def render_gallery(gallery: Gallery, items: Items | None, thumb: ImageSource, src: Callable[[Thumb], str | None]) -> str:
    """The gallery as an HTML fragment; ``thumb`` finds an image's thumbnail, ``src`` turns it into a URL."""
    if gallery.problem:
        return f'<p class="note">No gallery: {esc(gallery.problem)}</p>'
    parts = ['<div class="gallery">']
    for entry in gallery.queries:
        label = TASK_TITLES.get(entry.task, entry.task)
        who = "ad-hoc query" if entry.item_id is None else f"query item {entry.item_id}"
        parts.append(f'<div class="q"><div class="qhead"><b>{esc(label)}</b> · {esc(who)}</div><div class="row">')
        q_labels = _labels_note(items, entry.item_id)
        lab = f'<div class="lab">{esc(q_labels)}</div>' if q_labels else ""
        if entry.image_ref is not None:
            t = thumb(entry.item_id, entry.image_ref)
            parts.append(f'<div class="cell query" title="{esc(q_labels or who)}">{image_html(t, src(t), who)}{lab}'
                         f'</div>')
        else:
            parts.append(f'<div class="cell query" title="{esc(q_labels or who)}">{_text_html(entry.text or "")}{lab}'
                         f'</div>')
        if entry.note:
            parts.append(f'<p class="note">{esc(entry.note)}</p>')
        for hit in entry.hits:
            cls, symbol, says = _mark(hit)
            body = _item_html(items, thumb, src, hit.item_id)
            hover = " · ".join(w for w in (says, f"item {hit.item_id}", _labels_note(items, hit.item_id)) if w)
            parts.append(f'<div class="cell {cls}" title="{esc(hover)}">{body}<div class="meta">'
                         f'#{hit.rank} · d={hit.hamming} · <span class="mk">{symbol}</span></div></div>')
        parts.append("</div></div>")
    parts.append("</div>")
    return "".join(parts)
