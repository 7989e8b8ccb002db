"""Dataset source: MS-COCO with the 80 object categories as labels and the captions as texts.

Two layouts, told apart by the files in DATA_DIR:

* **pairs.jsonl** (``shared/data/coco2017_real238``): one JSON object per image with ``image`` (file name
  under ``images/``), ``image_id``, ``captions`` (list), ``category_ids``; plus ``categories.json``
  (``[{"id", "name"}, ...]``) for the label order.
* **official annotations**: ``captions_<split>.json`` and ``instances_<split>.json`` (in
  ``annotations/`` or DATA_DIR itself) and the images in ``<split>/`` (or ``images/<split>/``,
  or ``images/``). Every split with both files is read (train2017 + val2017 = 123,287 images) unless
  the ``splits`` option names some.

Labels: one column per category, ordered by category id (the 80 ids 1..90 with gaps), named by the
category name. ``item_id`` = the COCO image id. Images without any category label are dropped and
recorded in ``skipped`` (as most papers do: 123,287 -> 122,218 for train2017 + val2017); option
``keep_unlabelled=True`` keeps them with an all-zero label row.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from stages.prepare.datasets.base import (ItemTable, drop_unusable, register_dataset, report_skipped, require_dir,
                                          require_file, whole_id)
from stages.prepare.datasets.text import clean_texts, open_text, parse_json_line, read_text
from pipeline.ground.errors import DataError

#: Sub-folder of the data root read when DATA_DIR is not given.
DEFAULT_DIR = "coco2017_real238"
PAIRS_FILE = "pairs.jsonl"
CATEGORIES_FILE = "categories.json"


@register_dataset("coco", aliases=("mscoco", "ms-coco", "coco2017"), default_dir=DEFAULT_DIR, default_root="data")
def coco(
    data_dir: Path,
    *,
    splits: str | Sequence[str] | None = None,
    image_dir: str | Path | None = None,
    keep_unlabelled: bool = False,
) -> ItemTable:
    """MS-COCO: images with 5 captions each and 80 object-category labels (official JSON or pairs.jsonl).

    Options (official layout): ``splits`` the annotation splits to read (default: all found);
    ``image_dir`` the image folder when it is not ``<split>/``, ``images/<split>/`` or ``images/``.
    ``keep_unlabelled`` keeps images with no category (both layouts).
    """
    root = require_dir(data_dir, "coco", f"the {DEFAULT_DIR} folder ({PAIRS_FILE}, {CATEGORIES_FILE}, images/) "
                                        f"or a COCO folder with annotations/captions_<split>.json")
    if (root / PAIRS_FILE).is_file():
        return _read_pairs_jsonl(root, keep_unlabelled=keep_unlabelled)
    found = _official_splits(root)
    if found:
        wanted = [splits] if isinstance(splits, str) else list(splits or sorted(found))
        unknown = [s for s in wanted if s not in found]
        if unknown:
            raise DataError(f"coco: no captions_<split>.json for split(s) {unknown} under {root}; "
                            f"found {sorted(found)}")
        return _read_official(root, {s: found[s] for s in wanted}, image_dir=image_dir,
                              keep_unlabelled=keep_unlabelled)
    raise DataError(f"no COCO layout in {root}: expected {PAIRS_FILE} + {CATEGORIES_FILE} + images/, or "
                    f"annotations/captions_<split>.json + instances_<split>.json + the image folder")


def _read_pairs_jsonl(root: Path, *, keep_unlabelled: bool) -> ItemTable:
    pairs = root / PAIRS_FILE
    cat_path = require_file(root / CATEGORIES_FILE, "coco", f"the {PAIRS_FILE} layout")
    categories = _load_json(cat_path)
    if not isinstance(categories, list):
        raise DataError(f"{cat_path} should hold a list of {{\"id\", \"name\"}} objects")
    images_dir = root / "images"
    records = []
    with open_text(pairs) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{pairs} line {line_no}"
            obj = parse_json_line(line, where, line_no, "image, image_id, captions, category_ids")
            missing = [k for k in ("image", "image_id", "captions", "category_ids") if k not in obj]
            if missing:
                raise DataError(f"{where} lacks field(s) {missing}")
            records.append((obj["image_id"], str(images_dir / obj["image"]), obj["captions"], obj["category_ids"],
                            where))
    return _build(records, categories, source=str(pairs), cat_source=str(cat_path), keep_unlabelled=keep_unlabelled)


def _official_splits(root: Path) -> dict[str, tuple[Path, Path]]:
    """split -> (captions json, instances json), for every split that has both files."""
    out: dict[str, tuple[Path, Path]] = {}
    for folder in (root / "annotations", root):
        if not folder.is_dir():
            continue
        for cap in sorted(folder.glob("captions_*.json")):
            split = cap.stem[len("captions_"):]
            inst = folder / f"instances_{split}.json"
            if split not in out:
                out[split] = (cap, require_file(inst, "coco", f"split {split} (next to {cap.name})"))
    return out


def _split_image_dir(root: Path, split: str, image_dir: str | Path | None) -> Path:
    candidates = ([Path(image_dir)] if image_dir is not None
                  else [root / split, root / "images" / split, root / "images"])
    for c in candidates:
        if c.is_dir():
            return c
    raise DataError(f"coco split {split}: no image folder, looked for {[str(c) for c in candidates]}; "
                    f"pass the option image_dir=<folder>")


def _read_official(root: Path, files: dict[str, tuple[Path, Path]], *, image_dir: str | Path | None,
                   keep_unlabelled: bool) -> ItemTable:
    records = []
    categories: list[dict] | None = None
    for split, (cap_path, inst_path) in files.items():
        folder = _split_image_dir(root, split, image_dir)
        captions_json = _load_json(cap_path)
        instances_json = _load_json(inst_path)
        for key, path, obj in (("images", cap_path, captions_json), ("annotations", cap_path, captions_json),
                               ("categories", inst_path, instances_json), ("annotations", inst_path, instances_json)):
            if key not in obj:
                raise DataError(f"{path} has no {key!r} list: is it a COCO {path.stem.split('_')[0]} file?")
        split_cats = sorted(instances_json["categories"], key=lambda c: c["id"])
        if categories is None:
            categories = split_cats
        elif [(c["id"], c["name"]) for c in split_cats] != [(c["id"], c["name"]) for c in categories]:
            raise DataError(f"{inst_path} lists other categories than the first split's; read the splits apart")
        captions: dict[int, list[tuple[int, str]]] = {}
        for ann in captions_json["annotations"]:
            where = f"{cap_path} caption annotation {ann.get('id')!r}"
            captions.setdefault(whole_id(ann.get("image_id"), where, "image_id"), []).append(
                (whole_id(ann.get("id", 0), where, "id"), str(ann["caption"])))
        cats: dict[int, set[int]] = {}
        for ann in instances_json["annotations"]:
            where = f"{inst_path} instance annotation {ann.get('id')!r}"
            cats.setdefault(whole_id(ann.get("image_id"), where, "image_id"), set()).add(
                whole_id(ann.get("category_id"), where, "category_id"))
        for img in captions_json["images"]:
            image_id = whole_id(img.get("id"), f"{cap_path} image {img.get('id')!r}", "image id")
            caps = [c for _, c in sorted(captions.get(image_id, []))]  # annotation-id order, stable
            records.append((image_id, str(folder / img["file_name"]), caps, sorted(cats.get(image_id, ())),
                            f"{cap_path} image {image_id}"))
    source = ", ".join(str(c) for c, _ in files.values())
    return _build(records, categories or [], source=source, cat_source=str(next(iter(files.values()))[1]),
                  keep_unlabelled=keep_unlabelled)


def _build(records: Iterable[tuple[Any, str, Any, Any, str]], categories: list[dict], *, source: str,
           cat_source: str, keep_unlabelled: bool) -> ItemTable:
    """Records (image_id, image path, captions, category ids, where) -> ItemTable, labels by category id."""
    try:
        ordered = sorted(((whole_id(c["id"], cat_source, "category id"), str(c["name"])) for c in categories))
    except (KeyError, TypeError) as exc:
        raise DataError(f"{cat_source}: categories need integer 'id' and 'name' fields ({exc})") from None
    twice = sorted({cid for cid, _ in ordered if [c for c, _ in ordered].count(cid) > 1})
    if twice:  # two label columns for one id: which one an annotation means is unknown
        raise DataError(f"{cat_source}: category id(s) {twice} are listed more than once; give each id once")
    names = [name for _, name in ordered]
    same = sorted({name for name in names if names.count(name) > 1})
    if same:  # two columns of one name: items of either id share the label, yet count as not relevant
        ids = [cid for cid, name in ordered if name == same[0]]
        raise DataError(f"{cat_source}: category name(s) {same} are given to more than one id ({same[0]!r}: ids "
                        f"{ids}); give each category its own name, or one id")
    column = {cid: j for j, (cid, _) in enumerate(ordered)}
    records = sorted(((whole_id(r[0], r[4], "image_id"), *r[1:]) for r in records), key=lambda r: r[0])
    n = len(records)
    labels = np.zeros((n, len(ordered)), dtype=np.uint8)  # (n, 80)
    item_ids, refs, texts = [], [], []
    skipped: list[tuple[Any, str]] = []
    keep = []
    for i, (image_id, ref, caps, cat_ids, where) in enumerate(records):
        item_ids.append(image_id)
        if isinstance(caps, str) or not isinstance(caps, list):
            raise DataError(f"{where}: captions should be a list of strings, got {type(caps).__name__}")
        if not isinstance(cat_ids, list):  # "12" would be read as the categories 1 and 2
            raise DataError(f"{where}: category_ids should be a list of category ids, got {cat_ids!r}; "
                            f"write [{cat_ids}] for one category")
        refs.append(ref)
        texts.append(clean_texts(caps))
        for cid in cat_ids:
            cid = whole_id(cid, where, "category id")
            if cid not in column:
                raise DataError(f"{where}: category id {cid} is not in {cat_source}")
            labels[i, column[cid]] = 1
        if labels[i].any() or keep_unlabelled:
            keep.append(i)
        else:
            skipped.append((int(image_id), "no category label"))
    if len(set(item_ids)) != len(item_ids):
        ids = np.asarray(item_ids)
        uniq, counts = np.unique(ids, return_counts=True)
        raise DataError(f"{source}: duplicate image ids {uniq[counts > 1][:5].tolist()}; each image must appear once")
    if skipped:
        report_skipped("coco", skipped, source)
    rows = np.asarray(keep, dtype=np.int64)
    table = ItemTable(
        dataset="coco",
        item_id=np.asarray(item_ids, dtype=np.int64)[rows],
        image=[refs[i] for i in rows],
        texts=[texts[i] for i in rows],
        labels=labels[rows],
        label_names=[name for _, name in ordered],
        text_kind="captions",
        source=source,
        skipped=skipped,
        notes=[f"{len(skipped)} image(s) without a category label dropped"] if skipped else [],
    )
    return drop_unusable(table).validate()


def _load_json(path: Path) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from exc
