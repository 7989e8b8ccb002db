"""A slim copy of a cached dataset: its item table and splits as they are, and only the feature columns named.

The GPU pass carries its feature cache to a machine that receives at most 64 MiB; the MIRFlickr AlexNet
features hold three columns (``sp_cov``, ``cov``, ``pool``: 222 MB), of which every method but DSPRH reads
``pool`` alone. This copies ``datasets/dataset=<d>/`` byte for byte and rewrites each feature shard with
``item_id`` and the kept columns only, values untouched (the store's own writer, same metadata). Each
manifest keeps every fingerprint (config hash, code version, dataset and splits fingerprints), so the runs
trained on the copy record the same lineage as on the full cache and publish beside its rows; its
``columns`` list only what was kept, so a method that needs a dropped column is refused by name, and
``slim`` records what was left out. The copy is then checked column by column against the source.

    python bench/slim_cache.py --source cache --dest .carry/cache --dataset mirflickr \
        --keep alexnet.imagenet:pool --keep bow
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from pipeline.ground.errors import CMHError, ConfigError, storage_error_message  # noqa: E402
from pipeline.ground.paths import require_folder  # noqa: E402
from pipeline.ground.store.parquet import META_KEY, write_json_atomic, write_table_atomic  # noqa: E402


def parse_keep(specs: list[str]) -> dict[str, list[str] | None]:
    """``encoder[:col+col]`` -> {encoder: columns, or None for every column}."""
    out: dict[str, list[str] | None] = {}
    for spec in specs:
        encoder, _, cols = spec.partition(":")
        if not encoder or encoder in out:
            raise ConfigError(f"--keep {spec!r}: give each encoder once, as ENCODER or ENCODER:COL+COL")
        columns = cols.split("+") if cols else None
        if columns is not None and (not all(columns) or len(set(columns)) < len(columns)):
            # an empty name was looked up as a column called '', a repeated one failed inside Arrow
            raise ConfigError(f"--keep {spec!r}: name each column once, as ENCODER:COL+COL")
        out[encoder] = columns
    return out


def slim_copy(source: Path, dest: Path, dataset: str, keep: dict[str, list[str] | None]) -> dict[str, int]:
    """Write the slim copy of ``dataset`` from cache root ``source`` into cache root ``dest``; bytes per part."""
    src_data = source / "datasets" / f"dataset={dataset}"
    if not (src_data / "items.parquet").is_file():
        raise ConfigError(f"{src_data} holds no item table: give the cache root that holds dataset {dataset!r} "
                          f"(--source), e.g. the one `make extract DATASET={dataset}` wrote")
    if dest.resolve() == source.resolve():
        raise ConfigError("--dest is the --source cache: give another folder for the slim copy")
    require_folder(dest, "--dest", "a folder for the slim cache")
    sizes: dict[str, int] = {}
    out_data = dest / "datasets" / f"dataset={dataset}"
    out_data.mkdir(parents=True, exist_ok=True)
    for f in sorted(src_data.glob("*.parquet")):
        shutil.copyfile(f, out_data / f.name)
        sizes["datasets"] = sizes.get("datasets", 0) + f.stat().st_size
    for encoder, columns in keep.items():
        sizes[encoder] = _slim_encoder(source, dest, dataset, encoder, columns)
    return sizes


def _slim_encoder(source: Path, dest: Path, dataset: str, encoder: str, columns: list[str] | None) -> int:
    src = source / "features" / f"dataset={dataset}" / f"encoder={encoder}"
    manifest_path = src / "_manifest.json"
    if not manifest_path.is_file():
        have = sorted(p.name.split("=", 1)[1] for p in src.parent.glob("encoder=*"))
        raise ConfigError(f"no features of encoder {encoder!r} under {src.parent}; cached: {', '.join(have) or 'none'}")
    manifest = json.loads(manifest_path.read_text())
    if not manifest.get("complete"):
        raise ConfigError(f"the {encoder} features at {src} are incomplete: finish `cmh extract` first")
    available = list(manifest["columns"])
    columns = available if columns is None else columns
    unknown = [c for c in columns if c not in available]
    if unknown:
        raise ConfigError(f"encoder {encoder!r} has no column {', '.join(unknown)}; its columns: {', '.join(available)}")
    out = dest / "features" / f"dataset={dataset}" / f"encoder={encoder}"
    if out.exists():
        shutil.rmtree(out)  # a copy of other columns must not leave shards behind
    total = 0
    for shard in sorted(src.glob("split=*/part-*.parquet")):
        table = pq.read_table(shard, columns=["item_id", *columns])
        meta = json.loads((table.schema.metadata or {})[META_KEY])
        target = out / shard.parent.name / shard.name
        write_table_atomic(table.replace_schema_metadata(None), target, metadata=meta, vector_columns=columns)
        total += target.stat().st_size
    for extra in sorted(src.glob("*.parquet")):  # errors.parquet: the failures, kept as they are
        shutil.copyfile(extra, out / extra.name)
        total += extra.stat().st_size
    dropped = [c for c in available if c not in columns]
    slim = {**manifest, "columns": {c: manifest["columns"][c] for c in columns},
            "default_columns": {m: [c for c in cols if c in columns]
                                for m, cols in manifest["default_columns"].items()
                                if all(c in columns for c in cols)}}
    if dropped:
        slim["slim"] = {"dropped_columns": dropped, "from": str(source.resolve())}
    write_json_atomic(slim, out / "_manifest.json")
    return total + (out / "_manifest.json").stat().st_size


def check_copy(source: Path, dest: Path, dataset: str) -> list[str]:
    """Every difference between the slim copy's columns and the source's same columns (empty: identical)."""
    problems = []
    for f in sorted((dest / "datasets" / f"dataset={dataset}").glob("*.parquet")):
        if f.read_bytes() != (source / "datasets" / f"dataset={dataset}" / f.name).read_bytes():
            problems.append(f"{f.name} differs")
    for shard in sorted((dest / "features" / f"dataset={dataset}").glob("encoder=*/split=*/part-*.parquet")):
        rel = shard.relative_to(dest)
        copy = pq.read_table(shard)
        orig = pq.read_table(source / rel, columns=copy.column_names)
        if not copy.replace_schema_metadata(None).equals(orig.replace_schema_metadata(None)):
            problems.append(f"{rel}: values differ")
        if json.loads(copy.schema.metadata[META_KEY]) != json.loads(orig.schema.metadata[META_KEY]):
            problems.append(f"{rel}: metadata differs")
    return problems


def _path(text: str) -> Path:
    """A cache root; an empty one is refused (`make slim-cache SLIM=` wrote the copy into the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: give a folder")
    return Path(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=_path, required=True, help="cache root holding the full features (read only)")
    parser.add_argument("--dest", type=_path, required=True, help="cache root for the slim copy (its dataset is replaced)")
    parser.add_argument("--dataset", default="mirflickr")
    parser.add_argument("--keep", action="append", default=None,
                        help="ENCODER or ENCODER:COL+COL, once per encoder (default: alexnet.imagenet:pool and bow)")
    args = parser.parse_args(argv)
    try:
        keep = parse_keep(args.keep or ["alexnet.imagenet:pool", "bow"])
        sizes = slim_copy(args.source, args.dest, args.dataset, keep)
        problems = check_copy(args.source, args.dest, args.dataset)
    except CMHError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only --dest: said as `cmh` says it; a rerun copies it again
        message = storage_error_message(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    if problems:
        print(f"error: the slim copy differs from {args.source}: {'; '.join(problems[:5])}", file=sys.stderr)
        return 1
    parts = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sizes.items())
    print(f"slim cache of {args.dataset} in {args.dest}: {sum(sizes.values()) / 2**20:.1f} MiB ({parts}); "
          f"every kept column equals {args.source}'s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
