"""Opening an image reference from the item table.

A reference is either a file path, or ``<path.mat>#<index>`` for the DCMH HDF5 image stacks
(``IAll`` of shape (N, 3, 224, 224) as h5py reads it). Failures raise DataError naming the file.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from pipeline.errors import DataError

@lru_cache(maxsize=8)
def _h5(path: str):  # one handle per process (DataLoader workers each get their own)
    import h5py

    return h5py.File(path, "r")


def load_image(ref: str) -> Image.Image:
    """The RGB image behind ``ref``; raises DataError when it cannot be read or decoded."""
    try:
        if "#" in ref and ref.split("#", 1)[0].endswith(".mat"):
            path, index = ref.split("#", 1)
            arr = np.asarray(_h5(path)["IAll"][int(index)])  # (3, W, H) as stored by MATLAB
            return Image.fromarray(np.ascontiguousarray(np.transpose(arr, (2, 1, 0))).astype(np.uint8)).convert("RGB")
        with Image.open(ref) as im:
            im.load()
            return im.convert("RGB")
    except DataError:
        raise
    except Exception as exc:  # PIL/h5py raise many types; all mean "this image is unusable"
        raise DataError(f"cannot read image {ref}: {type(exc).__name__}: {exc}") from exc
