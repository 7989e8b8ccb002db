"""The search page of ``cmh serve``: a text box, a picture upload, and the results as a gallery.

Rendered on the server from the same answer the JSON API gives, so ``/?text=dog,beach`` is a
complete page (a shareable search) without a script, and the page needs no network beyond the
server itself: no CDN, no web fonts. Each result shows its picture and its tags (or captions) in both
directions, its Hamming distance, and the query's matched terms marked in its tags. Every text that
comes from data or from the request goes through ``esc``.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence
from urllib.parse import quote, urlencode

from stages.present.html.page import esc, page_html

SEARCH_CSS = """
form.search { display: flex; flex-wrap: wrap; gap: .5em; align-items: center; margin: .4em 0; }
form.search input[type=search] { font-size: 16px; padding: 4px 8px; width: min(32em, 90vw); }
form.search input[type=number] { width: 5em; }
.error { border: 1px solid #c0392b; background: #fdf0ee; padding: .5em .8em; border-radius: 4px; }
.error .fix { color: #444; } .error a { margin-right: .5em; }
.about { color: #555; font-size: 13px; }
.answer { margin: .8em 0 .4em; } .answer mark { background: #ffe58a; }
.query-picture { max-height: 120px; border: 2px solid #3366cc; border-radius: 3px; vertical-align: middle; }
.results { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 10px; }
.card { border: 1px solid #ccc; border-radius: 4px; padding: 6px; font-size: 12px; background: #fff; }
.card img { display: block; width: 100%; height: 120px; object-fit: contain; background: #f4f4f4; }
.card .tags { margin: 4px 0; max-height: 6.5em; overflow: hidden; word-wrap: break-word; }
.card .tags mark { background: #ffe58a; font-weight: bold; }
.card .meta { color: #555; } .card .labels { color: #2e6b3a; }
"""


def search_page(info: Mapping[str, Any], *, text: str = "", k: str = "", answer: Mapping[str, Any] | None = None,
                error: Mapping[str, Any] | None = None) -> str:
    """The whole page: ``info`` describes the run (``SearchService.info``), ``answer`` is a search's JSON
    answer and ``error`` a refusal's ``{"error", "fix", ...}``; either or neither."""
    body = [f"<h1>cmh search · {esc(info['method'])} · {esc(info['bits'])} bits · {esc(info['dataset'])}</h1>",
            _about(info), _forms(info, text, k)]
    if error is not None:
        body.append(_error_html(error))
    if answer is not None:
        body.append(_answer_html(answer))
    return page_html(f"cmh search · {info['run']}", body, css=SEARCH_CSS)


def _about(info: Mapping[str, Any]) -> str:
    how = " · ".join(f"{m} queries: {esc(kind)}{' (approximate)' if info['approximate'][m] else ''}"
                     for m, kind in info["search"].items())
    return (f'<p class="about">run <code>{esc(info["run"])}</code> · {esc(info["n"])} items searched · {how} · '
            f'<a href="/health">health</a></p>')


def _forms(info: Mapping[str, Any], text: str, k: str) -> str:
    k_attr = f' value="{esc(k)}"' if k else ""
    upload_action = "/" + (f"?{urlencode({'k': k})}" if k else "")
    return ('<form class="search" method="get" action="/">'
            f'<input type="search" name="text" value="{esc(text)}" placeholder="tags, e.g. dog, beach" autofocus>'
            f'<label>k <input type="number" name="k" min="1" max="{esc(info["max_k"])}" placeholder="10"{k_attr}></label>'
            '<button type="submit">Search pictures</button></form>'
            f'<form class="search" method="post" action="{esc(upload_action)}" enctype="multipart/form-data">'
            '<label>or a picture: <input type="file" name="image" accept="image/*" required></label>'
            '<button type="submit">Search tags</button></form>')


def _error_html(error: Mapping[str, Any]) -> str:
    close = error.get("close_terms") or []
    links = "".join(f'<a href="/?{esc(urlencode({"text": term}))}">{esc(term)}</a>' for term in close)
    return (f'<div class="error" role="alert"><b>{esc(error.get("error"))}</b><br>'
            f'<span class="fix">{esc(error.get("fix"))}</span>'
            + (f"<br>terms to try: {links}" if links else "") + "</div>")


def _answer_html(answer: Mapping[str, Any]) -> str:
    terms = {t.lower() for t in answer.get("matched_terms") or []}
    results = answer.get("results") or []
    if answer["modality"] == "image":
        preview = answer.get("query_preview")
        what = ((f'<img class="query-picture" src="{esc(preview)}" alt="the query picture"> ' if preview else "")
                + "picture → tags")
    elif answer.get("matched_terms"):
        what = "text → pictures · matched terms: " + ", ".join(f"<mark>{esc(t)}</mark>" for t in
                                                               answer["matched_terms"])
    else:
        what = "text → pictures · the text read as typed (a sentence encoder has no vocabulary)"
    if answer.get("ignored_terms"):
        what += " · not in the vocabulary, ignored: " + esc(", ".join(answer["ignored_terms"]))
    search = esc(answer["search"]) + (" index (approximate: it may miss neighbours)" if answer["approximate"]
                                      else (" index" if answer["search"] != "exact" else " search"))
    head = (f'<p class="answer">{what} · {len(results)} results by Hamming distance · {search} · '
            f'{float(answer["took_ms"]):.1f} ms</p>')
    return head + '<div class="results">' + "".join(_card(r, terms) for r in results) + "</div>"


def _card(result: Mapping[str, Any], terms: set[str]) -> str:
    item = result["item_id"]
    labels = ", ".join(result.get("labels") or []) or "none"
    return (f'<div class="card" data-item="{esc(item)}">'
            f'<a href="/api/items/{esc(quote(str(item)))}"><img src="{esc(result["image_url"])}" '
            f'alt="item {esc(item)}" decoding="async"></a>'
            f'<div class="tags" title="{esc(result["text"])}">{_marked(result, terms)}</div>'
            f'<div class="meta">#{esc(result["rank"])} · d={esc(result["hamming"])} · item {esc(item)}</div>'
            f'<div class="labels">labels: {esc(labels)}</div></div>')


def _marked(result: Mapping[str, Any], terms: set[str]) -> str:
    """The item's tags (or captions) with the query's matched terms marked."""
    texts: Sequence[str] = result.get("texts") or [result["text"]]
    if result.get("text_kind") == "tags":
        return ", ".join(f"<mark>{esc(t)}</mark>" if t.lower() in terms else esc(t) for t in texts)
    pieces = re.split(r"(\w+)", " / ".join(texts))
    return "".join(f"<mark>{esc(p)}</mark>" if p.lower() in terms else esc(p) for p in pieces)
