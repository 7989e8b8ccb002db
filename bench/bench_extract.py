"""Extraction throughput: the bare model versus the whole pipeline, on the same items and batches.

    python bench/bench_extract.py [--quick] [--images N] [--data-dir DIR] [--encoder alexnet]
                                  [--device cpu|cuda] [--batch-size 64] [--workers W] [--threads T]
                                  [--option KEY=VALUE ...]

(a) bare model: the images are decoded and transformed once, up front, and the batches already sit on
    the device; only ``encoder.encode`` is timed (what the model alone can do).
(b) pipeline: ``run_extraction`` into a temporary cache, with DataLoader workers decoding JPEGs,
    shard writes and all (what a user gets).
(c) Ray engine: ``run_extraction_ray`` on a local Ray with the same cores, the same items, batches and
    shards (``--engine ray``: decode tasks + encoder actors), into another temporary cache; skipped
    with ``--no-ray``.

``--end-to-end [--limit N] [--encoders alexnet,bow]``: instead, time the whole ``cmh extract`` command
(``python -m pipeline extract``, a fresh process and a fresh cache) against a model-only pass over the
same first N MIRFlickr images with the same batch size and torch threads, in this one run. Prints the
ratio (model-only time / command wall time; the goal is >= 0.9) and where the command's time went:
start-up (process start to the first batch: imports, item table, fingerprint, weights, loader), waiting
for decoded images, encoding, writing, the rest (gathering train/validation, the text encoders) and
the exit, read from the command's own summary lines.

Prints items/s for each, the ratio (b)/(a) (the goal is >= 0.85: decoding must not be the
bottleneck), the ratio (c)/(b) over the whole loop and after the first batch (actor start-up and
model loading excluded; the goal is >= 0.8), peak memory, and the cache size per row with the MIRFlickr-20,015 estimate. Uses the
first N real MIRFlickr pairs from the shared data folder when present, else synthetic 128-px JPEGs.
Prints numbers, no pass/fail.
"""
from __future__ import annotations

import argparse
import logging
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from pipeline.ground.item_table import ItemTable
from pipeline.ground.images import load_image
from pipeline.ground.settings import data_root
from pipeline.ground.store.cache import Cache
from stages.extract import create_encoder
from stages.extract.runner import available_cores, resolve_device, run_extraction

MIRFLICKR_ROWS = 20_015


def real_items(folder: Path, n: int) -> ItemTable | None:
    if not (folder / "pairs.tsv").is_file():
        return None
    from stages.prepare.datasets import get_dataset

    items = get_dataset("mirflickr").builder(folder)
    if n <= len(items):
        return items.subset(np.arange(n))
    rows = np.arange(n) % len(items)  # fewer pairs than asked: repeat them under new ids (timing only)
    tiled = items.subset(rows)
    tiled.item_id = np.arange(n, dtype=np.int64)
    return tiled


def synthetic_items(folder: Path, n: int) -> ItemTable:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        # smooth random images (compress like photos, unlike white noise)
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        path = folder / f"im{i}.jpg"
        Image.fromarray(small).resize((128, 128), Image.BILINEAR).save(path, quality=90)
        paths.append(str(path))
    return ItemTable(dataset="synthetic", item_id=np.arange(n, dtype=np.int64), image=paths,
                     texts=[["sky", "sea"]] * n, labels=rng.integers(0, 2, (n, 4)).astype(np.uint8),
                     label_names=list("abcd"), text_kind="tags", source=str(folder))


def bare_throughput(encoder, items: ItemTable, batch_size: int, device: torch.device,
                    decode_seconds: list[float] | None = None) -> float:
    """items/s of encoder.encode over pre-decoded batches already on the device. The decoding is not part
    of that time; its wall time in this one process (decode, transform, stack) is appended to
    ``decode_seconds`` when given."""
    transform = encoder.image_transform()
    start = time.perf_counter()
    images = torch.stack([transform(load_image(ref)) for ref in items.image])  # (n, 3, H, W), not timed
    if decode_seconds is not None:
        decode_seconds.append(time.perf_counter() - start)
    batches = [images[s:s + batch_size].to(device) for s in range(0, len(images), batch_size)]
    amp = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    encoder.to(device)
    with torch.inference_mode(), amp:
        encoder.encode(batches[0], None, items.item_id[:batch_size])  # warm-up (cuDNN autotune, allocator)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for b, x in enumerate(batches):
            encoder.encode(x, None, items.item_id[b * batch_size:(b + 1) * batch_size])  # returns numpy: synchronises
        seconds = time.perf_counter() - start
    return len(items) / seconds


def cache_bytes_per_row(layout: Cache, dataset: str, encoder: str) -> float:
    size = rows = 0
    for split in ("query", "database"):
        for f in layout.split_dir(dataset, encoder, split).glob("part-*.parquet"):
            size += f.stat().st_size
            rows += pq.ParquetFile(f).metadata.num_rows
    return size / max(rows, 1)


def _pipeline_threads(summary, args) -> int:
    """The torch thread count run_extraction chose (it restores the previous one on return)."""
    from stages.extract.runner import default_threads, default_workers

    if args.threads:
        return args.threads
    device = torch.device(summary.device)
    cores = available_cores()
    workers = default_workers(device, cores) if args.workers is None else args.workers
    return default_threads(device, cores, workers, torch.get_num_threads())


def ray_throughput(items: ItemTable, splits: dict, cache: Path, args: argparse.Namespace,
                   options: dict) -> tuple[object, float]:
    """(c): the Ray engine's summary on a local Ray with this machine's cores, and the session's start time."""
    from stages.extract.ray_engine import ray_session, run_extraction_ray

    start = time.perf_counter()
    with ray_session(num_cpus=available_cores()):
        started = time.perf_counter() - start
        summary = run_extraction_ray(Cache(cache), items, splits, create_encoder(args.encoder, **options),
                                     device=args.device, batch_size=args.batch_size, concurrency=args.concurrency,
                                     shard_size=args.shard_size, progress=False)
    return summary, started


def steady_items_per_s(summary, batch_size: int) -> float:
    """items/s after the first batch came back: start-up (workers, actors, model loading) left out."""
    items = summary.items_per_s * summary.loop_s
    rest = summary.loop_s - summary.first_batch_s
    return (items - batch_size) / rest if rest > 0 else 0.0


def parse_options(pairs: list[str]) -> dict[str, object]:
    """``key=value`` strings -> settings; true/false/ints/floats parsed, anything else kept as text."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--option expects KEY=VALUE, got {pair!r}")
        lowered = value.lower()
        if lowered in ("true", "false"):
            out[key] = lowered == "true"
        else:
            try:
                out[key] = int(value)
            except ValueError:
                try:
                    out[key] = float(value)
                except ValueError:
                    out[key] = value
    return out


#: The image encoder's summary (``ExtractSummary.describe``) and the command's line (``command_timings``).
_ENCODER_LINE = re.compile(r"^(?P<encoder>\S+) on \S+ \(local\): .*?start-up (?P<startup>[\d.]+) s, encoding "
                           r"(?P<encoding>[\d.]+) s \(of which (?P<wait>[\d.]+) s waiting for decoded images"
                           r"(?: in (?P<waited>\d+) of (?P<batches>\d+) batches)?\), writing (?P<write>[\d.]+) s, "
                           r"finish (?P<finish>[\d.]+) s\)", re.M)
_COMMAND_LINE = re.compile(r"^extract finished in (?P<total>[\d.]+) s since the process started: .*?; start-up "
                           r"(?P<startup>[\d.]+) s to the first batch", re.M)


def end_to_end(args: argparse.Namespace) -> None:
    """Time ``cmh extract`` in a subprocess against the model alone on the same images (see the docstring)."""
    import os
    import subprocess

    from stages.extract.runner import default_threads, default_workers

    encoders = [e.strip() for e in args.encoders.split(",") if e.strip()]
    image_encoder = encoders[0]
    device = resolve_device(args.device)
    cores = available_cores()
    workers = default_workers(device, cores) if args.workers is None else args.workers
    threads = args.threads or default_threads(device, cores, workers, torch.get_num_threads())
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="bench_extract_e2e_") as tmp:
        cmd = [sys.executable, "-m", "pipeline", "extract", "--dataset", "mirflickr", "--data-dir", str(args.data_dir),
               "--limit", str(args.limit), "--encoders", ",".join(encoders), "--cache", str(Path(tmp) / "cache"),
               "--batch-size", str(args.batch_size), "--workers", str(workers)]
        cmd += ["--device", args.device] if args.device else []
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])),
               "OMP_NUM_THREADS": str(threads)}  # the command's torch threads: the same as the model-only pass
        print(f"command: {' '.join(cmd[1:])}  (OMP_NUM_THREADS={threads})", flush=True)
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"cmh extract failed ({done.returncode}):\n{done.stderr[-3000:]}")
    enc = next((m for m in _ENCODER_LINE.finditer(done.stdout)
                if m["encoder"].rsplit("/", 1)[-1].startswith(image_encoder)), None)
    command = _COMMAND_LINE.search(done.stdout)
    if enc is None or command is None:
        raise SystemExit(f"cannot find the summary lines in the command's output:\n{done.stdout[-3000:]}")

    items = real_items(args.data_dir, args.limit)
    if items is None:
        raise SystemExit(f"--end-to-end needs the MIRFlickr files at {args.data_dir} (--data-dir)")
    torch.set_num_threads(threads)
    decode: list[float] = []
    model_rate = bare_throughput(create_encoder(image_encoder), items, args.batch_size, device, decode)
    model_s = len(items) / model_rate

    total, startup = float(command["total"]), float(command["startup"])
    wait, write = float(enc["wait"]), float(enc["write"])
    encode = float(enc["encoding"]) - wait
    rest = max(0.0, total - startup - float(enc["encoding"]) - write)
    waited = f" ({enc['waited']} of {enc['batches']} batches waited)" if enc["batches"] else ""
    print(f"images: the first {len(items)} MIRFlickr pairs; batch {args.batch_size}; torch threads {threads}; "
          f"{workers} loader workers; device {device}")
    print(f"model only ({image_encoder}, pre-decoded batches): {model_s:8.1f} s ({model_rate:.1f} items/s)")
    print(f"cmh extract --encoders {','.join(encoders)}:        {wall:8.1f} s wall")
    print(f"ratio model-only / end-to-end: {model_s / wall:.3f}   (goal >= 0.9)")
    print(f"breakdown: start-up {startup:.1f} s (process start to the first batch), decode wait {wait:.1f} s{waited}, "
          f"encode {encode:.1f} s, write {write:.1f} s, rest {rest:.1f} s (gathering train/validation, "
          f"{', '.join(encoders[1:]) or 'no other encoder'}), exit {max(0.0, wall - total):.1f} s "
          f"(last line to process end)")
    if device.type == "cpu":
        # on CPU the decoding workers run on the model's own cores: perfectly shared, they would add their CPU
        # time divided by the cores to the model's; OpenMP threads that a worker preempts wait for each other
        shared = model_s + decode[0] / cores
        print(f"decoding + resizing in one process: {1000 * decode[0] / len(items):.2f} ms per image, {decode[0]:.1f} "
              f"CPU-s here; encode phase against the model alone: {model_s / encode:.3f} (with the decoding shared "
              f"perfectly between {cores} cores: {model_s / shared:.3f}; with that and the start-up and rest: "
              f"{model_s / (shared + startup + rest):.3f})")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="128 images, for a smoke run")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--data-dir", type=Path, default=data_root() / "mirflickr25k_real20015")
    ap.add_argument("--encoder", default="alexnet")
    ap.add_argument("--device", default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads for the pipeline (default: run_extraction's choice); (a) uses every core")
    ap.add_argument("--shard-size", type=int, default=1024)
    ap.add_argument("--no-ray", action="store_true", help="skip (c), the Ray engine")
    ap.add_argument("--concurrency", type=int, default=None, help="(c): encoder actors (default: one per core)")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="encoder setting, e.g. --option channels_last=false (repeatable)")
    ap.add_argument("--end-to-end", action="store_true",
                    help="time the whole `cmh extract` command against the model alone (see the docstring)")
    ap.add_argument("--limit", type=int, default=2000, help="--end-to-end: the first N MIRFlickr pairs")
    ap.add_argument("--encoders", default="alexnet,bow", help="--end-to-end: the command's encoders (image first)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.end_to_end:
        end_to_end(args)
        return
    n = 128 if args.quick else args.images
    device = resolve_device(args.device)

    with tempfile.TemporaryDirectory(prefix="bench_extract_") as tmp:
        items = real_items(args.data_dir, n)
        source = f"first {len(items)} MIRFlickr pairs from {args.data_dir} (repeated when fewer)" if items else ""
        if items is None:
            items = synthetic_items(Path(tmp) / "images", n)
            source = f"{n} synthetic 128-px JPEGs (no data at {args.data_dir})"
        print(f"data: {source}")
        print(f"device: {device}; batch {args.batch_size}")
        options = parse_options(args.option)

        # (b) first, so the peak RSS read after it is the pipeline's own
        ids = items.item_id
        cut = max(1, len(ids) // 10)
        splits = {"query": ids[:cut], "database": ids[cut:]}
        layout = Cache(Path(tmp) / "cache")
        summary = run_extraction(layout, items, splits, create_encoder(args.encoder, **options), device=args.device,
                                 batch_size=args.batch_size, workers=args.workers, shard_size=args.shard_size,
                                 progress=False, threads=args.threads)
        pipeline_threads = _pipeline_threads(summary, args)
        self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
        child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        per_row = cache_bytes_per_row(layout, items.dataset, summary.encoder)
        bow = run_extraction(layout, items, splits, create_encoder("bow"), progress=False)
        bow_per_row = cache_bytes_per_row(layout, items.dataset, bow.encoder)

        ray_summary = ray_start = None
        if not args.no_ray:
            ray_summary, ray_start = ray_throughput(items, splits, Path(tmp) / "ray_cache", args, options)

        # (a) the model alone, with every core
        torch.set_num_threads(available_cores())
        bare_threads = torch.get_num_threads()
        torch.cuda.reset_peak_memory_stats() if device.type == "cuda" else None
        bare = bare_throughput(create_encoder(args.encoder, **options), items, args.batch_size, device)

    print(f"(a) bare model   {summary.encoder}: {bare:8.1f} items/s   (torch threads {bare_threads})")
    print(f"(b) pipeline     {summary.encoder}: {summary.items_per_s:8.1f} items/s   (torch threads "
          f"{pipeline_threads}, {summary.seconds:.1f} s total incl. setup, {summary.failed} failed)")
    print(f"    loop time: waiting for decoded batches {summary.wait_s:.2f} s, encoding {summary.encode_s:.2f} s, "
          f"waiting for shard writes {summary.write_s:.2f} s ({summary.shards_written} shards)")
    print(f"ratio (b)/(a): {summary.items_per_s / bare:.3f}   (goal >= 0.85)")
    if ray_summary is not None:
        local_steady, ray_steady = steady_items_per_s(summary, args.batch_size), steady_items_per_s(ray_summary,
                                                                                                      args.batch_size)
        print(f"(c) Ray engine   {ray_summary.encoder}: {ray_summary.items_per_s:8.1f} items/s   (local Ray on "
              f"{available_cores()} cores, started in {ray_start:.1f} s; first batch after "
              f"{ray_summary.first_batch_s:.1f} s vs {summary.first_batch_s:.1f} s locally; "
              f"{ray_summary.failed} failed)")
        print(f"ratio (c)/(b): {ray_summary.items_per_s / summary.items_per_s:.3f} over the whole loop, "
              f"{ray_steady / local_steady:.3f} after the first batch ({ray_steady:.1f} vs {local_steady:.1f} "
              f"items/s)   (goal >= 0.8)")
    print(f"peak RSS during the pipeline: main {self_rss:.0f} MiB, largest loader worker {child_rss:.0f} MiB")
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()}, bare-model peak allocated "
              f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    cols = ", ".join(f"{k} {v}" for k, v in summary.columns.items())
    print(f"cache {summary.encoder} ({cols}): {per_row:.0f} B/row zstd Parquet -> "
          f"{per_row * MIRFLICKR_ROWS / 2**20:.0f} MiB for MIRFlickr's {MIRFLICKR_ROWS} query+database rows "
          f"(+ {per_row * 5000 / 2**20:.0f} MiB for a 5,000-item gathered train split)")
    print(f"cache bow ({bow.columns['bow']}-d): {bow_per_row:.0f} B/row -> "
          f"{bow_per_row * MIRFLICKR_ROWS / 2**20:.1f} MiB for {MIRFLICKR_ROWS} rows")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
