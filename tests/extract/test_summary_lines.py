"""The summary lines `cmh extract` prints are the ones `bench/bench_extract.py --end-to-end` reads."""
import importlib.util
from pathlib import Path

from pipeline.orchestration.extraction import command_timings
from stages.extract.plan import ExtractSummary


def _bench():
    path = Path(__file__).resolve().parents[2] / "bench" / "bench_extract.py"
    spec = importlib.util.spec_from_file_location("bench_extract", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_reads_the_timings_the_summary_prints():
    summary = ExtractSummary(dataset="mirflickr-n2000", encoder="alexnet.imagenet", device="cpu",
                             rows={"query": 200}, failed=0, shards_written=3, shards_pending_elsewhere=0,
                             complete=True, seconds=80.0, items_per_s=25.0, wait_s=1.5, encode_s=70.25,
                             write_s=0.5, startup_s=2.0, finish_s=0.75, batches=32, waited_batches=3,
                             first_batch_at=1000.0, finished_at=1080.0, loop_s=79.0)
    bench = _bench()
    line = bench._ENCODER_LINE.search(summary.describe())
    assert line is not None, summary.describe()
    assert float(line["startup"]) == 2.0 and float(line["wait"]) == 1.5 and float(line["encoding"]) == 71.8
    assert (line["waited"], line["batches"]) == ("3", "32") and float(line["write"]) == 0.5
    assert float(line["finish"]) == 0.8  # printed with one decimal
    command = bench._COMMAND_LINE.search(command_timings([summary], "dataset mirflickr-n2000 (2000 items), features of alexnet, under /c", started=995.5))
    assert command is not None and float(command["startup"]) == 4.5
