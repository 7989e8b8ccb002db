"""What every dataset source shares: the source registry and the checks on the files it reads."""
from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.ground.errors import DataError
from pipeline.ground.item_table import ItemTable, TextKind
from pipeline.ground.paths import expand_home
from pipeline.ground.registry import Registry

__all__ = ["DATASETS", "ItemTable", "TextKind", "register_dataset", "require_dir", "require_file",
           "report_skipped", "drop_unusable", "whole_id"]

log = logging.getLogger(__name__)

#: Dataset sources: ``get_dataset(name)(data_dir, **options) -> ItemTable``.
DATASETS: Registry = Registry("dataset", "cmh list datasets")
register_dataset = DATASETS.register


def require_dir(data_dir: Path, dataset: str, expected: str) -> Path:
    """``data_dir`` as an absolute Path, or DataError naming it and how to point DATA_DIR elsewhere."""
    path = expand_home(data_dir)
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise DataError(
            f"dataset {dataset!r}: data folder {path} {what}; expected {expected}. "
            f"Pass DATA_DIR=<folder> (CLI: --data-dir), or set CMH_DATA_ROOT to the folder that holds it"
        )
    return path.resolve()


def require_file(path: Path, dataset: str, layout: str) -> Path:
    """``path`` if it is a file, else DataError naming the file and the layout that needs it."""
    if not path.is_file():
        raise DataError(f"dataset {dataset!r}: {layout} needs {path.name}, which is missing at {path}")
    return path


def report_skipped(dataset: str, skipped: list[tuple[Any, str]], source: Any) -> None:
    """One warning per reason with its count, so dropped pairs are never silent."""
    reasons = Counter(reason.split(":", 1)[0] for _, reason in skipped)
    for reason, count in sorted(reasons.items()):
        log.warning("dataset %r: dropped %d pair(s) from %s: %s (ids in ItemTable.skipped)",
                    dataset, count, source, reason)


def drop_unusable(table: ItemTable, *, check_image_files: bool = True, drop_empty_text: bool = True) -> ItemTable:
    """Drop pairs whose image file is missing or whose text is empty, recording each in ``skipped``.

    Only existence is checked (one ``os.path.exists`` per file, no decoding): unreadable images are
    caught later by extraction. ``"<file.mat>#<row>"`` references are not checked here; their
    source checks the ``.mat`` file once.
    """
    keep: list[int] = []
    skipped = list(table.skipped)
    for row, (item_id, ref, texts) in enumerate(zip(table.item_id.tolist(), table.image, table.texts)):
        if drop_empty_text and not any(t.strip() for t in texts):
            skipped.append((item_id, "empty text"))
        elif check_image_files and not _is_stack_ref(ref) and not os.path.exists(ref):
            skipped.append((item_id, f"image file missing: {ref}"))
        else:
            keep.append(row)
    dropped = len(skipped) - len(table.skipped)
    if dropped == 0:
        return table
    report_skipped(table.dataset, skipped[len(table.skipped):], table.source)
    out = table.subset(np.asarray(keep, dtype=np.int64))
    out.skipped = skipped
    return out


def _is_stack_ref(ref: str) -> bool:
    return "#" in ref and ref.split("#", 1)[0].endswith(".mat")


#: Item ids are stored as signed 64-bit integers (Arrow int64, numpy int64).
ID_RANGE = (-(2**63), 2**63 - 1)


def whole_id(value: Any, where: str, what: str = "id") -> int:
    """``value`` as an item id: a whole number within 64 bits; DataError naming ``where`` otherwise.

    ``int()`` would truncate ``0.7`` to 0 (two rows then share an id, or ids shift), read ``true`` as 1,
    and an id beyond 64 bits would fail later as an OverflowError."""
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        number = int(value.strip())
    if number is None:
        raise DataError(f"{where}: {what} {value!r} is not an integer; give whole-number ids")
    if not ID_RANGE[0] <= number <= ID_RANGE[1]:
        raise DataError(f"{where}: {what} {number} does not fit in 64 bits (ids are stored as int64, "
                        f"from {ID_RANGE[0]} to {ID_RANGE[1]}); number the rows with smaller ids")
    return number
