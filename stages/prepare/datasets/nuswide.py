"""Dataset source: NUS-WIDE TC-10, the 186,577 image–tag pairs of the DCMH/DJSRH family.

Read from the DCMH ``.mat`` files: ``nus-wide-tc10-iall.mat`` (HDF5 ``IAll`` (N, 3, 224, 224)),
``nus-wide-tc10-yall.mat`` (``YAll``, a 1000-d BoW; stored HDF5, so h5py returns it transposed as
(1000, N) and it is turned back by comparing with the item count), ``nus-wide-tc10-lall.mat``
(``LAll`` (N, 10)). ``item_id`` = the row in the files, ``bow`` = ``YAll``.

Label names: the ten concepts are commonly listed as sky, clouds, person, water, animal, grass,
building, window, plants, lake, but the column order of ``LAll`` is not documented with the files,
so the names are generic ``label_0 .. label_9`` unless given (option ``label_names``, or a
``label_names.txt`` beside the files) [inferred: better no name than a wrong one].
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from stages.prepare.datasets.base import ItemTable, register_dataset, require_dir
from stages.prepare.datasets.dcmh import read_dcmh_mat

#: Sub-folder of the data root read when DATA_DIR is not given.
DEFAULT_DIR = "nus-wide-tc10"
MAT_FILES = {"image": "nus-wide-tc10-iall.mat", "text": "nus-wide-tc10-yall.mat", "labels": "nus-wide-tc10-lall.mat"}


@register_dataset("nuswide", aliases=("nus-wide", "nus", "nuswide-tc10", "nus-wide-tc10"), default_dir=DEFAULT_DIR,
                  default_root="data")
def nuswide(
    data_dir: Path,
    *,
    vocabulary: str | Path | None = None,
    label_names: Sequence[str] | None = None,
    drop_empty_text: bool = True,
) -> ItemTable:
    """NUS-WIDE TC-10: 186,577 Flickr images, 1000-d tag BoW, 10 concept labels (DCMH .mat files).

    Options: ``vocabulary`` a file with the 1000 tag words in ``YAll`` column order (texts are then
    those words, else ``t<j>``); ``label_names`` the ten names in ``LAll`` column order;
    ``drop_empty_text`` drops pairs whose ``YAll`` row is all zero (recorded in ``skipped``).
    """
    root = require_dir(data_dir, "nuswide", f"a folder with the DCMH files {', '.join(MAT_FILES.values())}")
    return read_dcmh_mat("nuswide", root, MAT_FILES,
                         vocabulary=Path(vocabulary) if vocabulary is not None else None,
                         label_names=list(label_names) if label_names is not None else None,
                         drop_empty_text=drop_empty_text)
