"""``cmh query --html out.html``: one ad-hoc query's gallery as a single self-contained file.

The thumbnails come from the dataset's shared thumbnail store and are inlined as ``data:`` URIs, so the
file can be moved or mailed on its own. Results show picture and text in both directions. A new query has no
labels, so relevance is shown as unknown and the legend explains "?" rather than ✓/✗.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from pipeline.ground.store.cache import Cache
from pipeline.ground.store.parquet import write_bytes_atomic
from stages.present.html.gallery import Items, adhoc_gallery, render_gallery
from stages.present.html.page import esc, legend_html, page_html
from stages.present.html.thumbnails import Thumb, ThumbnailStore


def write_query_page(cache: Cache, run: str, rows: Sequence[tuple], out: Path, *,
                     text: str | None = None, image: Path | None = None) -> Path:
    """Write the gallery of one query (``rows`` from ``query_run``) to ``out``; returns the path."""
    run = cache.find_run(run)
    run_dir, config = run.path, run.read_config()
    dataset = config["dataset"]
    items = Items(cache.dataset(dataset).items)
    thumbs = ThumbnailStore(cache.reports_dir, dataset)

    def src(thumb: Thumb) -> str | None:
        return None if thumb.path is None else thumb.data_uri()

    gallery = adhoc_gallery(run_dir.name, rows, text=text, image=image)
    what = f"image {image}" if image is not None else f"text {text!r}"
    body = [f"<h1>cmh query · {esc(config.get('method'))} · {esc(config.get('bits'))} bits</h1>",
            f"<p>run <code>{esc(run_dir.name)}</code> · dataset {esc(dataset)} · query {esc(what)}</p>",
            legend_html(relevance=False, labels=list(items.table.label_names)),
            render_gallery(gallery, items, thumbs.get, src)]
    return write_bytes_atomic(page_html(f"cmh query · {run_dir.name}", body).encode("utf-8"), Path(out))
