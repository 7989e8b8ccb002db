"""``cmh rm``: remove runs, datasets, report thumbnails or checkpoints by name pattern.

A dry run (the plan, nothing removed) unless ``yes``. What others depend on is held back unless ``force``,
and said: a dataset that runs were trained on or encoded (they would be stale), a run with encodings or
indexes of other datasets. A run another process is training is refused whatever the flags, naming its pid.
A wildcard pattern that matches every entry of the kind needs ``all``, so `cmh rm '*'` is never an accident.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from pipeline.ground.errors import CacheError, CMHError, ConfigError
from pipeline.ground.store import removal
from pipeline.ground.store.cache import Cache
from pipeline.ground.store.inventory import COMPLETE, DatasetInfo, RunInfo
from pipeline.ground.store.near import did_you_mean
from pipeline.orchestration.inventory import check_patterns, matches, mib, take_stock

KINDS = ("runs", "datasets", "thumbnails", "checkpoints")


@dataclass
class RmRequest:
    patterns: Sequence[str] = ()  # globs on run ids (runs, checkpoints) or dataset names (datasets, thumbnails)
    kind: str = "runs"
    dataset: str | None = None
    method: str | None = None
    yes: bool = False  # remove; otherwise only say what would go
    all: bool = False  # every entry of the kind (after --dataset/--method), or a pattern matching them all
    force: bool = False  # also what others depend on


@dataclass
class Planned:
    name: str
    bytes: int
    remove: Callable[[], int]
    note: str = ""  # what else goes with it, or what it costs
    held: str = ""  # why it needs --force
    busy: str = ""  # why it is refused


@dataclass
class RmResult:
    planned: list[Planned] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    freed: int = 0


def remove(cache: Cache, req: RmRequest, echo: Callable[[str], None] = print) -> RmResult:
    """Plan the removal, print it, and carry it out when ``req.yes`` and nothing blocks it."""
    if req.kind not in KINDS:
        raise ConfigError(f"--kind {req.kind!r}: choose {', '.join(KINDS)}")
    patterns = check_patterns(req.patterns)
    if req.yes and cache.root.is_dir():  # (a dry run deletes nothing; listings skip them meanwhile)
        removal.drop_tombstones(cache)  # what a killed `cmh rm` left half deleted
    if not patterns and not req.all:
        raise ConfigError(f"say which {req.kind} to remove: a name or a quoted glob (e.g. `cmh rm 'demo-ucmfh-*'`), "
                          f"or --all for every one (`cmh ls` lists them)")
    plan = _plan(cache, req, patterns)
    result = RmResult(plan)
    verb = "removing" if req.yes else "would remove"
    echo(f"{verb} {len(plan)} {req.kind}, {mib(sum(p.bytes for p in plan))}:")
    for p in plan:
        flags = "".join(f"  [{w}]" for w in (p.note, p.held and f"needs --force: {p.held}",
                                            p.busy and f"refused: {p.busy}") if w)
        echo(f"  {p.name}  {mib(p.bytes)}{flags}")
    busy = [p for p in plan if p.busy]
    held = [p for p in plan if p.held and not req.force]
    if not req.yes:
        blockers = (f"; {len(busy)} refused (being written by another process)" if busy else "") + \
                   (f"; {len(held)} need --force" if held else "")
        echo(f"dry run: nothing removed{blockers}; add --yes to remove them")
        return result
    if busy:
        raise CacheError(f"{busy[0].name}: {busy[0].busy}; nothing removed (wait for it, or leave it out of the "
                         f"pattern)")
    if held:
        raise CacheError(f"{held[0].name}: {held[0].held}; nothing removed: remove those first, or pass --force"
                         + (f" ({len(held)} entries are held back)" if len(held) > 1 else ""))
    for p in plan:
        try:
            result.freed += p.remove()
        except CMHError as exc:  # e.g. an extraction or a training started since the plan: say what is gone
            gone = f"; removed before it: {_few(result.removed)}" if result.removed else "; nothing removed"
            raise type(exc)(f"{p.name}: {exc}{gone}") from None
        result.removed.append(p.name)
    echo(f"removed {len(result.removed)} {req.kind}, freed {mib(result.freed)}")
    return result


def _plan(cache: Cache, req: RmRequest, patterns: list[str]) -> list[Planned]:
    stock = take_stock(cache, req.dataset, req.method)
    if req.kind in ("runs", "checkpoints"):
        runs = stock.runs if req.kind == "runs" else [r for r in stock.runs if r.checkpoint_bytes]
        candidates = {r.run_id: r for r in runs}
    else:
        datasets = stock.datasets if req.kind == "datasets" else [d for d in stock.datasets if d.thumbs]
        candidates = {d.name: d for d in datasets}
    if not candidates:
        raise ConfigError(f"no {req.kind} to remove in {cache.root}" + _scope(req) + " (`cmh ls` lists what is there)")
    chosen = [n for n in candidates if matches(n, patterns)]
    if not chosen:
        raise ConfigError(f"no {req.kind} in {cache.root}{_scope(req)} match {' '.join(patterns)}"
                          f"{did_you_mean(patterns[0].strip('*'), candidates, 'closest')}")
    wildcard = any(set(p) & set("*?[") for p in patterns)
    if wildcard and len(chosen) == len(candidates) > 1 and not req.all:
        raise ConfigError(f"{' '.join(patterns)} matches every one of the {len(chosen)} {req.kind}{_scope(req)}: pass "
                          f"--all to remove them all, or a narrower pattern")
    if req.kind == "runs":
        return [_plan_run(candidates[n]) for n in chosen]
    if req.kind == "checkpoints":
        return [_plan_checkpoint(candidates[n]) for n in chosen]
    if req.kind == "datasets":
        everything = take_stock(cache)  # runs of other --method filters depend on it too
        return [_plan_dataset(cache, candidates[n], everything.runs) for n in chosen]
    return [Planned(n, candidates[n].thumb_bytes, lambda d=candidates[n]: removal.remove_thumbnails(d),
                    note="report pages show placeholders until `cmh report --html` makes them again")
            for n in chosen]


def _scope(req: RmRequest) -> str:
    return "".join(f" of {what} {value!r}" for what, value in (("dataset", req.dataset), ("method", req.method))
                   if value)


def _plan_run(run: RunInfo) -> Planned:
    p = Planned(run.run_id, run.bytes, lambda: removal.remove_run(run), note=run.state)
    if run.busy:
        p.busy = f"process {run.busy} is {run.busy_doing or 'training'} it"
    holds = ([f"codes of {', '.join(run.encodings)} (cmh encode)"] if run.encodings else []) + \
            (["an index of its database (cmh index)"] if "database" in run.indexes else [])
    if holds:
        p.held = f"it holds {' and '.join(holds)}, which go with it"
    return p


def _plan_checkpoint(run: RunInfo) -> Planned:
    p = Planned(run.run_id, run.checkpoint_bytes, lambda: removal.remove_checkpoint(run),
                note="finished: the checkpoint is a leftover" if run.state == COMPLETE
                else "unfinished: training it again starts from epoch 0")
    if run.busy:
        p.busy = f"process {run.busy} is {run.busy_doing or 'training'} it"
    return p


def _plan_dataset(cache: Cache, dataset: DatasetInfo, runs: list[RunInfo]) -> Planned:
    p = Planned(dataset.name, dataset.bytes, lambda: removal.remove_dataset(cache, dataset),
                note="items, splits and features" + (" (its report thumbnails stay: --kind thumbnails)"
                                                     if dataset.thumbs else ""))
    trained = [r for r in runs if r.dataset == dataset.name]
    encoded = [r for r in runs if dataset.name in r.encodings]
    busy = [r for r in trained if r.busy]
    if busy:
        p.busy = f"process {busy[0].busy} is {busy[0].busy_doing or 'training'} run {busy[0].run_id}, trained on it"
    parts = []
    if trained:
        parts.append(f"{len(trained)} run(s) were trained on it ({_few([r.run_id for r in trained])})")
    if encoded:
        parts.append(f"{len(encoded)} run(s) encoded it ({_few([r.run_id for r in encoded])})")
    if parts:
        p.held = " and ".join(parts) + f" and could no longer be checked against their data (`cmh rm --dataset " \
                                       f"{dataset.name} --all --force` removes the runs)"
    return p


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")
