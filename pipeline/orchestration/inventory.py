"""``cmh ls``: what the cache holds (datasets, runs, encodings and indexes), filtered by kind, dataset,
method and name patterns; and the selection that ``cmh rm`` shares with it."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Sequence

from pipeline.ground.errors import ConfigError
from pipeline.ground.store.cache import Cache
from pipeline.ground.store.inventory import (COMPLETE, DatasetInfo, RunInfo, dataset_info, dataset_names,
                                             run_folders, run_info)
from pipeline.ground.store.near import did_you_mean

KINDS = ("datasets", "runs", "encodings")


@dataclass
class Inventory:
    datasets: list[DatasetInfo]
    runs: list[RunInfo]


@dataclass
class LsRequest:
    patterns: Sequence[str] = ()  # globs on dataset names and run ids; none: everything
    kind: str | None = None  # datasets | runs | encodings; None: all three
    dataset: str | None = None
    method: str | None = None


def check_patterns(patterns: Sequence[str]) -> list[str]:
    """The patterns as given; ConfigError for an empty one (a shell variable that was not set)."""
    for p in patterns:
        if not p.strip():
            raise ConfigError("an empty pattern matches nothing: give a name or a glob, e.g. 'demo-*' (quoted)")
    return list(patterns)


def matches(name: str, patterns: Sequence[str]) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(name, p) for p in patterns)


def take_stock(cache: Cache, dataset: str | None = None, method: str | None = None) -> Inventory:
    """Every dataset and run of the cache, of ``dataset`` / ``method`` only when given; ConfigError naming the
    near matches when either is not in the cache."""
    if not cache.root.is_dir():  # (a file there is refused when the cache is opened)
        raise ConfigError(f"cache {cache.root} is missing: nothing was extracted there; give --cache (or CMH_CACHE) "
                          f"the folder `cmh extract` wrote")
    names = dataset_names(cache)
    runs = [run_info(r) for r in run_folders(cache)]
    if dataset is not None:
        if not dataset.strip():
            raise ConfigError("--dataset is empty: give a cached dataset's name (`cmh ls --kind datasets`)")
        known = set(names) | {r.dataset for r in runs if r.dataset}
        if dataset not in known:
            raise ConfigError(f"no dataset {dataset!r} in {cache.root}{did_you_mean(dataset, known)}")
        names = [n for n in names if n == dataset]
        runs = [r for r in runs if r.dataset == dataset]
    if method is not None:
        methods = sorted({r.method for r in runs if r.method})
        if method not in methods:
            close = did_you_mean(method, methods, "closest")
            raise ConfigError(f"no run of method {method!r} in {cache.root}"
                              + (close or f"; methods with runs: {', '.join(methods) or 'none'}"))
        runs = [r for r in runs if r.method == method]
    return Inventory([dataset_info(cache, n, cache.reports_dir) for n in names], runs)


def list_cache(cache: Cache, req: LsRequest) -> list[str]:
    """The lines of ``cmh ls``: a section per kind, each entry on one line, sizes in MiB."""
    if req.kind is not None and req.kind not in KINDS:
        raise ConfigError(f"--kind {req.kind!r}: choose {', '.join(KINDS)}")
    patterns = check_patterns(req.patterns)
    stock = take_stock(cache, req.dataset, req.method)
    kinds = [req.kind] if req.kind else list(KINDS)
    datasets = [d for d in stock.datasets if matches(d.name, patterns)] if "datasets" in kinds else []
    runs = [r for r in stock.runs if matches(r.run_id, patterns)]
    encoded = [r for r in runs if r.encodings or r.indexes] if "encodings" in kinds else []
    runs = runs if "runs" in kinds else []
    if patterns and not (datasets or runs or encoded):
        names = [d.name for d in stock.datasets] + [r.run_id for r in stock.runs]
        raise ConfigError(f"nothing in {cache.root} matches {' '.join(patterns)}"
                          f"{did_you_mean(patterns[0].strip('*'), names, 'closest')} (`cmh ls` lists everything)")
    lines = [f"cache {cache.root}"]
    if "datasets" in kinds:
        lines.append(f"datasets: {len(datasets)}, {mib(sum(d.bytes for d in datasets))}")
        lines += ["  " + _dataset_line(d) for d in datasets]
    if "runs" in kinds:
        complete = sum(r.state == COMPLETE for r in runs)
        models = [r for r in runs if r.model_bytes]
        ckpts = [r for r in runs if r.checkpoint_bytes]
        lines.append(f"runs: {len(runs)} ({complete} complete), {mib(sum(r.bytes for r in runs))}; "
                     f"{len(models)} model(s) {mib(sum(r.model_bytes for r in models))}, "
                     f"{len(ckpts)} checkpoint(s) {mib(sum(r.checkpoint_bytes for r in ckpts))}")
        lines += ["  " + _run_line(r) for r in runs]
    if "encodings" in kinds:
        lines.append(f"encodings and indexes: {len(encoded)} run(s)")
        lines += [f"  {r.run_id}  encoded: {', '.join(r.encodings) or '-'}  indexes: {', '.join(r.indexes) or '-'}"
                  for r in encoded]
    return lines


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _dataset_line(d: DatasetInfo) -> str:
    items = "? items (unreadable item table)" if d.items is None else f"{d.items} items"
    splits = " · ".join(f"{k} {v}" for k, v in d.splits.items()) or "no splits"
    shown = d.encoders + [e for e in d.incomplete_encoders if e not in d.encoders]
    encoders = ", ".join(e + (" (incomplete)" if e in d.incomplete_encoders else "") for e in shown) or "no features"
    partial = ""
    thumbs = f"; thumbnails {mib(d.thumb_bytes)}" if d.thumbs else ""
    return f"{d.name}  {items}  {splits}  encoders: {encoders}{partial}  {mib(d.bytes)}{thumbs}"


def _run_line(r: RunInfo) -> str:
    if r.epochs is None:
        schedule = "default epochs" if r.paper_epochs else "closed form"
    else:
        schedule = f"{r.epochs} epochs" + (f" (budget: paper {r.paper_epochs})" if r.budget else "")
    scores = " ".join(f"{t} {v:.4f}" for t, v in sorted(r.map50.items()) if t in ("i2t", "t2i"))
    state = r.state + (f", {r.busy_doing or 'training'} now (pid {r.busy})" if r.busy else "")
    state += ", checkpoint" if r.checkpoint_bytes else ""
    return (f"{r.run_id}  {r.method or '?'} {r.bits or '?'}b s{r.seed if r.seed is not None else '?'}  "
            f"{r.image_features or '?'}/{r.text_features or '?'}  {schedule}  "
            f"mAP@50 {scores or '-'}  {mib(r.bytes)}  {state}")
