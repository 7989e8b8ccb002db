"""A small cached dataset with real image files and runs written through the project's own writers.

No encoder or training is involved: codes are drawn from the labels (a noisy label prototype per bit),
so retrievals are better than chance and relevance marks are meaningful, and a hundred runs take seconds.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.ground.item_table import ItemTable
from pipeline.ground.store.items import write_items, write_splits
from pipeline.ground.store.cache import Cache
from pipeline.ground.store.parquet import write_json_atomic
from pipeline.ground.store.codes import write_codes
from pipeline.ground.store.runs import PLOTS_DIR
from stages.present.plots import plot_run
from stages.evaluate.report import evaluate_codes_and_curves, write_curves, write_report

DATASET = "toy"
N_QUERY = 12
N_LABELS = 4
SCRIPT_CAPTION = '<script>document.title="pwned"</script> a <b>bold</b> & "quoted" caption'


def make_dataset(root: Path, n_items: int = 80, seed: int = 0) -> tuple[Cache, ItemTable]:
    """``n_items`` pairs with 40-px JPEG images under ``root/images``; item 0's caption carries HTML."""
    rng = np.random.default_rng(seed)
    layout = Cache(root / "cache")
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    labels = (rng.random((n_items, N_LABELS)) < 0.35).astype(np.uint8)
    labels[labels.sum(axis=1) == 0, 0] = 1
    paths, texts = [], []
    for i in range(n_items):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        path = image_dir / f"im{i}.jpg"
        Image.new("RGB", (40, 30), colour).save(path)
        paths.append(str(path))
        words = [f"label{j}" for j in np.flatnonzero(labels[i])] + [f"word{i}"]
        texts.append([SCRIPT_CAPTION] if i == 0 else words)
    table = ItemTable(dataset=DATASET, item_id=np.arange(n_items, dtype=np.int64), image=paths, texts=texts,
                      labels=labels, label_names=[f"label{j}" for j in range(N_LABELS)], text_kind="captions",
                      source=str(image_dir))
    write_items(layout, table, {})
    ids = np.arange(n_items, dtype=np.int64)
    # item 0 (the HTML caption) is a query item: a gallery of every query in both tasks shows its text
    write_splits(layout, DATASET, {"query": ids[:N_QUERY], "database": ids[N_QUERY:], "train": ids[N_QUERY:]},
                 {"protocol": "test", "seed": seed})
    return layout, table


def make_run(layout: Cache, table: ItemTable, run_id: str, method: str, bits: int, seed: int,
             noise: float = 1.0, plots_from: Path | None = None, validation: list[dict] | None = None,
             **meta_extra) -> Path:
    """One run dir: config.json, codes, report, curves, figures (drawn, or copied from ``plots_from``)."""
    rng = np.random.default_rng(seed * 7919 + bits)
    proto = rng.standard_normal((N_LABELS, bits))
    x = table.labels.astype(float) @ proto
    image = np.where(x + noise * rng.standard_normal(x.shape) >= 0, 1, -1).astype(np.int8)
    text = np.where(x + noise * rng.standard_normal(x.shape) >= 0, 1, -1).astype(np.int8)
    q, d = slice(0, N_QUERY), slice(N_QUERY, None)
    run_dir = layout.run_dir(run_id)
    meta = {"run_id": run_id, "method": method, "dataset": DATASET, "image_features": "toy-img",
            "text_features": "toy-txt", "bits": bits, "seed": seed, "eval_mode": "single", "tie_rule": "stable",
            "n_train": len(table) - N_QUERY, "n_query": N_QUERY, "n_database": len(table) - N_QUERY,
            "train_s": 0.0, "encode_s": 0.0, "eval_s": 0.0, "epochs": 3, "config_hash": run_id[-8:],
            **meta_extra}
    write_json_atomic(meta, run_dir / "config.json")
    for split, part in (("query", q), ("database", d)):
        write_codes(run_dir / "codes", split, table.item_id[part], image[part], text[part], {"run_id": run_id})
    ev = evaluate_codes_and_curves({"image": image[q], "text": text[q], "labels": table.labels[q]},
                                   {"image": image[d], "text": text[d], "labels": table.labels[d]},
                                   ks=(10, 50), pk_curve_ks=(1, 5, 10, 50))
    write_report(run_dir, ev.rows, meta)
    write_curves(run_dir, ev.curves, meta)
    if plots_from is not None:
        shutil.copytree(plots_from, run_dir / PLOTS_DIR)
    else:
        plot_run(run_dir)
    write_json_atomic({"epochs": [], "seconds": 0.0, **({"validation": validation} if validation else {})},
                      run_dir / "history.json")
    return run_dir
