"""The HTML shell shared by the report page, ``cmh query --html`` and the search page of ``cmh serve``:
styles, relative links, the results table.

Plain HTML and a little CSS, no scripts or external resources, so a page opens offline from disk.
Every text that comes from data goes through ``html.escape``.
"""
from __future__ import annotations

import html
import os
from pathlib import Path
from urllib.parse import quote

from stages.present.tables import DEGENERATE_MARK, DEGENERATE_NOTE, MethodsTable, best_by_column, cell_text, row_notes

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 1500px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; } h4 { margin: .8em 0 .3em; }
table.results { border-collapse: collapse; font-size: 13px; }
table.results th, table.results td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
table.results th:first-child, table.results td:first-child { text-align: left; }
table.results td.best { font-weight: bold; background: #eef6ee; }
img.figure { max-width: min(100%, 760px); border: 1px solid #eee; }
details.run { border: 1px solid #ddd; border-radius: 4px; margin: .4em 0; padding: .3em .6em; }
details.run > summary { cursor: pointer; }
details.run code.rid { color: #777; font-size: 12px; }
.plots img { height: 220px; margin: 2px; border: 1px solid #eee; }
.q { margin: .5em 0 .9em; }
.qhead { font-size: 13px; margin-bottom: 2px; }
.row { display: flex; flex-wrap: wrap; gap: 4px; align-items: flex-start; }
.cell { box-sizing: border-box; width: 100px; border: 2px solid #bbb; border-radius: 3px; padding: 2px; font-size: 11px; overflow: hidden; }
.cell img { display: block; max-width: 92px; max-height: 92px; margin: 0 auto; }
.cell.query { border-color: #3366cc; background: #eef2fb; }
.cell.rel { border-color: #2e8b3a; } .cell.irr { border-color: #c0392b; } .cell.unk { border-color: #999; }
.cell .txt { max-height: 7.2em; overflow: hidden; word-wrap: break-word; }
.cell.query .txt { max-height: none; }  /* cut at a word by the page (TEXT_CHARS), never by the cell */
.cell .meta { color: #555; margin-top: 2px; } .cell.rel .mk { color: #2e8b3a; } .cell.irr .mk { color: #c0392b; }
.missing { height: 80px; background: #f4f4f4; color: #a33; font-size: 10px; padding: 3px; word-break: break-all; overflow: hidden; }
p.note { color: #a33; } .legend { font-size: 12px; color: #555; }
table.results span.budget, table.results span.sup { font-size: 11px; color: #8a5a00; background: #fff4dc; padding: 0 3px; border-radius: 2px; }
.cell .lab { color: #2a4d8f; font-size: 10px; }
details.run span.budget { color: #8a5a00; background: #fff4dc; padding: 0 3px; } details.run span.feat { color: #555; }
footer { margin-top: 2em; font-size: 12px; color: #666; word-break: break-all; }
"""


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def rel_url(target: Path, page_dir: Path) -> str:
    """``target`` as a URL relative to the page's folder (so the page works wherever the cache is moved)."""
    return quote(Path(os.path.relpath(Path(target).resolve(), Path(page_dir).resolve())).as_posix(), safe="/=")


def page_html(title: str, body: list[str], footer: str = "", css: str = "") -> str:
    """A whole page: the shared styles plus ``css`` (a page's own), ``body`` and an optional footer."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}{css}</style></head><body>"
            + "\n".join(body) + (f"<footer>{footer}</footer>" if footer else "") + "</body></html>\n")


def legend_html(relevance: bool = True, labels: list[str] | None = None) -> str:
    """The gallery legend: what a row shows, what ✓/✗ mean (only when ``relevance`` is known: an ad-hoc query
    has no labels, so its results are all "?"), and the dataset's label names (``labels``)."""
    marks = ("Green ✓: shares at least one label with the query (relevant); red ✗: shares none."
             if relevance else "?: relevance unknown, since a new query has no labels to compare.")
    names = (f' <span class="labels">Labels ({len(labels)}): {esc(", ".join(labels))}.</span>' if labels else "")
    return (f'<p class="legend">Each row: the query (blue) and its top retrievals by Hamming distance <i>d</i> '
            f'(ties broken by database order), each with its picture and its text; hover an item for its full '
            f'text and its labels. {marks}{names}</p>')


def methods_table_html(table: MethodsTable) -> str:
    """The methods × (task, bits) table; mean ± std over seeds, the best mean of each column marked."""
    ns = {c[2] for cells in table.cells.values() for c in cells.values()}
    show_n = len(ns) > 1
    best = best_by_column(table)
    head = "".join(f"<th>{esc(task)} {bits}</th>" for task, bits in table.columns)
    rows = []
    for label in table.labels:
        cells = []
        for col in table.columns:
            cell = table.cells[label].get(col)
            is_best = cell is not None and cell[0] == best[col]
            attr = ' class="best"' if is_best else ""
            mark = DEGENERATE_MARK if cell is not None and table.is_degenerate(label, col) else ""
            cells.append(f"<td{attr}>{esc(cell_text(cell, show_n) + mark)}</td>")
        notes = row_notes(table.identity.get(label, {}))
        marks = "".join(f' <span class="{"budget" if n.startswith("budget") else "sup"}">{esc(n)}</span>'
                        for n in notes)
        rows.append(f"<tr><td>{esc(label)}{marks}</td>{''.join(cells)}</tr>")
    seeds = "" if show_n else f", n={next(iter(ns))} seed{'s' if next(iter(ns)) != 1 else ''}"
    note = f'<p class="note">{esc(DEGENERATE_NOTE)}</p>' if table.degenerate else ""
    return (f"<p><b>{esc(table.metric)}</b> (mean ± sample std over seeds{esc(seeds)}; best per column in bold)</p>"
            f'<table class="results"><tr><th>method</th>{head}</tr>{"".join(rows)}</table>{note}')
