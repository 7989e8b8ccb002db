"""Pairs whose image does not decode: found by the first image pass, dropped from the item table.

The splits are drawn before any image is decoded (decoding 20,015 images just to check them took
longer than a GPU takes to encode them). The first extraction with an image encoder finds the
failures while encoding (``errors.parquet``); ``drop_failed_images`` then removes those pairs from the
item table, recording each in its ``skipped`` list, before any text encoder runs, so they are absent
from every modality. An extraction of text encoders only decodes each image once here
(``check_images``, at reduced size) for the same reason. The item table's ``image_pass`` entry says
whether this has happened; readers skip the members of ``splits.parquet`` that the table dropped.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from typing import Mapping

from pipeline.ground.item_table import ItemTable
from pipeline.ground.store.items import drop_items, items_meta
from pipeline.ground.store.layout import CacheLayout

log = logging.getLogger(__name__)

#: Item-table metadata key: "pending" from the split drawing until the first image pass is over.
#: Absent in caches written before it, which checked every image before drawing the splits.
IMAGE_PASS = "image_pass"
#: Prefix of the ``skipped`` reason of a pair dropped for its image.
REASON = "image unreadable"


def image_pass_pending(layout: CacheLayout, dataset: str) -> bool:
    """True until some extraction has decoded every image of the dataset once."""
    return items_meta(layout, dataset).get(IMAGE_PASS) == "pending"


def check_images(items: ItemTable) -> dict[int, str]:
    """Item id -> reason for every image that does not decode (the pass of a text-only extraction)."""
    from pipeline.ground.images import unreadable_images

    return {int(items.item_id[row]): why for row, why in unreadable_images(items.image).items()}


def drop_failed_images(layout: CacheLayout, items: ItemTable, failures: Mapping[int, str], *,
                       complete: bool) -> ItemTable:
    """``items`` without the pairs of ``failures`` (id -> reason), as cached from now on; one warning with
    the counts. ``complete``: every image has now been decoded once (the pass is over)."""
    meta = {IMAGE_PASS: "done"} if complete else None
    table, dropped = drop_items(layout, items.dataset, {i: f"{REASON}: {why}" for i, why in failures.items()},
                                meta=meta)
    if dropped:
        kinds = Counter(_kind(failures[int(i)]) for i, _ in table.skipped[-dropped:])
        log.warning("dataset %r: dropped %d pair(s) whose image does not decode from every modality (%s); each is "
                    "listed with its reason in the image encoder's errors.parquet and in the item table's skipped "
                    "list", items.dataset, dropped, ", ".join(f"{n} {k}" for k, n in kinds.most_common()))
    return table


def _kind(reason: str) -> str:
    """The class of a failure, for the counts: the reason without the file name, up to its first detail."""
    match = re.match(r"cannot read image .+?: (.*)", reason)
    tail = match.group(1) if match else reason
    return re.split(r"[:;(]", tail, maxsplit=1)[0].strip()[:60] or "unreadable"
