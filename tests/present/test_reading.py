"""The generated reading of a table: statements across code lengths, missing cells and their cost."""
from __future__ import annotations

from stages.present.reading import across_lengths, device_lines, missing_cells, missing_lines


def _stat(method, task, bits, mean, std=0.01, supervised=False):
    return {"method": method, "task": task, "bits": bits, "mean": mean, "std": std, "supervised": supervised}


def test_across_lengths_reads_leaders_the_baseline_comparison_and_monotony():
    stats = []
    for b, (base, deep, flat) in zip((16, 32, 64), ((0.70, 0.80, 0.705), (0.72, 0.82, 0.715), (0.74, 0.81, 0.745))):
        stats += [_stat("cca-itq", "i2t", b, base), _stat("ccah", "i2t", b, deep), _stat("cfrh", "i2t", b, flat)]
    lines = across_lengths(stats)
    assert lines[0] == "image→text: ccah has the best mean at every length (16, 32, 64 bits)."
    assert "above it beyond noise at every length: ccah" in lines[1]
    assert "within noise of it at every length: cfrh" in lines[1]
    assert "rises with every longer code for cca-itq, cfrh; not for ccah (down from 32 to 64 bits)" in lines[2]


def test_one_seed_on_both_sides_is_said_not_ranked():
    stats = [_stat("cca-itq", "t2i", 64, 0.7, None), _stat("ucmfh", "t2i", 64, 0.9, None, supervised=False)]
    assert "one seed on both sides" in across_lengths(stats)[1]


def test_missing_cells_and_their_cost_come_from_the_published_runs():
    rows = [{"run_id": "a", "method": "djsrh", "bits": 16, "seed": 1, "train_s": 3600.0, "device": "cpu"},
            {"run_id": "a", "method": "djsrh", "bits": 16, "seed": 1, "train_s": 3600.0, "device": "cpu"},
            {"run_id": "g", "method": "djsrh", "bits": 32, "seed": 1, "train_s": 60.0, "device": "cuda:0"}]
    missing = missing_cells(rows, ["djsrh", "ucmfh"], [16, 32], [1])  # a GPU's run leaves the CPU's cell missing
    assert missing.cells == [("djsrh", 32, 1), ("ucmfh", 16, 1), ("ucmfh", 32, 1)]
    assert missing.hours == {"djsrh": 1.0, "ucmfh": None}
    text = "\n".join(missing_lines(missing, 4))
    assert "Missing cells (3 of 4), about 1 CPU-hours" in text and "no published run to time: ucmfh" in text
    assert "cuda: none yet" in device_lines(rows[:2])[0] and "cuda: 1 runs" in device_lines(rows)[0]
