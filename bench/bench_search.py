"""Hamming search with the faiss binary indexes of ``cmh index``: 10M codes, 1,000 queries, top 50.

Data (printed in a ``data=`` line before each block):

* ``realistic``: codes drawn to look like a real run's. The database codes are the run's database
  image codes, each drawn code a uniformly chosen real code with every bit flipped with probability
  ``--flip``; the queries are the run's query-split text codes flipped the same way (text -> image
  search). The neighbourhood structure (clusters, skewed bits) is the real one, blurred.
* ``uniform``: every bit a fair coin (the worst case: no structure for an index to exploit).

Recall@50: Hamming distances tie massively, so a returned item counts as correct when its distance
is at most the query's exact 50th-nearest distance (exact distances from the numba exhaustive search
in the same run); an item an index did not return (id -1) counts as wrong.

Tuning: for ivf, hash and multihash a small grid of parameters is searched with ``--tune-queries``
extra queries drawn the same way (never the measured queries); the line printed for a kind is the
fastest setting whose tuning recall reaches ``--target`` with memory within ``--max-mem-ratio`` x the
raw codes, or, when none does, the highest-recall setting among those at most 5x the time target
(then marked ``target=missed``). The
measured queries are searched once, with that setting.

``mem_mb``: the index's serialized size (``faiss.serialize_index_binary``) in MB (10^6 bytes): codes,
ids and tables, which is what the index holds in memory, without allocator overhead. Raw codes are
N x bits / 8 bytes. Builds use one faiss thread. ``ms_per_1k``: wall milliseconds per 1,000 queries,
the faster of one faiss thread and all the cores this process may use (tuning searches use one
thread, which is steadier on a shared machine); the chosen line says which. Peak RSS is printed at the end. Output: one line per kind, exactly
``kind=<k> n=<N> bits=<b> build_s=<x> mem_mb=<y> ms_per_1k=<z> recall@50=<r>`` (scripts read it);
other lines never start with ``kind=``.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.evaluate import binary_index  # noqa: E402
from stages.evaluate.hamming import topk  # noqa: E402

K = 50


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def flip(rng: np.random.Generator, words: np.ndarray, p: float, bits: int) -> np.ndarray:
    """Flip each of the first ``bits`` bits of every code with probability ``p`` (in place, in blocks)."""
    width = words.shape[1]
    for start in range(0, words.shape[0], 1 << 20):
        block = words[start:start + (1 << 20)]
        for w in range(width):
            live = min(64, bits - 64 * w)
            if live <= 0:
                break
            on = rng.random((block.shape[0], live), dtype=np.float32) < p  # (m, live)
            mask = np.packbits(np.pad(on, ((0, 0), (0, 64 - live))), axis=1, bitorder="little").view("<u8")[:, 0]
            block[:, w] ^= mask.astype(np.uint64)
    return words


def find_run(cache: Path, bits: int) -> Path | None:
    """A real run's directory with ``bits``-bit codes: CCA-ITQ seed 1 if cached, else any run at those bits."""
    runs = cache / "runs"
    for pattern in (f"*-cca-itq-{bits}b-s1-*", f"*-ccah-{bits}b-s1-*", f"*-{bits}b-s1-*"):
        found = sorted(p for p in runs.glob(pattern) if (p / "codes" / "split=database").exists())
        if found:
            return found[0]
    return None


def realistic(rng: np.random.Generator, run: Path, n: int, nq: int, bits: int, p: float):
    from pipeline.ground.store.codes import read_codes

    db = read_codes(run / "codes", "database", unpack=False)
    qs = read_codes(run / "codes", "query", unpack=False)
    if db["bits"] != bits:
        raise SystemExit(f"{run} has {db['bits']}-bit codes, not {bits}: pass --run with a {bits}-bit run")
    base = db["image_words"][rng.integers(0, len(db["image_words"]), n)]
    queries = qs["text_words"][rng.integers(0, len(qs["text_words"]), nq)]
    return flip(rng, base, p, bits), flip(rng, queries.copy(), p, bits)


def uniform(rng: np.random.Generator, n: int, nq: int, bits: int):
    width = (bits + 63) // 64
    draw = lambda m: rng.integers(0, np.iinfo(np.uint64).max, (m, width), dtype=np.uint64, endpoint=True)  # noqa: E731
    db, q = draw(n), draw(nq)
    if bits % 64:
        keep = np.uint64((1 << (bits % 64)) - 1)
        db[:, -1] &= keep
        q[:, -1] &= keep
    return db, q


def recall(ids: np.ndarray, dist: np.ndarray, exact_kth: np.ndarray) -> float:
    """Mean over queries of (returned items with distance <= the exact k-th distance) / k."""
    ok = (ids >= 0) & (dist <= exact_kth[:, None])
    return float(ok.sum(axis=1).mean() / ids.shape[1])


def grid(kind: str, n: int, bits: int) -> list[dict[str, int]]:
    """Settings tried per kind (kept small: a 10M build takes minutes on two cores); build-time
    parameters first, so one build serves its search settings."""
    base = binary_index.default_params(kind, n, bits)
    if kind == "ivf":
        return [{"nprobe": p} for p in (16, 32, 48, 64, 96, 128) if p <= base["nlist"]]
    if kind == "hash":
        return [{"hash_bits": hb, "nflip": nf} for hb in sorted({base["hash_bits"], min(bits, base["hash_bits"] + 2)})
                for nf in (3, 4) if nf <= hb]
    if kind == "multihash":
        return [{"nhash": 2, "hash_bits": hb, "nflip": nf} for hb in (min(bits // 2, base["hash_bits"]),)
                for nf in (2, 3)] + [{"nhash": 4, "hash_bits": bits // 4, "nflip": 2}]
    return [{}]


BUILD_KEYS = {"ivf": ("nlist", "train_size"), "hash": ("hash_bits",), "multihash": ("nhash", "hash_bits")}


def timed_build(db: np.ndarray, ids: np.ndarray, kind: str, params: dict) -> tuple[object, float]:
    """(index, seconds) built on one faiss thread: faiss' OpenMP k-means collapsed on a shared 2-core
    machine (IVF at 1M: 88 s with two threads beside one busy core, 2.2 s with one)."""
    import faiss

    faiss.omp_set_num_threads(1)
    t0 = time.perf_counter()
    index = binary_index.build_index(db, ids, kind, params)
    return index, time.perf_counter() - t0


def timed_search(index, q: np.ndarray, threads: int = 1) -> tuple[np.ndarray, np.ndarray, float]:
    import faiss

    faiss.omp_set_num_threads(threads)
    t0 = time.perf_counter()
    ids, dist = binary_index.search(index, q, K)
    return ids, dist, time.perf_counter() - t0


def best_search(index, q: np.ndarray, max_threads: int) -> tuple[np.ndarray, np.ndarray, float, int]:
    """The faster of one thread and all threads (OpenMP collapses when the cores are shared with other jobs)."""
    runs = [(*timed_search(index, q, 1), 1)]
    if max_threads > 1 and runs[0][2] < 30:  # a minute-long search is not repeated to try more threads
        runs.append((*timed_search(index, q, max_threads), max_threads))
    return min(runs, key=lambda r: r[2])


def bench_block(db: np.ndarray, q: np.ndarray, tune_q: np.ndarray, bits: int, kinds: list[str],
                target: float, max_mem_ratio: float) -> None:
    import faiss

    max_threads = faiss.omp_get_max_threads()
    n = db.shape[0]
    raw_mb = n * bits / 8 / 1e6
    t0 = time.perf_counter()
    _, exact_d = topk(np.concatenate([q, tune_q]), db, K, backend="numba")
    exact_s = time.perf_counter() - t0
    kth, tune_kth = exact_d[:len(q), -1], exact_d[len(q):, -1]
    print(f"exact top-{K} (numba, {len(q) + len(tune_q)} queries): {exact_s:.2f} s; raw codes {raw_mb:.1f} MB; "
          f"median exact 50th distance {np.median(kth):.0f}", flush=True)
    ids_all = np.arange(n, dtype=np.int64)
    for kind in kinds:
        settings = grid(kind, n, bits)
        tried = []  # (params, build_s, mem_mb, tune_ms_per_1k, tune_recall)
        built: dict[tuple, tuple] = {}
        for s in settings:
            params = binary_index.default_params(kind, n, bits, s)
            key = tuple(params.get(k) for k in BUILD_KEYS.get(kind, ()))
            if key not in built:
                built.clear()  # one index in memory at a time
                index, build_s = timed_build(db, ids_all, kind, params)
                built[key] = (index, build_s, len(binary_index.to_bytes(index)) / 1e6)
            index, build_s, mem_mb = built[key]
            binary_index.set_search_params(index, kind, params)
            if kind == "flat":  # exact: nothing to tune, measured below
                tried.append((params, build_s, mem_mb, 0.0, 1.0))
                break
            ids, dist, sec = timed_search(index, tune_q)
            r = recall(ids, dist, tune_kth)
            tried.append((params, build_s, mem_mb, 1e3 * sec * 1000 / len(tune_q), r))
            shown = " ".join(f"{k}={v}" for k, v in params.items() if k != "seed")
            print(f"  tune {kind} {shown} build_s={build_s:.1f} mem_mb={mem_mb:.1f} "
                  f"ms_per_1k={tried[-1][3]:.0f} recall@50={r:.3f}", flush=True)
        fits = [t for t in tried if t[4] >= target and t[2] <= max_mem_ratio * raw_mb]
        # none fits: the best recall among settings at most 5x the time target (a 30 s-per-1k setting is no answer)
        usable = [t for t in tried if t[3] <= 5000] or [min(tried, key=lambda t: t[3])]
        chosen = min(fits, key=lambda t: t[3]) if fits else max(usable, key=lambda t: (t[4], -t[3]))
        params, build_s, mem_mb = chosen[0], chosen[1], chosen[2]
        key = tuple(params.get(k) for k in BUILD_KEYS.get(kind, ()))
        if key not in built:
            built.clear()
            index, build_s = timed_build(db, ids_all, kind, params)
            built[key] = (index, build_s, mem_mb)
        index = built[key][0]
        binary_index.set_search_params(index, kind, params)
        ids, dist, sec, threads = best_search(index, q, max_threads)
        r = recall(ids, dist, kth)
        ms = 1e3 * sec * 1000 / len(q)
        print(f"kind={kind} n={n} bits={bits} build_s={build_s:.2f} mem_mb={mem_mb:.1f} ms_per_1k={ms:.1f} "
              f"recall@50={r:.4f}", flush=True)
        met = r >= target and ms <= 1000 and mem_mb <= max_mem_ratio * raw_mb
        shown = " ".join(f"{k}={v}" for k, v in params.items() if k != "seed") or "no parameters"
        print(f"  chosen {kind}: {shown}; {threads} search thread(s); mem {mem_mb / raw_mb:.2f}x raw codes; "
              f"target={'met' if met else 'missed'} (recall >= {target}, <= 1000 ms per 1k, mem <= "
              f"{max_mem_ratio}x)", flush=True)
        built.clear()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1M codes instead of 10M, realistic data only unless "
                        "--data says otherwise (under a minute on 2 idle cores)")
    parser.add_argument("--n", type=int, default=None, help="database codes (default 10,000,000; --quick 1,000,000)")
    parser.add_argument("--bits", type=int, default=64, help="code length (64 or 128)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--tune-queries", type=int, default=200, help="separate queries that choose each kind's setting")
    parser.add_argument("--data", default=None, help="comma list: realistic, uniform (default both; --quick: realistic)")
    parser.add_argument("--kinds", default=",".join(binary_index.KINDS), help="comma list of index kinds")
    parser.add_argument("--run", type=Path, default=None, help="real run directory for realistic codes "
                        "(default: a CCA-ITQ seed-1 run at --bits under the cache root)")
    parser.add_argument("--cache", type=Path, default=None, help="cache root to find --run in (default: $CMH_CACHE, else the checkout's cache/)")
    parser.add_argument("--flip", type=float, default=0.05, help="realistic: per-bit flip probability")
    parser.add_argument("--target", type=float, default=0.95, help="recall@50 a tuned setting must reach")
    parser.add_argument("--max-mem-ratio", type=float, default=2.5, help="memory a tuned setting may use, x raw codes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n = args.n or (1_000_000 if args.quick else 10_000_000)
    data_kinds = args.data or ("realistic" if args.quick else "realistic,uniform")
    if args.quick and args.data is None and args.run is None:
        from pipeline.ground.settings import cache_root

        if find_run(cache_root(args.cache), args.bits) is None:
            data_kinds = "uniform"
            print(f"--quick: no {args.bits}-bit run under {cache_root(args.cache)}/runs for realistic codes; "
                  f"measuring uniform codes instead", flush=True)
    kinds = [binary_index.check_kind(k.strip()) for k in args.kinds.split(",") if k.strip()]
    import faiss

    print(f"bench_search: n={n} bits={args.bits} queries={args.queries} (+{args.tune_queries} tuning) top-{K}; "
          f"cpus={len(os.sched_getaffinity(0))} faiss={faiss.__version__} omp_threads={faiss.omp_get_max_threads()}",
          flush=True)
    rng = np.random.default_rng(args.seed)
    for data in [d.strip() for d in data_kinds.split(",") if d.strip()]:
        total_q = args.queries + args.tune_queries
        if data == "realistic":
            from pipeline.ground.settings import cache_root

            run = args.run or find_run(cache_root(args.cache), args.bits)
            if run is None:
                print(f"data=realistic skipped: no {args.bits}-bit run under {cache_root(args.cache)}/runs "
                      f"(pass --run or --cache)", flush=True)
                continue
            db, q = realistic(rng, run, n, total_q, args.bits, args.flip)
            print(f"data=realistic source={run.name} flip={args.flip} (database: its image codes, queries: its "
                  f"query-split text codes, each bit flipped with p={args.flip})", flush=True)
        elif data == "uniform":
            db, q = uniform(rng, n, total_q, args.bits)
            print("data=uniform (every bit a fair coin; the worst case)", flush=True)
        else:
            raise SystemExit(f"unknown --data {data!r}: use realistic or uniform")
        bench_block(db, q[:args.queries], q[args.queries:], args.bits, kinds, args.target, args.max_mem_ratio)
        del db, q
    print(f"peak RSS {peak_rss_mb():.0f} MB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
