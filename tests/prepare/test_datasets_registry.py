"""Every dataset source is registered with a summary and a default folder; unknown names list the known ones."""
from __future__ import annotations

import pytest

from stages.prepare.datasets import DATASETS, get_dataset


def test_all_sources_registered_with_summary_and_default_dir():
    get_dataset("demo")  # imports every source
    assert DATASETS.names() == ["coco", "demo", "mirflickr", "nuswide", "pairs"]
    for entry in DATASETS.entries():
        assert entry.summary and "default_dir" in entry.extra and entry.extra["default_root"] in ("data", "cache")
    assert get_dataset("mirflickr").extra["default_dir"] == "mirflickr25k_real20015"
    assert get_dataset("coco").extra["default_dir"] == "coco2017_real238"


def test_unknown_dataset_lists_the_names():
    with pytest.raises(KeyError, match=r"(?s)did you mean 'mirflickr'.*coco, demo, mirflickr, nuswide, pairs"):
        get_dataset("mirflikr")
