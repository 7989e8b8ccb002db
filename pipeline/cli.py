"""The ``cmh`` command line: extract, train, report, query, serve, encode, index, grid, list, ls, rm, demo.

Heavy imports (torch, open_clip, faiss) happen inside the commands so ``--help`` stays fast.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

import typer

try:  # typer 0.2x parses with a copy of click of its own, older ones with click itself
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors  # type: ignore[no-redef]

from pipeline.ground.errors import CMHError, ConfigError, Interrupted, storage_error_message

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Cross-modal hashing: extract features once, train hashing methods, query codes and reports.")
log = logging.getLogger("cmh")

CacheOpt = typer.Option(None, "--cache", help="cache root (default: $CMH_CACHE, else the cache/ folder of the cmh checkout, whatever the working directory)")


def _cache(cache: Optional[Path]):
    from pipeline.orchestration.caches import open_cache

    return open_cache(cache)


def _ints(text: str, option: str | None = None) -> list[int]:
    # commas or blanks separate values: dropping the blanks instead read BITS='16 32' as one 1632-bit length
    try:
        values = [int(v) for v in re.split(r"[,\s]+", text) if v]
    except ValueError:
        raise typer.BadParameter(f"expected a comma list of integers, got {text!r}", param_hint=option) from None
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:  # a repeated value would train or tabulate one cell twice
        raise typer.BadParameter(f"{text!r} names {', '.join(map(str, twice))} more than once; give each value once",
                                 param_hint=option)
    return values


def _key_values(pairs: list[str], option: str = "--set") -> dict:
    import json

    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"expected key=value, got {pair!r}", param_hint=option)
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        if key in out and out[key] != parsed:  # the last one would win without a word
            raise typer.BadParameter(f"{option} {key} is given twice ({out[key]!r} and {parsed!r}); give it once")
        out[key] = parsed
    return out


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="debug logging")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which SIMD build it loaded is not news


@app.command()
def extract(
    dataset: str = typer.Option("mirflickr", help="dataset source: mirflickr, nuswide, coco, pairs, demo"),
    data_dir: Optional[Path] = typer.Option(None, help="folder with the dataset files (default: its folder under ../shared/data)"),
    encoders: str = typer.Option("alexnet,bow", help="comma list of encoders (see `cmh list encoders`)"),
    cache: Optional[Path] = CacheOpt,
    limit: Optional[int] = typer.Option(None, help="take only the first N pairs (quick runs)"),
    name: Optional[str] = typer.Option(None, help="cache key for this dataset (default: <dataset>[-n<limit>])"),
    seed: int = typer.Option(1, help="split seed"),
    protocol: Optional[str] = typer.Option(None, help="split protocol: djsrh-mirflickr, djsrh-nuswide, random"),
    n_query: Optional[int] = typer.Option(None, help="query split size (default per protocol)"),
    n_train: Optional[int] = typer.Option(None, help="training split size, drawn from the database"),
    validation: Optional[int] = typer.Option(None, help="validation split size, drawn from the database minus train (default: the query size)"),
    shard: Optional[str] = typer.Option(None, help="i/n: this worker writes every n-th shard starting at i"),
    device: Optional[str] = typer.Option(None, help="cuda or cpu (default: cuda when present)"),
    batch_size: int = typer.Option(64, help="images per forward pass"),
    workers: Optional[int] = typer.Option(None, help="DataLoader workers for image decoding (--engine local)"),
    engine: str = typer.Option("local", help="local (this process and its loader workers) or ray (Ray Data: decode "
                               "tasks and a pool of encoder actors, on a local Ray or the cluster at --ray-address)"),
    ray_address: Optional[str] = typer.Option(None, envvar="RAY_ADDRESS", help="--engine ray: the cluster's head, "
                                              "HOST:6379 (`ray start --head`), ray://HOST:10001 or auto; default: "
                                              "start a local Ray on this machine's cores"),
    concurrency: Optional[int] = typer.Option(None, help="--engine ray: encoder actors (default: one per GPU of the "
                                              "cluster, else one per CPU)"),
    option: list[str] = typer.Option([], "--option", "-o", help="encoder.key=value (e.g. clip.pretrained=/path/weights.pt, alexnet.channels=128) or dataset.key=value (e.g. dataset.text_kind=tags)"),
    overwrite: bool = typer.Option(False, help="replace cached items/splits/features written with another setup"),
) -> None:
    """Read a dataset once and write its items, splits and embeddings into the feature cache."""
    from pipeline.orchestration.extraction import ExtractRequest, extract as run

    req = ExtractRequest(dataset=dataset, data_dir=data_dir, encoders=tuple(encoders.split(",")), limit=limit,
                         name=name, seed=seed, protocol=protocol, n_query=n_query, n_train=n_train,
                         n_validation=validation, shard=shard, device=device, batch_size=batch_size, workers=workers,
                         engine=engine, ray_address=ray_address, concurrency=concurrency, options=_key_values(option, "-o"),
                         overwrite=overwrite)
    run(_cache(cache), req, echo=typer.echo)
    _leave_now()


class _Terminated(BaseException):
    """SIGTERM arrived (``kill``, a batch system's time limit): raised in the main thread like a Ctrl-C."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated()


@contextlib.contextmanager
def _resumable(what: str) -> Iterator[None]:
    """Ctrl-C or SIGTERM in a command that resumes (train, grid, table): ``Interrupted`` instead of click's
    "Aborted!" or a silent death, for ``main`` to print as one line with exit status 130 or 143 (the grid
    has stopped its workers by then, and every lock is released)."""
    main = threading.current_thread() is threading.main_thread()  # only it may set handlers
    before = signal.signal(signal.SIGTERM, _on_sigterm) if main else None
    rest = "what it finished is kept, and running the same command again resumes the rest from the last checkpoints"
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted (Ctrl-C): the {what} stopped; {rest}") from None
    except _Terminated:
        raise Interrupted(f"terminated (SIGTERM): the {what} stopped; {rest}", status=143) from None
    finally:
        if before is not None:
            signal.signal(signal.SIGTERM, before)


def _leave_now(status: int = 0) -> None:
    """End the process at once once its work is written, when it was started to run this CLI.

    The interpreter's teardown of torch's module graph alone takes seconds (2-4 s measured on this
    project's 2 busy cores, 0 s of it useful); by now the loader workers and any Ray session are shut
    down and every file was written atomically, so there is nothing left to clean. Called in-process
    (the tests' ``main()``), it returns."""
    if getattr(sys.modules.get("__main__"), "main", None) is not main:
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


@app.command()
def train(
    method: str = typer.Option(..., help="method id (see `cmh list methods`)"),
    dataset: str = typer.Option("mirflickr", help="cached dataset name (as written by `cmh extract`)"),
    bits: str = typer.Option("16,32,64,128", help="comma list of code lengths"),
    image: Optional[str] = typer.Option(None, help="image features: encoder[:column[+column]] (e.g. alexnet, alexnet:pool, clip); default: the method's (alexnet:pool; DSPRH alexnet)"),
    text: Optional[str] = typer.Option(None, help="text features: encoder[:column] (e.g. bow, clip); default: bow"),
    seed: int = typer.Option(1, help="training seed"),
    epochs: Optional[int] = typer.Option(None, help="override the method's epochs"),
    set_: list[str] = typer.Option([], "--set", help="override a config field: key=value (JSON values allowed)"),
    eval_mode: str = typer.Option("single", help="single (each modality encoded alone) or paired (reference UCMFH mode)"),
    tie: str = typer.Option("stable", help="Hamming tie rule: stable (database order) or reference (np.argsort default)"),
    device: Optional[str] = typer.Option(None, help="cuda or cpu (default: cuda when present)"),
    force: bool = typer.Option(False, help="retrain even when an identical run exists (and drop its checkpoint)"),
    checkpoint_every: Optional[int] = typer.Option(None, help="epochs between checkpoints (default: every 5 minutes "
                                                   "of training); a rerun after a kill resumes from the last one"),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """Train a hashing method on cached features, encode query/database, evaluate and write a run directory."""
    from pipeline.orchestration.training import TrainRequest, train_runs

    req = TrainRequest(dataset=dataset, method=method, bits=_ints(bits, "--bits"), image=image, text=text, seed=seed,
                       epochs=epochs, overrides=_key_values(set_), eval_mode=eval_mode, tie=tie, device=device,
                       force=force, checkpoint_every=checkpoint_every)
    import time

    start, runs = time.perf_counter(), _cache(cache)
    done = []
    def heard(r) -> None:  # each run's line as it finishes
        typer.echo(f"{r.describe()} -> {r.run_dir}")
        done.append(r)

    with _resumable("training"):
        train_runs(runs, req, on_result=heard)
    trained = sum(1 for r in done if not getattr(r, "skipped", False))
    typer.echo(f"train finished in {time.perf_counter() - start:.0f} s: {len(done)} run(s) of {method} "
               f"({trained} trained, {len(done) - trained} already there) under {runs.runs_dir()}")


@app.command()
def report(
    dataset: Optional[str] = typer.Option(None, help="only runs of this dataset"),
    metric: str = typer.Option("map@50", help="metric to tabulate (map@50, map, p@r2, ...)"),
    cache: Optional[Path] = CacheOpt,
    out_dir: Optional[Path] = typer.Option(None, help="where the table files go (default: cache/reports)"),
    published: bool = typer.Option(False, help="also print mAP@50 next to the papers' published numbers"),
    results: Optional[Path] = typer.Option(None, help="tabulate the published rows under this folder (e.g. results/) instead of the cache's runs"),
    readme: Optional[Path] = typer.Option(None, help="with --results: rewrite this README's generated block for the dataset"),
    figure: Optional[Path] = typer.Option(None, help="with --results: where the mAP-vs-bits PNG goes (default with --readme: docs/<dataset>_map_vs_bits.png beside the README; without either, none is drawn)"),
    html: bool = typer.Option(False, "--html", help="also write <out-dir>/<dataset>.html: table, figures, curves and a retrieval gallery per run"),
    # bounded: the page holds queries x top-k thumbnails per task and run (100 x 100 is already 20,000 per run)
    gallery_queries: int = typer.Option(4, min=1, max=100, help="--html: gallery queries per task (image->text and text->image), 1 to 100"),
    gallery_seed: int = typer.Option(0, help="--html: seed that draws the gallery queries from the query split"),
    top_k: int = typer.Option(10, min=1, max=100, help="--html: retrievals shown per gallery query, 1 to 100"),
) -> None:
    """Print the methods x bits table (validation score in brackets) of the cache's runs, or of results/."""
    from pipeline.orchestration.reporting import ReportRequest, ResultsReportRequest, report as run, report_results

    start = time.perf_counter()
    if results is not None:
        report_results(ResultsReportRequest(results, dataset, readme, figure), echo=typer.echo,
                       warn=lambda line: typer.echo(line, err=True))
    else:
        if readme is not None or figure is not None:
            raise click_errors.UsageError("--readme and --figure go with --results: add --results (e.g. --results "
                                   "results), or leave them out")
        run(_cache(cache), ReportRequest(dataset=dataset, metric=metric, out_dir=out_dir, published=published,
                                         html=html, gallery_queries=gallery_queries, gallery_seed=gallery_seed,
                                         top_k=top_k), echo=typer.echo)
    typer.echo(f"report finished in {time.perf_counter() - start:.1f} s", err=True)


@app.command()
def publish(
    dataset: str = typer.Option(..., help="cached dataset whose runs to publish"),
    run: list[str] = typer.Option([], "--run", help="run id to publish (repeat; default: every finished run of the dataset)"),
    results: Path = typer.Option(Path("results"), help="the results registry folder"),
    replace: bool = typer.Option(False, help="publish even when the split protocol, its sizes or the data differ from "
                                 "the results already there (replacing a run's published file)"),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """Copy finished runs' report rows (no codes, no models) into results/<dataset>/ to be committed."""
    from pipeline.orchestration.publishing import publish as publish_runs

    start = time.perf_counter()
    paths = publish_runs(_cache(cache), dataset, run, results, replace=replace)
    for path in paths:
        typer.echo(f"published {path}")
    typer.echo(f"publish finished in {time.perf_counter() - start:.1f} s: {len(paths)} result file(s) in "
               f"{results / dataset} (commit them)")


@app.command()
def query(
    run_id: str = typer.Option(..., "--run", help="run id (a folder under cache/runs) or a path to a run folder"),
    text: Optional[str] = typer.Option(None, help="query text (tags separated by commas, or a sentence)"),
    image: Optional[Path] = typer.Option(None, help="query image file"),
    top_k: int = typer.Option(10, help="how many database items to show"),
    html: Optional[Path] = typer.Option(None, "--html", help="also write the result as a self-contained HTML gallery to this file"),
    dataset: Optional[str] = typer.Option(None, help="search a dataset the run encoded (`cmh encode`) instead of the run's database"),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """Encode a new image or text with a trained run and print its Hamming top-k database items.

    Uses the index `cmh index` saved for those codes when there is one (and says so), exact search otherwise."""
    from pipeline.orchestration.query import QueryRequest, query as run

    result = run(_cache(cache), QueryRequest(run=run_id, text=text, image=image, top_k=top_k, dataset=dataset, html=html),
                 say=lambda line: typer.echo(line, err=True))
    for row in result.rows:
        typer.echo("\t".join(str(v) for v in row))
    if result.html is not None:
        typer.echo(f"html: {result.html}")


@app.command()
def serve(
    run: str = typer.Option(..., help="run id (a folder under cache/runs) or a path to a run folder"),
    dataset: Optional[str] = typer.Option(None, help="search a dataset the run encoded (`cmh encode`) instead of the run's database"),
    host: str = typer.Option("127.0.0.1", help="IP address to listen on; any but loopback (e.g. 0.0.0.0) lets other machines search, and prints a warning"),
    port: int = typer.Option(8000, help="TCP port (0: a free one, printed)"),
    max_upload_mb: float = typer.Option(20.0, help="largest request body (a picture upload) in MB; a larger one gets 413"),
    access_log: bool = typer.Option(False, "--access-log", help="log one line per request"),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """Serve a search page and JSON API over a trained run: text and picture queries, items, thumbnails.

    Loads the run's encoders, model, index (or exact search) and items once, refusing a stale run, encoding or
    index as `cmh query` does; stops cleanly on Ctrl-C or SIGTERM."""
    from pipeline.orchestration.serving import ServeRequest, serve as run_server

    run_server(_cache(cache), ServeRequest(run=run, dataset=dataset, host=host, port=port, max_upload_mb=max_upload_mb,
                                           access_log=access_log),
               say=lambda line: typer.echo(line, err=True))


@app.command()
def encode(
    run: str = typer.Option(..., help="run id (a folder under cache/runs) or a path to a run folder"),
    dataset: str = typer.Option(..., help="cached dataset to encode; it needs the run's feature columns, extracted with the run's encoder settings"),
    chunk_rows: int = typer.Option(1024, help="feature rows read, encoded and written at a time (memory is bounded by this)"),
    engine: str = typer.Option("local", help="local (this process) or ray (parts coded by Ray actors; the cache must "
                                             "be on storage every node reads and writes)"),
    ray_address: Optional[str] = typer.Option(None, envvar="RAY_ADDRESS", help="--engine ray: the cluster's head, "
                                              "host:port (default: start a local Ray)"),
    concurrency: Optional[int] = typer.Option(None, help="--engine ray: coding actors (default: one per GPU of the "
                                              "cluster, else one per CPU)"),
    device: Optional[str] = typer.Option(None, help="--engine ray: cuda or cpu for the actors (default: cuda when the "
                                         "cluster has GPUs)"),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """Code every item of another cached dataset with a trained run's model, into runs/<run>/encoded/<dataset>/."""
    from pipeline.orchestration.encoding import encode_dataset

    start = time.perf_counter()
    r = encode_dataset(_cache(cache), run, dataset, chunk_rows=chunk_rows, say=lambda line: typer.echo(line, err=True),
                       engine=engine, ray_address=ray_address, concurrency=concurrency, device=device)
    dropped = f", {r.dropped} missing from some encoder" if r.dropped else ""
    typer.echo(f"{r.dataset}: {r.items} items encoded with {r.run_id} ({r.parts_written} parts written, "
               f"{r.parts_reused} reused{dropped}) in {time.perf_counter() - start:.1f} s -> {r.out_dir}")


@app.command()
def index(
    run: str = typer.Option(..., help="run id (a folder under cache/runs) or a path to a run folder"),
    dataset: Optional[str] = typer.Option(None, help="index a dataset the run encoded (`cmh encode`) instead of its database"),
    kind: str = typer.Option("flat", help="flat (exact), ivf, hash or multihash (faiss binary indexes)"),
    nlist: Optional[int] = typer.Option(None, help="ivf: lists (default round(sqrt(N)))"),
    nprobe: Optional[int] = typer.Option(None, help="ivf: lists scanned per query (default nlist/16)"),
    hash_bits: Optional[int] = typer.Option(None, help="hash/multihash: bits per hash key (default round(log2 N) - 4; multihash at most bits/nhash)"),
    nflip: Optional[int] = typer.Option(None, help="hash/multihash: key bits flipped when probing (default 4 for hash, 3 for multihash)"),
    nhash: Optional[int] = typer.Option(None, help="multihash: hash tables (default 2)"),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """Build a faiss binary index of a run's codes, saved with the run, for `cmh query` (evaluation stays exact)."""
    from pipeline.orchestration.indexing import build_indexes

    overrides = {"nlist": nlist, "nprobe": nprobe, "hash_bits": hash_bits, "nflip": nflip, "nhash": nhash}
    for info in build_indexes(_cache(cache), run, dataset=dataset, kind=kind,
                              overrides={k: v for k, v in overrides.items() if v is not None},
                              say=lambda line: typer.echo(line, err=True)):
        m = info.meta
        params = ", ".join(f"{k}={v}" for k, v in m["params"].items()) or "no parameters"
        typer.echo(f"{m['kind']} index of {m['n']} {info.modality} codes ({m['bits']} bits; {params}; "
                   f"{m['index_bytes'] / 2**20:.1f} MiB; built in {m['build_s']:.2f}s) -> {info.path}")


@app.command()
def grid(
    methods: str = typer.Option("baseline,cca-itq,djsrh,dsah,ccah,ucmfh,cfrh,dsprh,fjsph", help="comma list of methods"),
    dataset: str = typer.Option("mirflickr", help="cached dataset name"),
    bits: str = typer.Option("16,32,64,128", help="comma list of code lengths"),
    seeds: str = typer.Option("1", help="comma list of seeds"),
    image: Optional[str] = typer.Option(None, help="image features (default: each method's own)"),
    text: Optional[str] = typer.Option(None, help="text features (default: each method's own)"),
    epochs: Optional[str] = typer.Option(None, help="override epochs: N for every method, or method=N,... per method"),
    workers: Optional[int] = typer.Option(None, help="cells trained in parallel processes (default: 6 with a GPU, 1 on the CPU)"),
    device: Optional[str] = typer.Option(None, help="cuda or cpu (default: cuda when present)"),
    out_dir: Optional[Path] = typer.Option(None, help="where the table files go (default: cache/reports)"),
    checkpoint_every: Optional[int] = typer.Option(None, help="epochs between checkpoints (default: every 5 minutes)"),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """Train methods x code lengths x seeds on one dataset and write the combined table (Parquet, Markdown, PNG)."""
    from pipeline.orchestration.grid import GridRequest, busy_error, run_grid

    method_names = [x.strip() for x in methods.split(",") if x.strip()]
    req = GridRequest(dataset=dataset, methods=method_names, bits=_ints(bits, "--bits"), seeds=_ints(seeds, "--seeds"),
                      image=image,
                      text=text, epochs=_epochs_per_method(epochs), workers=workers, device=device,
                      out_dir=out_dir, checkpoint_every=checkpoint_every)
    start = time.perf_counter()
    with _resumable("grid"):
        result = run_grid(_cache(cache), req, echo=typer.echo)
    for table in result.tables.values():
        typer.echo(table.markdown)
        typer.echo("written: " + ", ".join(str(p) for p in table.paths.values()))
    typer.echo(result.comparison)
    typer.echo(f"mAP@50 against code length: {result.figure}")
    typer.echo(f"grid finished in {time.perf_counter() - start:.1f} s")
    busy = busy_error(result.outcomes)
    if busy is not None:  # after the table of every other cell: nothing of theirs is lost
        raise busy


@app.command()
def table(
    dataset: str = typer.Option("mirflickr", help="cached dataset name"),
    methods: str = typer.Option("baseline,cca-itq,djsrh,dsah,ccah,ucmfh,cfrh,dsprh,fjsph", help="comma list of methods"),
    bits: str = typer.Option("16,32,64,128", help="comma list of code lengths"),
    seeds: str = typer.Option("1,2,3", help="comma list of seeds (every cell's first seed is trained before any other)"),
    results: Path = typer.Option(Path("results"), help="the results registry folder"),
    readme: Optional[Path] = typer.Option(None, help="regenerate this README's results block and figure at the end"),
    budget: Optional[str] = typer.Option(None, help="hours: no cell starts after that, running cells pause at a "
                                         "checkpoint (BUDGET=)"),
    workers: Optional[int] = typer.Option(None, help="cells trained in parallel processes (default: 6 with a GPU, "
                                          "1 on the CPU)"),
    device: Optional[str] = typer.Option(None, help="cuda or cpu (default: cuda when present)"),
    epochs: Optional[str] = typer.Option(None, help="override epochs (a dry run): N, or method=N,..."),
    checkpoint_every: Optional[int] = typer.Option(None, help="epochs between checkpoints (default: every 5 minutes)"),
    pack: Optional[Path] = typer.Option(None, help="also pack the result files published now into this .tar.gz"),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """Train only the cells results/ lacks (methods x bits x seeds), publishing each into results/ as it finishes."""
    from pipeline.orchestration.grid import busy_error
    from pipeline.orchestration.table import TableRequest, build_table

    method_names = [x.strip() for x in methods.split(",") if x.strip()]
    start = time.perf_counter()
    with _resumable("table"):
        result = build_table(_cache(cache), TableRequest(
            dataset=dataset, methods=method_names, bits=_ints(bits, "--bits"), seeds=_ints(seeds, "--seeds"),
            results=results,
            readme=readme, budget=budget, workers=workers, device=device,
            epochs=_epochs_per_method(epochs), checkpoint_every=checkpoint_every, pack=pack),
            echo=typer.echo)
    typer.echo(f"table finished in {time.perf_counter() - start:.1f} s")
    busy = busy_error(result.outcomes)
    if busy is not None:  # every other cell is published (and the README regenerated) by now
        raise busy


def _epochs_per_method(text: Optional[str]) -> dict[str, int]:
    """``N`` (every method) or ``method=N,...``; BadParameter for an empty value, a non-integer or a method given
    twice. Whether each method is in the grid is checked once its names are resolved (``grid.resolve_methods``:
    DJSRH or an alias is djsrh)."""
    if text is None:
        return {}
    if not text.strip():  # `--epochs "$E"` with E unset would train the papers' schedules: hours, not a dry run
        raise typer.BadParameter("the value is empty: give N, or method=N,... (e.g. djsrh=15,dsah=20), or leave --epochs out "
                                 "for the papers' epochs", param_hint="--epochs")

    def number(value: str, where: str) -> int:
        try:
            return int(value)
        except ValueError:
            raise typer.BadParameter(f"epochs {where}{value.strip()!r} is not a whole number; use N or "
                                     f"method=N,... (e.g. djsrh=15,dsah=20)", param_hint="--epochs") from None

    if "=" not in text:
        return {"*": number(text, "")}
    out = {}
    for pair in [p for p in text.split(",") if p.strip()]:  # a blank between commas is no pair, as in --bits
        name, _, value = pair.partition("=")
        name = name.strip()
        if name in out:  # the last one would win without a word
            raise typer.BadParameter(f"epochs for {name} are given twice ({out[name]} and {value.strip()}); "
                                     f"give each method once", param_hint="--epochs")
        out[name] = number(value, f"for {name} ")
    return out


@app.command()
def demo(
    methods: str = typer.Option("baseline,cca-itq,djsrh", help="comma list of methods to train (the default, "
                                "plus e.g. dsah,ucmfh on short schedules)"),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """The whole job on a generated demo set: extract, train at 16 and 32 bits, the table and its figure."""
    from pipeline.orchestration.demo import run_demo

    run_demo(_cache(cache), [m.strip() for m in methods.split(",") if m.strip()], echo=typer.echo)


@app.command("list")
def list_(what: str = typer.Argument(..., help="methods, encoders or datasets"),
          pattern: str = typer.Option("*", help="glob filter")) -> None:
    """List registered methods, encoders or dataset sources."""
    from pipeline.orchestration.listing import list_entries

    for line in list_entries(what, pattern):
        typer.echo(line)


@app.command("ls")
def ls(
    patterns: list[str] = typer.Argument(None, help="dataset names or run ids, globs allowed (quote them): 'demo-*'"),
    kind: Optional[str] = typer.Option(None, help="datasets, runs or encodings (default: all three)"),
    dataset: Optional[str] = typer.Option(None, help="only this dataset and the runs trained on it"),
    method: Optional[str] = typer.Option(None, help="only runs of this method"),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """List what the cache holds: datasets (items, splits, encoders, size), runs (method, bits, seed, epochs or
    budget, mAP@50, size, complete, trained, partial or damaged) and the runs' encodings and indexes."""
    from pipeline.orchestration.inventory import LsRequest, list_cache

    for line in list_cache(_cache(cache), LsRequest(patterns=patterns or (), kind=kind, dataset=dataset,
                                                     method=method)):
        typer.echo(line)


@app.command("rm")
def rm(
    patterns: list[str] = typer.Argument(None, help="run ids or dataset names, globs allowed (quote them): 'demo-ucmfh-*'"),
    kind: str = typer.Option("runs", help="runs, datasets (items, splits, features), thumbnails (report pictures) "
                             "or checkpoints"),
    dataset: Optional[str] = typer.Option(None, help="only this dataset (and the runs trained on it)"),
    method: Optional[str] = typer.Option(None, help="only runs of this method"),
    yes: bool = typer.Option(False, "--yes", help="remove; without it, only print what would be removed"),
    all_: bool = typer.Option(False, "--all", help="every entry of the kind (within --dataset/--method)"),
    force: bool = typer.Option(False, "--force", help="also what others depend on: a dataset runs were trained on, "
                               "a run with encodings or indexes"),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """Remove runs, datasets, report thumbnails or checkpoints by pattern: a dry run unless --yes.

    A run another process is training is refused (naming its pid); what others depend on needs --force."""
    from pipeline.orchestration.removal import RmRequest, remove

    remove(_cache(cache), RmRequest(patterns=patterns or (), kind=kind, dataset=dataset, method=method, yes=yes,
                                    all=all_, force=force), echo=typer.echo)



def _open_files_limit() -> int | None:
    """The soft limit on open files of this process (``ulimit -n``), None where it cannot be read."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return None if soft == resource.RLIM_INFINITY else int(soft)
    except (ImportError, OSError, ValueError):
        return None


def _empty_path_option(argv: list[str]) -> str | None:
    """The first path option given an empty value (``--cache ""``, ``--results=``), or None.

    Click turns an empty path into ``Path("")``, which is the current folder: ``extract --cache ""``
    wrote a cache there and ``publish --results ""`` would publish into it, without a word."""
    group = typer.main.get_command(app)
    name = next((a for a in argv if a in getattr(group, "commands", {})), None)
    if name is None:
        return None
    paths = {o for p in group.commands[name].params
             if getattr(getattr(p, "type_descriptor", None), "annotation", None) is Path for o in p.opts}
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if flag in paths and ((eq and not value.strip()) or (not eq and i + 1 < len(argv) and not argv[i + 1].strip())):
            return flag
    return None


#: Characters that would break an ``error:`` line or act on the terminal: C0 and C1 controls (newline, carriage
#: return, escape), DEL, and Unicode's line and paragraph separators.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _one_line(text: str) -> str:
    """``text`` with its control characters written as Python escapes (``\\n``, ``\\x1b``), the rest as it is: a
    path or a name holding a newline (``--cache $'a\\nb'``) would otherwise split an error in two lines."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def _say_error(message: str) -> None:
    """The one ``error:`` line every refusal ends in, whatever its message holds."""
    typer.echo(f"error: {_one_line(message)}", err=True)


def _usage_error(exc: click_errors.UsageError) -> str:
    """A usage error (an option that is unknown, missing, or not of its type) as the message of one ``error:``
    line naming the fix, instead of click's usage box."""
    names = []
    ctx = exc.ctx
    while ctx is not None and ctx.parent is not None:  # the root's name is how Python was started: say `cmh`
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    command = " ".join(["cmh", *reversed(names)])
    fix = ""
    if isinstance(exc, click_errors.BadParameter) and exc.param is not None:  # a value of the wrong type
        # typer 0.2x keeps the option's Python type; click's own options, a ParamType with a name
        typed = getattr(getattr(exc.param, "type_descriptor", None), "annotation", None)
        named = getattr(getattr(exc.param, "type", None), "name", None)
        fix = ("give a whole number" if typed is int or named == "integer" else
               "give a number" if typed is float or named == "float" else "")
    message = exc.format_message().rstrip(".")
    return f"{message}; {fix} (see `{command} --help`)" if fix else f"{message}; see `{command} --help`"


def _command(argv: list[str]) -> str:
    return next((arg for arg in argv if not arg.startswith("-")), "")


def _interrupted(argv: list[str], how: str = "interrupted (Ctrl-C)") -> str:
    """The line for Ctrl-C or SIGTERM in a command without checkpoints (report, publish, extract, index, ...):
    every file is written to a temporary name and renamed whole, so what the command had finished is kept and
    nothing is half-written."""
    return (f"{how}: `cmh {_command(argv)}` stopped before it finished; each file it writes appears whole "
            f"or not at all, so nothing is half-written: run the same command again")


def _refuse_undecodable(argv: list[str]) -> None:
    """ConfigError for an argument whose bytes are not UTF-8 (a file name from another system's encoding):
    Parquet, JSON and HTML take UTF-8 paths and text, so such a path would fail half-way, or pass for a damaged
    file and be advised to be rebuilt."""
    for arg in argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise ConfigError(f"{shown} holds bytes that are not UTF-8: rename the file or folder to a UTF-8 name "
                              f"(e.g. `convmv -f latin1 -t utf8`), or give another one") from None


def main() -> None:
    main_thread = threading.current_thread() is threading.main_thread()  # only it may set handlers
    before = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        _main(main_thread)
    finally:
        if before is not None:  # main() called in-process (tests, a wrapper) leaves the handler as it found it
            signal.signal(signal.SIGTERM, before)


def _main(main_thread: bool) -> None:
    try:
        _refuse_undecodable(sys.argv[1:])
        empty = _empty_path_option(sys.argv[1:])
        if empty is not None:
            raise ConfigError(f"{empty} is empty: give a path (an empty one would mean the current folder), or leave "
                              f"the option out for its default")
        if _command(sys.argv[1:]) != "serve" and main_thread:
            signal.signal(signal.SIGTERM, _on_sigterm)  # said in one line (the server stops on it by itself)
        # not standalone: click's errors come here, to be said in one line like every other refusal
        status = app(standalone_mode=False)
        if isinstance(status, int) and status:  # --help gives 0; Ctrl-C outside a command that resumes, 130
            if status == 130:  # typer's Exit(130) for a KeyboardInterrupt: said, not left silent
                _say_error(_interrupted(sys.argv[1:]))
            sys.exit(status)
    except getattr(click_errors, "NoArgsIsHelpError", ()) as exc:  # `cmh` alone: the help is printed already
        sys.exit(exc.exit_code)
    except click_errors.UsageError as exc:
        _say_error(_usage_error(exc))
        sys.exit(exc.exit_code)
    except click_errors.ClickException as exc:
        _say_error(exc.format_message())
        sys.exit(exc.exit_code)
    except typer.Abort:  # end of input at a prompt
        typer.echo("Aborted!", err=True)
        sys.exit(1)
    except CMHError as exc:
        logging.getLogger("cmh").debug("error", exc_info=True)
        _say_error(str(exc))
        sys.exit(2)
    except _Terminated:  # SIGTERM in a command that does not resume: its temporary files removed on the way out
        _say_error(_interrupted(sys.argv[1:], "terminated (SIGTERM)"))
        _leave_now(143)
        sys.exit(143)
    except Interrupted as exc:
        _say_error(str(exc))
        # 128 + the signal, as a shell reports it; left at once, since the interpreter's own exit after a
        # KeyboardInterrupt sometimes ended the process by SIGINT instead (status -2, seen in tests)
        _leave_now(exc.status)
        sys.exit(exc.status)
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):  # a low `ulimit -n`: DataLoader workers, pipes, shards
            logging.getLogger("cmh").debug("error", exc_info=True)
            limit = _open_files_limit()
            typer.echo(f"error: too many open files{f' (this shell allows {limit}: `ulimit -n`)' if limit else ''}: "
                       f"raise the limit, e.g. `ulimit -n 4096`, and run the command again; it resumes where it "
                       f"stopped", err=True)
            _leave_now(2)  # before the teardown: a loader left half-started says it again as an ignored exception
            sys.exit(2)
        message = storage_error_message(exc)
        if message is None:
            raise
        logging.getLogger("cmh").debug("error", exc_info=True)
        _say_error(message)
        sys.exit(2)
    except KeyError as exc:  # registry lookups: the message already lists the alternatives
        if exc.args and isinstance(exc.args[0], str) and "registered:" in exc.args[0]:
            _say_error(exc.args[0])
            sys.exit(2)
        raise
