"""The GPU pass: on a lent GPU machine, train the cells the table lacks on the GPU within a wall-time limit and
send the new result rows back in one archive. A GPU's runs have ids of their own (it rounds otherwise, so its
codes differ from the CPU's): the CPU's rows of a cell leave it to train, and the GPU's are published beside them.
``make gpu-pass`` runs it; README "Where the numbers live" gives the call.

On the machine, with the working tree (``results/`` included) and the carried slim cache
(``bench/slim_cache.py``) and wheels beside it, this script:

1. installs the carried wheels (``--wheels``, if any) offline into a folder put on PYTHONPATH;
2. asks which methods' features the carried cache holds and leaves the others out, saying why;
3. runs ``python -m pipeline table --pack $OUT/rows.tar.gz`` on the missing cells (every seed 1 first) with a
   budget that ends ``--margin`` seconds before ``--minutes`` (running cells pause at a checkpoint), and stops
   it outright at the limit if it is still running;
4. packs the result files the table added to ``results/`` itself when the table could not (stopped first);
5. writes a summary: cells published, their device and training seconds, what is still missing.

Everything it writes goes under ``--out`` (default ``$OUT``), at most 6 files: ``rows.tar.gz`` (unpack with
``tar -xzf rows.tar.gz -C results``), ``table.log`` (the table's stdout and stderr), ``gpu_pass.log`` (this
script's lines), ``pip.log``, ``summary.txt`` and, with ``--emulate-device``, ``blocked.log``.

``--emulate-device`` is the CPU dry run: the environment of the GPU machine's Python is emulated
(``bench/device_env``: only torch, pyarrow, typer, rich, numba, timm and what they require, plus the wheels),
e.g. ``python bench/gpu_pass.py --emulate-device --device cpu --epochs 1 --methods djsrh,cfrh --bits 16
--seeds 1 --workers 2 --out /tmp/out --cache /tmp/slim-copy``.

Up to step 2 this file uses the standard library alone (the machine's Python lacks the project's other
packages until the wheels are on PYTHONPATH).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEVICE_ENV = ROOT / "bench" / "device_env"
ARCHIVE = "rows.tar.gz"
#: The table is stopped outright this many seconds before ``--minutes``, so ``--margin`` must leave more: a budget
#: that ends later never pauses the running cells, which then lose their work since the last checkpoint.
STOP_BEFORE_S = 20.0
ALL_METHODS = "baseline,cca-itq,djsrh,dsah,ccah,ucmfh,cfrh,dsprh,fjsph"
#: Packages a method imports only when it fits (not on import, so the registry loads without them): a method
#: whose package is missing is left out with the reason instead of failing its cells on the machine.
FIT_IMPORTS = {"cca-itq": ("scipy",)}


class Pass:
    """The files under ``out`` and the lines said so far."""

    def __init__(self, out: Path) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.log_path = out / "gpu_pass.log"
        self.started = time.time()

    def say(self, line: str) -> None:
        stamp = f"[gpu-pass {time.time() - self.started:6.1f}s]"
        print(f"{stamp} {line}", flush=True)
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {line}\n")


def install_wheels(wheels: Path, site: Path, p: Pass) -> list[str]:
    """Every wheel in ``wheels`` installed offline into ``site`` (pip picks the ones this Python can use);
    returns the distribution names. No wheels: nothing to do."""
    files = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if not files:
        p.say(f"no wheels carried ({wheels}): the project runs on the machine's own packages")
        return []
    names = sorted({f.name.split("-")[0] for f in files})
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
           "--upgrade", "--disable-pip-version-check", "--target", str(site), "--find-links", str(wheels), *names]
    with open(p.out / "pip.log", "w", encoding="utf-8") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        raise SystemExit(f"installing the carried wheels failed (rc {rc}); see {p.out / 'pip.log'}")
    p.say(f"installed {len(names)} carried wheel(s) into {site}: {', '.join(names)}")
    return names


def child_env(site: Path | None, emulate: bool, out: Path, carried: list[str]) -> dict[str, str]:
    """The environment of every child: the wheels' folder and the checkout on PYTHONPATH (the emulation first)."""
    env = dict(os.environ)
    paths = ([str(DEVICE_ENV)] if emulate else []) + ([str(site)] if site else []) + [str(ROOT)]
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    if emulate:
        env["CMH_DEVICE_EMULATE"] = "1"
        env["CMH_DEVICE_BLOCKED_LOG"] = str(out / "blocked.log")
    return env


def feature_check(cache: Path, dataset: str, methods: list[str], bits: str, seeds: str, epochs: str | None,
                  results: Path, device: str) -> dict:
    """``{"reasons": {method: why the cache cannot feed its default features, or None}, "todo": {method: cells
    results/ lacks on ``device`` (a GPU's run ids are its own)}}``. Runs in a child, with the project's packages
    importable."""
    from pipeline.cli import _epochs_per_method, _ints
    from pipeline.ground.errors import CMHError
    from pipeline.ground.store.cache import Cache
    from pipeline.orchestration.grid import GridRequest, grid_cells, resolve_methods
    from pipeline.orchestration.training import planned_run_ids
    from stages.present.results import current_run_ids
    from stages.train import methods as _  # noqa: F401  (registers every method)
    from stages.train.base import METHODS

    import importlib.util

    data = Cache(cache).dataset(dataset)
    if not data.exists():  # said once for the pass, not once per method as each method's features would say it
        raise SystemExit(f"no cached dataset {dataset!r} under {cache}: build the carried cache with `make slim-cache` "
                         f"and carry its folder (README, \"Where the numbers live\")")
    published = current_run_ids(results, dataset)
    reasons: dict[str, str | None] = {}
    todo: dict[str, int] = {}
    _, per_method = resolve_methods(methods, _epochs_per_method(epochs))
    for name in methods:
        builder = METHODS.get(METHODS.resolve(name)).builder
        try:
            data.feature_refs(builder.default_image_features, "image")
            data.feature_refs(builder.default_text_features, "text")
            reasons[name] = None
        except CMHError as exc:
            reasons[name] = f"its features are not in the carried cache: {exc}"
        lacking = [m for m in FIT_IMPORTS.get(METHODS.resolve(name), ()) if importlib.util.find_spec(m) is None]
        if lacking and not reasons[name]:
            reasons[name] = f"its fit imports {', '.join(lacking)}, which this Python lacks: carry the wheel(s) in .whl"
        cells = grid_cells(GridRequest(dataset, [METHODS.resolve(name)], _ints(bits), _ints(seeds), epochs=per_method,
                                       device=device))
        todo[name] = sum(planned_run_ids(c)[0] not in published for c in cells)
    return {"reasons": reasons, "todo": todo}


def plan(args: argparse.Namespace, env: dict[str, str], p: Pass) -> tuple[list[str], int]:
    """The methods the carried cache can feed (the others said and left out), and their missing cells."""
    asked = [m.strip() for m in args.methods.split(",") if m.strip()]
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--feature-check", json.dumps(asked),
                           "--cache", str(args.cache), "--dataset", args.dataset, "--bits", args.bits,
                           "--seeds", args.seeds, "--results", str(args.results), "--device", args.device]
                          + (["--epochs", args.epochs] if args.epochs else []),
                          env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        (p.out / "table.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"planning from the carried cache {args.cache} failed: {last} (whole output in table.log)")
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, why in found["reasons"].items():
        if why:
            p.say(f"{name} left out ({found['todo'][name]} missing cell(s)): {why}")
    methods = [m for m in asked if not found["reasons"][m]]
    todo = sum(found["todo"][m] for m in methods)
    p.say(f"{todo} missing cell(s) of {', '.join(methods) or 'no method'} to train")
    return methods, todo


def result_files(results: Path, dataset: str) -> dict[str, tuple[int, int]]:
    folder = results / dataset
    return {f.name: (f.stat().st_mtime_ns, f.stat().st_size) for f in sorted(folder.glob("*.parquet"))} \
        if folder.is_dir() else {}


def run_table(cmd: list[str], env: dict[str, str], deadline: float, p: Pass) -> int:
    """The table, its lines echoed and kept in table.log; stopped (SIGTERM, then SIGKILL) at ``deadline``."""
    with open(p.out / "table.log", "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)

        def pump() -> None:
            for line in proc.stdout:  # type: ignore[union-attr]
                log.write(line)
                log.flush()
                print(line, end="", flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        while proc.poll() is None and time.time() < deadline:
            time.sleep(1)
        if proc.poll() is None:
            p.say("the wall-time limit is reached and the table still runs: stopping it (its workers die with it)")
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        reader.join(10)
    return proc.returncode


def pack_new(results: Path, dataset: str, before: dict, archive: Path, p: Pass) -> list[Path]:
    """The files the table added or changed in ``results/<dataset>`` since ``before``; packed into ``archive``
    (``<dataset>/<file>`` members) when the table's own archive is missing or differs."""
    now = result_files(results, dataset)
    new = [results / dataset / n for n, stamp in now.items() if before.get(n) != stamp]
    expected = sorted(f"{dataset}/{f.name}" for f in new)
    have = None
    if archive.exists():
        with tarfile.open(archive) as tar:
            have = sorted(tar.getnames())
    if new and not set(expected) <= set(have or ()):  # the table packs each row as it publishes it
        tmp = archive.with_name(archive.name + ".partial")
        with tarfile.open(tmp, "w:gz") as tar:
            if have:  # what an earlier pass packed there is kept
                with tarfile.open(archive) as old:
                    for member in old.getmembers():
                        if member.isfile() and member.name not in expected:
                            tar.addfile(member, old.extractfile(member))
            for f in new:
                tar.add(f, arcname=f"{dataset}/{f.name}")
        tmp.replace(archive)
        p.say(f"the table did not pack every new file ({'no archive' if have is None else f'{len(have)} in it'}): "
              f"packed the {len(new)} new result file(s) into {archive}")
    return new


def summary(new: list[Path], p: Pass, table_rc: int, left_out: list[str]) -> list[str]:
    import pyarrow.parquet as pq

    lines = [f"GPU pass: {len(new)} new result file(s) in {p.out / ARCHIVE if new else 'no archive'}; "
             f"table exit status {table_rc}; {time.time() - p.started:.0f} s wall"]
    by_device: dict[str, list[float]] = {}
    for f in new:
        rows = pq.read_table(f).to_pylist()
        scores = {f"{r['task']} {r['metric']}": r["value"] for r in rows if r["metric"] == "map@50"}
        first = rows[0]
        by_device.setdefault(str(first.get("device")), []).append(float(first.get("train_s") or 0))
        epochs = "closed form" if first.get("epochs") is None else f"{first['epochs']} epochs"
        lines.append(f"  {first['method']} {first['bits']}b s{first['seed']}: {epochs}, "
                     f"{float(first.get('train_s') or 0):.1f} s on {first.get('device')} ({first.get('hardware')}); "
                     + ", ".join(f"{k} {v:.4f}" for k, v in sorted(scores.items())))
    for device, seconds in by_device.items():
        lines.append(f"  {device}: {len(seconds)} run(s), {sum(seconds):.0f} s of training in all")
    table_log = (p.out / "table.log").read_text(encoding="utf-8", errors="replace").splitlines() \
        if (p.out / "table.log").exists() else []
    last = [line for line in table_log if "still missing" in line]
    lines.append("  " + (last[-1] if last else "the table printed no closing line (stopped before its end)"))
    if left_out:
        lines.append(f"  left out (their features or packages are not carried; see gpu_pass.log): {', '.join(left_out)}")
    blocked = p.out / "blocked.log"
    if blocked.exists():
        ours = sorted({line.split("\t")[0] for line in blocked.read_text().splitlines()
                       if any(f"{os.sep}{part}{os.sep}" in line for part in ("pipeline", "stages"))})
        lines.append(f"  imports from the project that found nothing there (optional ones if its runs finished): {', '.join(ours) or 'none'}")
    return lines


def _path(text: str) -> Path:
    """An argument path; an empty one is refused (it would be the checkout, the children's working folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: give a path, or leave the option out for its default")
    return Path(text)


def check_limits(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``parser.error`` for a wall-time limit, margin or worker count the pass cannot keep: ``--minutes nan`` ran
    the table for no time at all, a margin under ``STOP_BEFORE_S`` let the limit kill the cells before the budget
    paused them at a checkpoint, and ``--workers 0`` was taken as 1 without a word."""
    if not (math.isfinite(args.minutes) and args.minutes > 0):
        parser.error(f"--minutes {args.minutes}: give the wall-time limit as a number of minutes > 0")
    if not (math.isfinite(args.margin) and args.margin > STOP_BEFORE_S):
        parser.error(f"--margin {args.margin}: give more than {STOP_BEFORE_S:g} seconds (the table is stopped "
                     f"{STOP_BEFORE_S:g} s before the limit; the budget must end before that, for cells to pause)")
    if args.minutes * 60 <= args.margin:
        parser.error(f"--minutes {args.minutes:g} leaves no time after the {args.margin:g} s margin")
    if args.workers < 1:
        parser.error(f"--workers {args.workers}: give the number of cells trained at once, 1 or more")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=_path, default=os.environ.get("OUT") or None, help="where every file goes (default $OUT)")
    parser.add_argument("--cache", type=_path, default=ROOT / ".carry" / "cache", help="the carried (slim) cache")
    parser.add_argument("--wheels", type=_path, default=ROOT / ".whl", help="carried wheels (installed offline)")
    parser.add_argument("--site", type=_path, default=Path("/tmp/cmh-site"), help="where the wheels are installed")
    parser.add_argument("--results", type=_path, default=ROOT / "results")
    parser.add_argument("--dataset", default="mirflickr")
    parser.add_argument("--methods", default=ALL_METHODS)
    parser.add_argument("--bits", default="16,32,64,128")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workers", type=int, default=8, help="cells trained at once (16 cores on the H200 machine)")
    parser.add_argument("--epochs", default=None, help="a dry run's short schedule (N or method=N,...)")
    parser.add_argument("--minutes", type=float, default=9.0, help="wall-time limit of the whole pass")
    parser.add_argument("--margin", type=float, default=90.0,
                        help="seconds before the limit at which the budget ends (cells pause, the archive is written)")
    parser.add_argument("--emulate-device", action="store_true", help="the CPU dry run: emulate the machine's Python")
    parser.add_argument("--feature-check", default=None, help=argparse.SUPPRESS)  # the child of step 2
    args = parser.parse_args(argv)
    if args.feature_check is not None:
        print(json.dumps(feature_check(args.cache, args.dataset, json.loads(args.feature_check), args.bits, args.seeds,
                                       args.epochs, args.results, args.device)))
        return 0
    if args.out is None or str(args.out) in ("", "."):
        parser.error("give --out, or set OUT (the folder whose files come back from the GPU machine)")
    if args.emulate_device and args.results.resolve() == (ROOT / "results").resolve():
        parser.error("a dry run would publish its rows into the checkout's results/: give --results a scratch folder")
    check_limits(parser, args)
    try:
        p = Pass(args.out)
    except OSError as exc:  # a file in its place, a read-only folder
        parser.error(f"--out {args.out}: {exc.strerror} ({exc.filename}): give a folder this user can write")
    limit = p.started + args.minutes * 60
    budget_h = (args.minutes * 60 - args.margin) / 3600
    p.say(f"python {sys.version.split()[0]} at {sys.executable}; checkout {ROOT}; cache {args.cache}; "
          f"limit {args.minutes:g} min, budget {budget_h * 60:.1f} min")
    carried = install_wheels(args.wheels, args.site, p)
    env = child_env(args.site if carried else None, args.emulate_device, args.out, carried)
    methods, todo = plan(args, env, p)
    asked = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods or not todo:
        p.say("nothing to train: " + ("no method can run from the carried cache" if not methods
                                      else f"results/{args.dataset} holds every cell asked for, on {args.device}"))
        (args.out / "summary.txt").write_text("nothing to train\n", encoding="utf-8")
        return 0 if methods else 2
    workers = max(1, min(args.workers, todo))
    before = result_files(args.results, args.dataset)
    archive = args.out / ARCHIVE
    cmd = [sys.executable, "-m", "pipeline", "table", "--dataset", args.dataset, "--methods", ",".join(methods),
           "--bits", args.bits, "--seeds", args.seeds, "--device", args.device, "--workers", str(workers),
           "--budget", f"{budget_h:.6f}", "--results", str(args.results), "--cache", str(args.cache),
           "--pack", str(archive)] + (["--epochs", args.epochs] if args.epochs else [])
    p.say("running: " + " ".join(cmd))
    rc = run_table(cmd, env, limit - STOP_BEFORE_S, p)
    p.say(f"the table ended with exit status {rc}")
    new = pack_new(args.results, args.dataset, before, archive, p)
    lines = summary(new, p, rc, [m for m in asked if m not in methods])
    (args.out / "summary.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for line in lines:
        p.say(line)
    return rc if rc >= 0 else 128 - rc  # a table ended by a signal: 128 + its number, as a shell says it


if __name__ == "__main__":
    sys.exit(main())
