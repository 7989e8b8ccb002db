"""Published mAP@50 numbers (MIRFlickr-25K, 16/32/64/128 bits), for side-by-side tables.

Copied from the papers' own result tables. They come from other
features (fine-tuned AlexNet fc7, CLIP ViT-B/32, FLIP) and other tie rules (np.argsort), so compare
trends, not third decimals. Methods with no published MIRFlickr table (CFRH, FJSPH) are absent;
DSPRH published only its gains over its own DSAH re-run.
"""
from __future__ import annotations

from typing import Any

BITS = (16, 32, 64, 128)

#: (dataset, method) -> {"i2t": 4 values, "t2i": 4 values, "features": ..., "source": ...}
PUBLISHED: dict[tuple[str, str], dict[str, Any]] = {
    ("mirflickr", "djsrh"): {"i2t": (0.810, 0.843, 0.862, 0.876), "t2i": (0.786, 0.822, 0.835, 0.847),
                             "features": "fine-tuned AlexNet fc7 / BoW", "source": "DJSRH README Table 2"},
    ("mirflickr", "dsah"): {"i2t": (0.863, 0.877, 0.895, 0.903), "t2i": (0.846, 0.860, 0.881, 0.882),
                            "features": "fine-tuned AlexNet fc7 / BoW", "source": "CCAH Table 1"},
    ("mirflickr", "ccah"): {"i2t": (0.863, 0.879, 0.899, 0.910), "t2i": (0.891, 0.908, 0.914, 0.913),
                            "features": "CLIP ViT-B/32 / BoW", "source": "CCAH Table 1"},
    ("mirflickr", "ucmfh"): {"i2t": (0.923, 0.953, 0.964, 0.965), "t2i": (0.920, 0.947, 0.959, 0.961),
                             "features": "CLIP / CLIP, paired queries", "source": "UCMFH Table 3"},
}

#: DSPRH's stated gains over its own DSAH re-run (absolute or relative: the paper does not say).
DSPRH_GAINS_OVER_DSAH = {"i2t": (0.041, 0.049, 0.034, 0.032), "t2i": (0.033, 0.025, 0.031, 0.035)}


def published(dataset: str, method: str, task: str, bits: int) -> float | None:
    entry = PUBLISHED.get((dataset.split("-")[0], method))
    if entry is None or bits not in BITS:
        return None
    return entry[task][BITS.index(bits)]


def comparison_markdown(rows: list[dict[str, Any]], dataset: str) -> str:
    """``rows`` from ``tables.results_table`` (metric map@50) -> ours | published, per method × task × bits."""
    cells: dict[tuple[str, str], dict[int, float]] = {}
    configs: dict[str, set] = {}
    for r in rows:
        configs.setdefault(r["method"], set()).add((r.get("image_features"), r.get("epochs"), r.get("config_hash"),
                                                    r.get("device")))
    for r in rows:
        label = r["method"]
        if len(configs[label]) > 1:  # several configurations of one method: say which is which
            epochs = "no epochs" if r.get("epochs") is None else f"{r['epochs']} ep"  # closed form: not "None ep"
            on = f", {r.get('device') or 'cpu'}" if len({c[3] for c in configs[label]}) > 1 else ""  # GPU beside CPU
            label += f" [{r.get('image_features')}, {epochs}, {r.get('config_hash')}{on}]"
        cells.setdefault((label, r["task"]), {})[int(r["bits"])] = float(r["mean"])
    bits = sorted({int(r["bits"]) for r in rows})
    lines = [f"mAP@50 on {dataset}: ours / published (— = not published)", "",
             "| method | task | " + " | ".join(f"{b} bits" for b in bits) + " | published features |",
             "|---|---|" + "---:|" * len(bits) + "---|"]
    for (method, task) in sorted(cells):
        base = method.split(" ")[0]
        entry = PUBLISHED.get((dataset.split("-")[0], base))
        vals = []
        for b in bits:
            ours = cells[(method, task)].get(b)
            pub = published(dataset, base, task, b)
            vals.append(("–" if ours is None else f"{ours:.3f}") + " / " + ("—" if pub is None else f"{pub:.3f}"))
        lines.append(f"| {method} | {task} | " + " | ".join(vals) + f" | {entry['features'] if entry else '—'} |")
    return "\n".join(lines) + "\n"
