"""An uploaded picture: its size checked from the header before any pixel is decoded, then decoded to RGB.

A 100-megapixel upload would take gigabytes to decode; PIL reads the width and height from the
header alone (``Image.open`` is lazy), so the pixel limit is enforced before ``load``. Only the
formats people upload photos in are opened at all.
"""
from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image

from pipeline.ground.errors import DataError
from pipeline.ground.images import MAX_QUERY_PIXELS, as_rgb
from pipeline.orchestration.serving.refusals import Refusal

#: The largest picture decoded, in pixels: the limit `cmh query --image` keeps too.
MAX_PIXELS = MAX_QUERY_PIXELS
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
SEND_ONE = ("send a JPEG, PNG, WebP, GIF, BMP or TIFF picture, as the multipart field `image` or as the raw body "
            "with its image content type")


def read_picture(data: bytes, max_pixels: int = MAX_PIXELS) -> Any:
    """The RGB ``PIL.Image`` of an upload; a 400 ``Refusal`` for anything else (empty, not a picture,
    truncated, too many pixels)."""
    if not data:
        raise Refusal(400, "the upload is empty", SEND_ONE)
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:  # PIL's own ceiling, far above ours, checked before it tells the size
        raise Refusal(400, f"the picture is over {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} megapixels, more than "
                      f"the {max_pixels / 1e6:.0f} the service decodes", _smaller(max_pixels)) from None
    except Image.UnidentifiedImageError:
        raise Refusal(400, f"the upload ({len(data)} bytes, starting {data[:8]!r}) is not a picture in a format the "
                      f"service reads", SEND_ONE) from None
    except Exception as exc:  # PIL raises many types for a damaged header; all mean "not a picture we read"
        raise Refusal(400, f"the upload is not a readable picture ({type(exc).__name__}: {_first_line(exc)})",
                      SEND_ONE) from None
    width, height = image.size
    if width * height > max_pixels:
        raise Refusal(400, f"the picture is {width} x {height} = {width * height / 1e6:.0f} megapixels, more than "
                      f"the {max_pixels / 1e6:.0f} the service decodes", _smaller(max_pixels))
    if width < 1 or height < 1:
        raise Refusal(400, f"the picture is {width} x {height} pixels", SEND_ONE)
    try:
        image.load()
        return as_rgb(image, "the upload")  # read as `cmh query --image` reads the same file
    except DataError as exc:  # a sample format of unknown brightness scale (32-bit integers, floats > 1)
        raise Refusal(400, str(exc), "save it with 8 or 16 bits per sample") from None
    except Exception as exc:  # truncated JPEGs, corrupt PNG chunks, odd modes
        raise Refusal(400, f"the {image.format} picture cannot be decoded ({type(exc).__name__}: {_first_line(exc)}): "
                      f"it may be truncated", f"send the whole file; {SEND_ONE}") from None


def preview_uri(picture: Any, side: int = 160) -> str:
    """A small JPEG of an uploaded picture as a ``data:`` URI, to show the query beside its results."""
    small = picture.copy()
    small.thumbnail((side, side), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _smaller(max_pixels: int) -> str:
    return f"scale the picture down to at most {max_pixels / 1e6:.0f} megapixels (the search reads it at 224 px)"


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [""])[0][:160]
