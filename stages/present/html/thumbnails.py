"""Small JPEG thumbnails of a dataset's images, made once per dataset and shared by every report page.

A thumbnail lives at ``<reports>/<dataset>/thumbs/<item_id>-<hash of the image reference and size>.jpg``.
The reference is part of the name, so a dataset re-extracted from other files never shows a stale picture.
Files are written atomically and reused on the next report. An image that cannot be read gives a
``Thumb`` without a file and with the reason, and the page shows a placeholder naming the path.
"""
from __future__ import annotations

import base64
import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

from pipeline.ground.errors import DataError
from pipeline.ground.store.parquet import write_bytes_atomic

log = logging.getLogger(__name__)

THUMB_PX = 100  # longest side; big enough to recognise a scene, small enough for thousands on one page
JPEG_QUALITY = 80


@dataclass(frozen=True)
class Thumb:
    """One image's thumbnail: ``path`` is None when the image could not be read, and ``problem`` says why."""

    ref: str
    path: Path | None
    problem: str | None = None

    def data_uri(self) -> str:
        """The JPEG inlined as a ``data:`` URI (for single-file pages such as ``cmh query --html``)."""
        if self.path is None:
            raise DataError(f"no thumbnail for {self.ref}: {self.problem}")
        return "data:image/jpeg;base64," + base64.b64encode(self.path.read_bytes()).decode("ascii")


def thumbs_dir(reports_dir: Path, dataset: str) -> Path:
    return Path(reports_dir) / dataset / "thumbs"


def thumb_name(item_id: int | None, ref: str, size: int = THUMB_PX) -> str:
    digest = hashlib.sha1(f"{ref}|{size}".encode("utf-8")).hexdigest()[:10]
    return f"{'q' if item_id is None else int(item_id)}-{digest}.jpg"


def _is_missing_file(ref: str) -> bool:
    path = ref.split("#", 1)[0] if "#" in ref and ref.split("#", 1)[0].endswith(".mat") else ref
    return not Path(path).exists()


def make_thumbnail(ref: str, out: Path, size: int = THUMB_PX) -> Thumb:
    """Read the image behind ``ref`` and write a JPEG of at most ``size`` px per side to ``out``."""
    from PIL import Image

    from pipeline.ground.images import load_image

    if _is_missing_file(ref):
        return Thumb(ref, None, f"image missing: {ref}")
    try:
        image = load_image(ref)
    except DataError as err:
        return Thumb(ref, None, str(err))
    image.thumbnail((size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    write_bytes_atomic(buf.getvalue(), out)
    return Thumb(ref, Path(out))


class ThumbnailStore:
    """Thumbnails of one dataset under ``<reports>/<dataset>/thumbs``: made on first use, then reused."""

    def __init__(self, reports_dir: Path, dataset: str, size: int = THUMB_PX) -> None:
        self.dir = thumbs_dir(reports_dir, dataset)
        self.size = size
        self.made = 0
        self.reused = 0
        self.missing: dict[str, str] = {}  # image reference -> reason, for the page's provenance
        self._seen: dict[tuple[int | None, str], Thumb] = {}

    def get(self, item_id: int | None, ref: str) -> Thumb:
        key = (None if item_id is None else int(item_id), ref)
        if key in self._seen:
            return self._seen[key]
        out = self.dir / thumb_name(item_id, ref, self.size)
        if out.exists():
            thumb = Thumb(ref, out)
            self.reused += 1
        else:
            thumb = make_thumbnail(ref, out, self.size)
            if thumb.path is None:
                log.warning("gallery shows a placeholder for item %s: %s", item_id, thumb.problem)
                self.missing[ref] = thumb.problem or "unreadable"
            else:
                self.made += 1
        self._seen[key] = thumb
        return thumb
