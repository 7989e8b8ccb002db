"""Opening an image reference from the item table.

A reference is either a file path, or ``<path.mat>#<index>`` for the DCMH HDF5 image stacks
(``IAll`` of shape (N, 3, 224, 224) as h5py reads it). Failures raise DataError naming the file.
"""
from __future__ import annotations

import logging
import os
import stat
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
from PIL import Image

from pipeline.ground.errors import DataError

log = logging.getLogger(__name__)

#: Side (pixels) a JPEG is decoded at when only checking that it decodes (libjpeg scales by 1/2..1/8 for free).
CHECK_DRAFT_SIDE = 64
#: The largest query picture decoded (``cmh query --image``, the search service's upload), in pixels: a
#: 48-megapixel phone photo passes, a 100-megapixel scan does not (decoding it would take gigabytes).
MAX_QUERY_PIXELS = 50_000_000


@lru_cache(maxsize=8)
def _h5(path: str):  # one handle per process (DataLoader workers each get their own)
    import h5py

    return h5py.File(path, "r")


def load_image(ref: str) -> Image.Image:
    """The RGB image behind ``ref``; raises DataError when it cannot be read or decoded."""
    require_regular_file(ref.split("#", 1)[0] if _is_stack(ref) else ref)
    try:
        if _is_stack(ref):
            path, index = ref.split("#", 1)
            arr = np.asarray(_h5(path)["IAll"][int(index)])  # (3, W, H) as stored by MATLAB
            return Image.fromarray(np.ascontiguousarray(np.transpose(arr, (2, 1, 0))).astype(np.uint8)).convert("RGB")
        with Image.open(ref) as im:
            im.load()
            return as_rgb(im, ref)
    except DataError:
        raise
    except Exception as exc:  # PIL/h5py raise many types; all mean "this image is unusable"
        raise DataError(f"cannot read image {ref}: {type(exc).__name__}: {exc}") from exc


def load_query_image(path: str, max_pixels: int = MAX_QUERY_PIXELS) -> Image.Image:
    """The RGB picture of a query, read as ``load_image`` reads it, with its size checked from the header before
    a pixel is decoded: DataError over ``max_pixels`` naming the limit and the fix. This check stands in for
    PIL's own (a DecompressionBombWarning printed above the error from 89 megapixels, an error from 179), which
    is never shown. Dataset images are not read through here: extraction decodes them as it always has."""
    if _is_stack(path):
        return load_image(path)
    require_regular_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:  # lazy: the header only
                width, height = im.size
                if width * height > max_pixels:
                    raise _too_many_pixels(path, f"{width} x {height} = {width * height / 1e6:.0f}", max_pixels)
                im.load()
                return as_rgb(im, path)
    except Image.DecompressionBombError:  # past PIL's hard ceiling, which it checks before telling the size
        raise _too_many_pixels(path, f"over {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f}", max_pixels) from None
    except DataError:
        raise
    except Exception as exc:  # PIL raises many types; all mean "this image is unusable"
        raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}; give a whole picture file that "
                        f"Pillow reads (JPEG, PNG, WebP, GIF, BMP, TIFF)") from exc


def _too_many_pixels(path: str, size: str, max_pixels: int) -> DataError:
    return DataError(f"query image {path} is {size} megapixels, more than the {max_pixels / 1e6:.0f} a query "
                     f"decodes: scale it down to at most {max_pixels / 1e6:.0f} megapixels (the search reads it at "
                     f"224 px)")


def as_rgb(im: Image.Image, ref: str) -> Image.Image:
    """8-bit RGB as the picture is meant to be seen; DataError for a sample format whose scale is unknown.

    ``convert("RGB")`` clips 16-bit samples at 255 (a 16-bit grey PNG reads as almost white) and
    truncates float samples (a [0, 1] float TIFF reads as black), so those are scaled here: 16-bit
    integers by 255/65535, floats in [0, 1] by 255. Transparent pixels are laid over white, as a
    viewer shows them, instead of the colour hidden under them (often black). A picture whose EXIF
    orientation says the camera was turned (phone photos) is turned upright, as viewers show it."""
    im = upright(im)
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        bits = 16 if mode.startswith("I;16") or im.format == "PNG" else _tiff_bits(im)
        if bits not in (8, 16):
            raise DataError(f"cannot read image {ref}: {bits or 'an unknown number of'}-bit integer samples have no "
                            f"known brightness scale; save it with 8 or 16 bits per sample")
        grey = np.asarray(im, dtype=np.float64) * (255.0 / (2**bits - 1))
        return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8)).convert("RGB")
    if mode == "F":
        values = np.asarray(im, dtype=np.float64)
        low, high = (float(values.min()) + 0.0, float(values.max()) + 0.0) if values.size else (0.0, 0.0)
        if not (np.isfinite(values).all() and low >= 0.0 and high <= 1.0):
            raise DataError(f"cannot read image {ref}: floating-point samples from {low:g} to {high:g}; cmh reads "
                            f"float images as brightness in [0, 1]: scale it to [0, 1] or save it with 8 bits")
        return Image.fromarray(np.rint(values * 255.0).astype(np.uint8)).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


#: EXIF tag 0x0112: how the stored pixels must be turned to be upright (1: as stored).
_ORIENTATION = 0x0112


def upright(im: Image.Image) -> Image.Image:
    """``im`` turned as its EXIF orientation says (unchanged without one): a portrait phone photo is
    stored sideways with orientation 6, and read as stored it is coded as a sideways picture."""
    try:
        orientation = im.getexif().get(_ORIENTATION)
    except Exception:  # a damaged EXIF block: the pixels are still the picture, as stored
        return im
    if orientation in (None, 1):
        return im
    from PIL import ImageOps

    return ImageOps.exif_transpose(im)


def _tiff_bits(im: Image.Image) -> int | None:
    tags = getattr(im, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None  # BitsPerSample
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    return int(bits) if bits is not None else None


def _is_stack(ref: str) -> bool:
    return "#" in ref and ref.split("#", 1)[0].endswith(".mat")


def require_regular_file(path: str) -> None:
    """DataError unless ``path`` is a regular file: opening a FIFO or a device blocks for ever, a folder fails late."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a FIFO, socket or device)"
        raise DataError(f"cannot read image {path}: it is {kind}")


def check_image(ref: str) -> str | None:
    """None when ``ref`` decodes, else the reason. JPEGs decode at reduced size (``draft``), so this costs
    a fraction of a full decode; truncated and foreign files still fail. HDF5 stack rows are not checked
    here (reading them is the expensive part); extraction records those that fail."""
    if _is_stack(ref):
        return None
    try:
        require_regular_file(ref)
        with Image.open(ref) as im:
            im.draft("RGB", (CHECK_DRAFT_SIDE, CHECK_DRAFT_SIDE))
            im.load()
            if im.mode not in ("RGB", "L", "CMYK", "YCbCr", "1"):  # a sample format it may refuse
                as_rgb(im, ref)
    except DataError as exc:
        return str(exc)
    except Exception as exc:  # PIL raises many types; all mean "this image is unusable"
        return f"cannot read image {ref}: {type(exc).__name__}: {exc}"
    return None


def unreadable_images(refs: list[str], workers: int | None = None) -> dict[int, str]:
    """Row -> reason for every reference that does not decode; threads, since PIL decodes without the GIL."""
    from pipeline.ground.progress import progress_bar

    workers = workers or min(8, os.cpu_count() or 1)
    bar = progress_bar(len(refs), "checking images", unit="images")
    bad: dict[int, str] = {}
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for row, reason in enumerate(pool.map(check_image, refs, chunksize=64)):
                bar.update(1)
                if reason is not None:
                    bad[row] = reason
    finally:
        bar.close()
    return bad
