"""Dataset source: MIRFlickr-25K, the 20,015 cleaned image–tag pairs of the DCMH/DJSRH family.

Two layouts, told apart by the files in DATA_DIR (the shared data folder's README.md describes both):

* **folder** (``shared/data/mirflickr25k_real20015`` and ``mirflickr25k_real730``): ``pairs.tsv`` (one row
  per pair in DCMH row order: ``image``, ``row20015``, comma-separated ``tags``, ``labels`` names,
  24-character 0/1 ``label_vector``, optionally ``image_hr``), ``images/``, and ``cleaned20015/`` with
  ``label_names.txt`` and ``yall_vocab_dcmh_order.txt`` (the 1386 tags in ``YAll`` column order, so a
  BoW encoder over the tags reproduces ``YAll``). ``item_id`` = ``row20015``.
* **DCMH .mat**: ``mirflickr25k-iall.mat`` (HDF5 ``IAll`` (N, 3, 224, 224)), ``mirflickr25k-yall.mat``
  (``YAll`` (N, 1386)), ``mirflickr25k-lall.mat`` (``LAll`` (N, 24)); see ``stages.prepare.datasets.dcmh``.
  ``item_id`` = the row in the files.
"""
from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from stages.prepare.datasets.base import ItemTable, drop_unusable, register_dataset, require_dir, require_file
from stages.prepare.datasets.dcmh import read_dcmh_mat
from stages.prepare.datasets.text import load_vocabulary, open_text, read_lines, split_tags
from pipeline.ground.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: Sub-folder of the data root read when DATA_DIR is not given.
DEFAULT_DIR = "mirflickr25k_real20015"
PAIRS_FILE = "pairs.tsv"
CLEANED_DIR = "cleaned20015"
VOCAB_FILE = "yall_vocab_dcmh_order.txt"
MAT_FILES = {"image": "mirflickr25k-iall.mat", "text": "mirflickr25k-yall.mat", "labels": "mirflickr25k-lall.mat"}
_REQUIRED_COLUMNS = ("image", "row20015", "tags", "label_vector")


@register_dataset("mirflickr", aliases=("mirflickr25k", "mirflickr-25k", "mir"), default_dir=DEFAULT_DIR,
                  default_root="data")
def mirflickr(
    data_dir: Path,
    *,
    hr: bool = False,
    vocabulary: str | Path | None = None,
    label_names: Sequence[str] | None = None,
    drop_empty_text: bool = True,
) -> ItemTable:
    """MIRFlickr-25K: 20,015 Flickr images with tags (1386-word vocabulary) and 24 concept labels.

    Options: ``hr`` (folder layout) uses ``image_hr`` (the 256-px copy) where a row has one;
    ``vocabulary`` / ``label_names`` (.mat layout) override the files found beside the .mat files;
    ``drop_empty_text`` (.mat layout) drops pairs whose ``YAll`` row is all zero.
    """
    root = require_dir(data_dir, "mirflickr", f"the {DEFAULT_DIR} folder ({PAIRS_FILE}, images/, {CLEANED_DIR}/) "
                                             f"or a folder with the DCMH files {', '.join(MAT_FILES.values())}")
    if (root / PAIRS_FILE).is_file():
        if vocabulary is not None or label_names is not None:
            raise ConfigError("mirflickr options vocabulary/label_names apply to the .mat layout only; the folder "
                              f"layout reads them from {root / CLEANED_DIR}")
        return _read_folder(root, hr=hr)
    if any((root / name).exists() for name in MAT_FILES.values()):
        if hr:
            raise ConfigError(f"mirflickr option hr=True needs the folder layout ({PAIRS_FILE} with an image_hr "
                              f"column); {root} holds the DCMH .mat files")
        if not (root / MAT_FILES["image"]).exists() and (root.parent / PAIRS_FILE).is_file():
            raise DataError(f"{root} holds YAll/LAll but no images ({MAT_FILES['image']}); point DATA_DIR at "
                            f"its parent {root.parent}, which has {PAIRS_FILE} and images/")
        return read_dcmh_mat("mirflickr", root, MAT_FILES,
                             vocabulary=Path(vocabulary) if vocabulary is not None else None,
                             label_names=list(label_names) if label_names is not None else None,
                             drop_empty_text=drop_empty_text)
    raise DataError(f"no MIRFlickr layout in {root}: expected {PAIRS_FILE} (with images/ and {CLEANED_DIR}/), "
                    f"or the DCMH files {', '.join(MAT_FILES.values())}; point DATA_DIR at such a folder")


def _read_folder(root: Path, *, hr: bool) -> ItemTable:
    """The folder layout: parses ``pairs.tsv`` (no image is opened; files are only checked to exist)."""
    pairs = root / PAIRS_FILE
    layout = f"the MIRFlickr folder layout ({PAIRS_FILE}, images/, {CLEANED_DIR}/)"
    names = read_lines(require_file(root / CLEANED_DIR / "label_names.txt", "mirflickr", layout))
    width = len(names)
    images_dir = str(root / "images")

    item_ids: list[int] = []
    refs: list[str] = []
    texts: list[list[str]] = []
    vectors: list[str] = []
    n_hr = 0
    with open_text(pairs) as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{pairs} is empty; expected a header line and one row per pair")
        missing = [c for c in _REQUIRED_COLUMNS if c not in header]
        if missing:
            raise DataError(f"{pairs} lacks column(s) {missing}; its header is {header}")
        col = {name: header.index(name) for name in header}
        has_hr = "image_hr" in col
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < len(header):
                row = row + [""] * (len(header) - len(row))  # trailing empty fields (image_hr) may be cut
            where = f"{pairs} line {line_no}"
            try:
                item_ids.append(int(row[col["row20015"]]))
            except ValueError:
                raise DataError(f"{where}: row20015 is {row[col['row20015']]!r}, expected an integer") from None
            vector = row[col["label_vector"]].strip()
            if len(vector) != width or vector.strip("01"):
                raise DataError(f"{where} (row20015={item_ids[-1]}): label_vector {vector!r} has {len(vector)} "
                                f"characters, expected {width} 0/1 characters, one per name in label_names.txt")
            vectors.append(vector)
            named = {name for name, bit in zip(names, vector) if bit == "1"}
            if "labels" in col and set(split_tags(row[col["labels"]])) != named:
                raise DataError(f"{where}: labels {row[col['labels']]!r} disagree with label_vector {vector} "
                                f"in the order of {CLEANED_DIR}/label_names.txt")
            hr_ref = row[col["image_hr"]].strip() if (hr and has_hr) else ""
            if hr_ref:
                refs.append(os.path.normpath(os.path.join(str(root), hr_ref)))
                n_hr += 1
            else:
                refs.append(os.path.join(images_dir, row[col["image"]]))
            texts.append(split_tags(row[col["tags"]]))

    labels = (np.frombuffer("".join(vectors).encode("ascii"), dtype=np.uint8) - ord("0")).reshape(-1, width)
    notes: list[str] = []
    if hr:
        notes.append(f"hr: {n_hr} of {len(refs)} images use the image_hr copy, the rest images/")
        log.info("mirflickr: hr=True, %d of %d images use image_hr%s", n_hr, len(refs),
                 "" if has_hr else f" ({pairs} has no image_hr column; its images/ are used as they are)")

    vocab_path = root / CLEANED_DIR / VOCAB_FILE
    vocab: list[str] | None = None
    if vocab_path.is_file():
        vocab, tie_notes = load_vocabulary(vocab_path)
        notes += tie_notes
    else:
        notes.append(f"vocabulary: {vocab_path} missing, a BoW encoder builds its own from the train split")
        log.warning("mirflickr: %s is missing, so a BoW encoder cannot reproduce the DCMH YAll columns", vocab_path)

    table = ItemTable(
        dataset="mirflickr",
        item_id=np.asarray(item_ids, dtype=np.int64),
        image=refs,
        texts=texts,
        labels=np.ascontiguousarray(labels),
        label_names=names,
        text_kind="tags",
        source=str(pairs),
        vocabulary=vocab,
        notes=notes,
    )
    return drop_unusable(table).validate()
