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
        with session:
            for name in names:
                encoder = create_encoder(name, **by_prefix[encoder_kind(name)])
                summary = run(cache, items, splits, encoder, shard=shard, device=req.device,
                              batch_size=req.batch_size, overwrite=req.overwrite)
                echo(f"{summary.describe()}\n  -> {cache.encoder_dir(dataset_req.cache_name, encoder.id)}")
    echo(f"extract finished in {time.perf_counter() - start:.0f} s: dataset {dataset_req.cache_name} "
         f"({len(items)} items), features of {', '.join(names)}, under {cache.root}")


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
