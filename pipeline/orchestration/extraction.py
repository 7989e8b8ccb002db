"""Extraction, the use case: prepare a dataset's items and splits, then run each encoder over it.

``cmh extract`` builds an :class:`ExtractRequest` and calls :func:`extract`; every check that needs no
data (engine options, encoder names, option prefixes) runs before the dataset is read.
"""
from __future__ import annotations

import contextlib
import difflib
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.ground.errors import ConfigError
from pipeline.ground.store.cache import Cache
from pipeline.ground.store.lock import DatasetLock
from pipeline.orchestration.engines import check_engine_options


@dataclass
class ExtractRequest:
    dataset: str = "mirflickr"  # the source
    data_dir: Path | None = None
    encoders: tuple[str, ...] = ("alexnet", "bow")
    limit: int | None = None
    name: str | None = None
    seed: int = 1
    protocol: str | None = None
    n_query: int | None = None
    n_train: int | None = None
    n_validation: int | None = None
    shard: str | None = None  # "i/n"
    device: str | None = None
    batch_size: int = 64
    workers: int | None = None
    engine: str = "local"
    ray_address: str | None = None
    concurrency: int | None = None
    #: ``prefix.key`` -> value: ``dataset.`` options for the source, ``<encoder kind>.`` options for an encoder
    options: dict[str, Any] = field(default_factory=dict)
    overwrite: bool = False


def extract(cache: Cache, req: ExtractRequest, echo: Callable[[str], None] = print) -> None:
    """Write the dataset's items, splits and every requested encoder's features; ``echo`` gets the summaries."""
    from pipeline.ground.store.features import ShardSpec
    from stages.extract import ENCODERS, create_encoder, load_encoders
    from stages.extract.runner import run_extraction
    from stages.prepare import DatasetRequest, prepare_dataset

    check_engine_options(req.engine, ray_address=req.ray_address, concurrency=req.concurrency, device=req.device,
                         local_only={"--workers": req.workers}, ray_device_option=False)
    load_encoders()
    names = [e.strip() for e in req.encoders if e.strip()]
    if not names:
        raise ConfigError("give at least one encoder, e.g. --encoders alexnet,bow (see `cmh list encoders`)")
    for name in names:
        ENCODERS.resolve(encoder_kind(name))  # an unknown encoder fails before the dataset is read
    by_prefix = options_by_prefix(req.options, names)
    shard = ShardSpec.parse(req.shard)
    dataset_req = DatasetRequest(dataset=req.dataset, data_dir=req.data_dir, limit=req.limit, name=req.name,
                                 protocol=req.protocol, seed=req.seed, n_query=req.n_query, n_train=req.n_train,
                                 n_validation=req.n_validation, options=by_prefix["dataset"])
    # the dataset's lock, held shared from the items' check (or write) to the last encoder, so no other
    # extraction can replace the items whose features these are
    start = time.perf_counter()
    with DatasetLock(cache, dataset_req.cache_name) as lock:
        items, splits = prepare_dataset(cache, dataset_req, overwrite=req.overwrite, lock=lock)
        sizes = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
        echo(f"dataset {dataset_req.cache_name}: {len(items)} items ({sizes}) -> "
             f"{cache.dataset_dir(dataset_req.cache_name)}")
        session: Any = contextlib.nullcontext()
        if req.engine == "ray":  # ray is imported on this path only
            from stages.extract.ray_engine import ray_session, run_extraction_ray

            session = ray_session(req.ray_address)
            run = functools.partial(run_extraction_ray, concurrency=req.concurrency)
        else:
            run = functools.partial(run_extraction, workers=req.workers)
        # image encoders first: their pass finds the pairs whose image fails, which are then dropped from the
        # item table before any text encoder reads it (stages.prepare.images)
        image_names = [n for n in names if reads_images(n)]
        summaries = []
        with session:
            for name in [*image_names, None, *[n for n in names if n not in image_names]]:
                if name is None:
                    items = _settle_images(cache, items, [s.encoder for s in summaries],
                                           complete=all(s.complete for s in summaries))
                    continue
                encoder = create_encoder(name, **by_prefix[encoder_kind(name)])
                summary = run(cache, items, splits, encoder, shard=shard, device=req.device,
                              batch_size=req.batch_size, overwrite=req.overwrite)
                summaries.append(summary)
                echo(f"{summary.describe()}\n  -> {cache.encoder_dir(dataset_req.cache_name, encoder.id)}")
                del encoder  # its model is freed before the next one loads
    echo(command_timings(summaries, what=f"dataset {dataset_req.cache_name} ({len(items)} items), features of "
                                         f"{', '.join(names)}, under {cache.root}"))


def command_timings(summaries: list[Any], what: str, started: float | None = None) -> str:
    """The command's last line: how long since the process started, ``what`` was written where, and where the
    time went: start-up (process start to the model's first batch: imports, item table, fingerprint,
    weights, loader), the encoders' loops, and the finish after the last one."""
    now = time.time()
    started = process_started() if started is None else started
    first = min((s.first_batch_at for s in summaries if s.first_batch_at), default=0.0)
    last = max((s.finished_at for s in summaries), default=now)
    startup = f"start-up {first - started:.1f} s to the first batch" if first else "nothing to encode"
    loops = ", ".join(f"{s.encoder} {s.loop_s:.1f} s" for s in summaries)
    return (f"extract finished in {now - started:.1f} s since the process started: {what}; {startup}; "
            f"encode loops: {loops or 'none'}; finish {now - last:.1f} s after the last encoder")


def process_started() -> float:
    """time.time() when this process started (the interpreter's own start-up and imports count too)."""
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:  # psutil missing or the OS says nothing: count from here instead
        return time.time()


def reads_images(name: str) -> bool:
    """Whether the encoder ``name`` decodes images (known from its class, before its weights load)."""
    from stages.extract import ENCODERS

    return "image" in getattr(ENCODERS.get(encoder_kind(name)).builder, "inputs", frozenset({"image"}))


def _settle_images(cache: Cache, items: Any, image_encoders: list[str], *, complete: bool) -> Any:
    """The item table without the pairs whose image failed in this extraction's image pass (or, when it has
    no image encoder and no extraction decoded them yet, in a check of every image, so that text features
    never hold a pair that has no picture)."""
    from pipeline.ground.store.features import read_errors
    from stages.prepare.images import check_images, drop_failed_images, image_pass_pending

    failures: dict[int, str] = {}
    for encoder in image_encoders:
        failures.update(read_errors(cache, items.dataset, encoder))
    pending = image_pass_pending(cache, items.dataset)
    if pending and not image_encoders:
        failures, complete = check_images(items), True
    if not failures and not (pending and complete):
        return items
    return drop_failed_images(cache, items, failures, complete=complete)


def encoder_kind(name: str) -> str:
    return name.split(".")[0].split("-")[0]  # clip-vit-b-32.openai -> clip


def options_by_prefix(opts: dict[str, Any], encoder_names: list[str]) -> dict[str, dict[str, Any]]:
    """``-o prefix.key=value`` grouped by prefix; ConfigError for a prefix that no requested part reads.

    ``dataset`` and the kind of each requested encoder are the prefixes; a misspelled one (``alexnt``)
    or one for an encoder not being extracted would otherwise be ignored without a word.
    """
    from stages.extract import ENCODERS

    kinds = {encoder_kind(e) for e in encoder_names}
    out: dict[str, dict[str, Any]] = {"dataset": {}, **{k: {} for k in kinds}}
    for key, value in opts.items():
        prefix, dot, name = key.partition(".")
        if not dot or not name:
            raise ConfigError(f"option {key!r} needs a prefix: dataset.{key} or <encoder>.{key} "
                              f"(encoders here: {', '.join(sorted(kinds))})")
        if prefix not in out:
            known = sorted(set(out) | set(ENCODERS.names()))
            if prefix in known:
                raise ConfigError(f"option {key!r} is for encoder {prefix!r}, which is not among --encoders "
                                  f"{','.join(encoder_names)}; add it there or drop the option")
            close = difflib.get_close_matches(prefix, known, n=1)
            hint = f"did you mean {close[0]}.{name}? " if close else ""
            raise ConfigError(f"option {key!r}: unknown prefix {prefix!r}; {hint}prefixes: {', '.join(sorted(out))}")
        out[prefix][name] = value
    return out
