"""The reading of a results table, written from its numbers: what holds across code lengths, which cells
are still missing and what they would cost, and where the training time went.

Every sentence here is generated, so the README's reading cannot drift from its table. Two means are
told apart only when they differ by more than the larger of their sample standard deviations over
seeds; a comparison where neither side has a spread (one seed each) says so instead of guessing.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from stages.train.checks import device_kind

TASK_NAMES = {"i2t": "image→text", "t2i": "text→image"}
#: The shallow, tuned reference every deep method is read against.
BASELINE = "cca-itq"


def _key(row: Mapping[str, Any]) -> tuple[str, int]:
    return str(row["task"]), int(row["bits"])


def _compare(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    """'above' / 'below' / 'within' (noise) / 'unknown' (no spread on either side) for mean a against mean b."""
    stds = [float(s) for s in (a.get("std"), b.get("std")) if s is not None]
    if not stds:
        return "unknown"
    diff = float(a["mean"]) - float(b["mean"])
    if abs(diff) <= max(stds):
        return "within"
    return "above" if diff > 0 else "below"


def configuration_note(row: Mapping[str, Any]) -> str:
    """What tells a row's configuration from its method's others beside the method's name: its epochs when
    they are fewer or more than its paper's (a budget row), and its device when it is a GPU."""
    note = ""
    epochs, paper = row.get("epochs"), row.get("paper_epochs")
    if epochs is not None and paper is not None and str(epochs) != str(paper):
        note += f" ({epochs} of {paper} epochs)"
    kind = device_kind(row.get("device"))
    return note if kind == "cpu" else f"{note} on {kind}"


def shown_name(row: Mapping[str, Any]) -> str:
    """A configuration's name in a sentence, so two configurations of one method published side by side are
    read apart, never one in the other's place."""
    return str(row["method"]) + configuration_note(row)


def _by_method(stats: Iterable[Mapping[str, Any]]) -> dict[str, dict[tuple[str, int], Mapping[str, Any]]]:
    out: dict[str, dict[tuple[str, int], Mapping[str, Any]]] = defaultdict(dict)
    for row in stats:
        out[shown_name(row)][_key(row)] = row
    return out


def _label(method: str, supervised: set[str]) -> str:
    return f"{method} (supervised)" if method in supervised else method


def across_lengths(stats: Sequence[Mapping[str, Any]]) -> list[str]:
    """Per task: who leads at each length, how each deep method stands against the tuned baseline at every
    length, and whose mean rises with every longer code. ``stats``: ``stages.present.tables.results_table``
    rows (one configuration per method)."""
    methods = _by_method(stats)
    supervised = {shown_name(r) for r in stats if r.get("supervised")}
    lines = []
    for task in sorted({str(r["task"]) for r in stats}):
        name = TASK_NAMES.get(task, task)
        bits = sorted({b for cells in methods.values() for t, b in cells if t == task})
        best = [max((cells[(task, b)] for cells in methods.values() if (task, b) in cells), key=lambda r: r["mean"])
                for b in bits]
        leaders = [shown_name(r) for r in best]
        if len(set(leaders)) == 1:
            lines.append(f"{name}: {_label(leaders[0], supervised)} has the best mean at every length "
                         f"({', '.join(map(str, bits))} bits).")
        else:
            lines.append(f"{name}: the best mean moves with the length: "
                         + ", ".join(f"{b} bits {_label(m, supervised)}" for b, m in zip(bits, leaders)) + ".")
        lines += _against_baseline(task, name, bits, methods, supervised)
        rising = [m for m, cells in sorted(methods.items()) if _rises(cells, task, bits)]
        falling = {m: _first_fall(cells, task, bits) for m, cells in sorted(methods.items())
                   if m not in rising and sum((task, b) in cells for b in bits) > 1}
        if rising:
            lines.append(f"{name}: the mean rises with every longer code for {', '.join(rising)}"
                         + (f"; not for {', '.join(f'{m} (down from {a} to {b} bits)' for m, (a, b) in falling.items())}"
                            if falling else "") + ".")
    return lines


def _against_baseline(task: str, name: str, bits: Sequence[int], methods: Mapping[str, Mapping],
                      supervised: set[str]) -> list[str]:
    base = methods.get(BASELINE)
    if not base:
        return []
    groups: dict[str, list[str]] = defaultdict(list)
    for method, cells in sorted(methods.items()):
        if method.split(" on ")[0] in (BASELINE, "baseline"):  # the shallow rows, of either device
            continue
        verdicts = [_compare(cells[(task, b)], base[(task, b)]) for b in bits if (task, b) in cells and (task, b) in base]
        if not verdicts:
            continue
        label = _label(method, supervised)
        lengths = [b for b in bits if (task, b) in cells and (task, b) in base]
        detail = f"{label} ({'; '.join(f'{b} bits {v}' for b, v in zip(lengths, verdicts))})"
        if len(verdicts) < len(bits):
            groups["partial"].append(detail)
        elif len(set(verdicts)) == 1:
            groups[verdicts[0]].append(label)
        else:
            groups["mixed"].append(detail)
    words = {"above": "above it beyond noise at every length", "below": "below it beyond noise at every length",
             "within": "within noise of it at every length", "unknown": "one seed on both sides at every length "
             "(no spread to compare)", "mixed": "it depends on the length",
             "partial": "not run at every length yet"}
    parts = [f"{words[k]}: {', '.join(v)}" for k, v in groups.items() if v]
    return [f"{name} against {BASELINE.upper()} (the tuned shallow baseline): " + "; ".join(parts) + "."] if parts else []


def _rises(cells: Mapping[tuple[str, int], Mapping], task: str, bits: Sequence[int]) -> bool:
    means = [float(cells[(task, b)]["mean"]) for b in bits if (task, b) in cells]
    return len(means) == len(bits) > 1 and all(b > a for a, b in zip(means, means[1:]))


def _first_fall(cells: Mapping[tuple[str, int], Mapping], task: str, bits: Sequence[int]) -> tuple[int, int]:
    have = [b for b in bits if (task, b) in cells]
    for a, b in zip(have, have[1:]):
        if float(cells[(task, b)]["mean"]) <= float(cells[(task, a)]["mean"]):
            return a, b
    return have[0], have[-1]  # never rises and never falls: not reached for two or more lengths


@dataclass
class Missing:
    """Cells of the planned table without a result of the current code version."""

    cells: list[tuple[str, int, int]] = field(default_factory=list)  # (method, bits, seed)
    hours: dict[str, float | None] = field(default_factory=dict)  # method -> estimated CPU-hours (None: unknown)

    @property
    def total_hours(self) -> float:
        return sum(h for h in self.hours.values() if h is not None)


def missing_cells(rows: Iterable[Mapping[str, Any]], methods: Sequence[str], bits: Sequence[int],
                  seeds: Sequence[int]) -> Missing:
    """The planned cells without a CPU run in ``rows`` (report rows; a GPU's run is another configuration, and
    `make table` on the CPU still trains the cell), and their cost at each method's measured speed: the mean
    ``train_s`` of its published CPU runs (any length), for methods that have one."""
    have: set[tuple[str, int, int]] = set()
    seconds: dict[str, list[float]] = defaultdict(list)
    seen_runs: set[str] = set()
    for r in rows:
        if device_kind(r.get("device")) != "cpu":
            continue
        have.add((str(r["method"]), int(r["bits"]), int(r["seed"])))
        if r.get("run_id") in seen_runs or r.get("train_s") is None:
            continue
        seen_runs.add(r.get("run_id"))
        seconds[str(r["method"])].append(float(r["train_s"]))
    out = Missing()
    for seed in seeds:
        for method in methods:
            for b in bits:
                if (method, b, seed) not in have:
                    out.cells.append((method, b, seed))
    for method in {m for m, _, _ in out.cells}:
        n = sum(1 for m, _, _ in out.cells if m == method)
        runs = seconds.get(method)
        out.hours[method] = n * sum(runs) / len(runs) / 3600 if runs else None
    return out


def missing_lines(missing: Missing, planned: int) -> list[str]:
    if not missing.cells:
        return [f"Every planned cell ({planned}) has a result."]
    by_method: dict[str, list[str]] = defaultdict(list)
    for method, b, seed in missing.cells:
        by_method[method].append(f"{b}b s{seed}")
    unknown = sorted(m for m, h in missing.hours.items() if h is None)
    lines = [f"Missing cells ({len(missing.cells)} of {planned}), about {missing.total_hours:.0f} CPU-hours at the "
             f"single-thread speed of each method's published runs"
             + (f" (no published run to time: {', '.join(unknown)})" if unknown else "") + ":", ""]
    lines += [f"- {m}: {', '.join(cells)}" for m, cells in sorted(by_method.items())]
    return lines


def device_lines(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Training time per device, from the rows' ``train_s`` and ``device`` (a GPU pass shows up here)."""
    runs: dict[str, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r.get("train_s") is not None:
            device = device_kind(r["device"]) if r.get("device") else "unknown"  # cuda:0 and cuda: one device
            runs[device][str(r["run_id"])] = float(r["train_s"])
    parts = [f"{dev}: {len(v)} runs, {sum(v.values()) / 3600:.1f} h of training" for dev, v in sorted(runs.items())]
    if not any(dev.startswith("cuda") for dev in runs):
        parts.append("cuda: none yet (`make table DEVICE=cuda WORKERS=6` on a GPU machine trains every cell the GPU "
                     "lacks, as runs of their own beside the CPU's)")
    return ["Training time by device: " + "; ".join(parts) + "."]
