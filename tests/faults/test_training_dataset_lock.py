"""Training holds its dataset's lock shared, as an extraction or an encode does.

Before, nothing held the dataset while a `cmh train` (or a `cmh grid`/`cmh table` cell) read its features and
before it took its run's lock: `cmh rm --kind datasets --force` deleted the features under it. Now:

* a removal while a training holds the dataset is refused in one line naming the trainer's pid, nothing deleted;
* a training while a removal holds the dataset is refused in one line naming the removal's pid, nothing written;
* two trainings of one dataset hold it together (shared), each finishing its run.

The trainer is a real `train_runs` in another process, stopped just after it has read the features (before it
takes its run's lock, the moment nothing else guarded), until the test lets it go on.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.faults.conftest import REPO, DatasetHolder, one_line_error

_TRAIN = """
import sys
from pathlib import Path
from pipeline.ground.store.cache import Cache
from pipeline.orchestration import training

load = training._load
def loaded_then_wait(dataset, req):
    data = load(dataset, req)
    print("loaded", flush=True)
    sys.stdin.readline()  # until the test lets it go on
    return data
training._load = loaded_then_wait
req = training.TrainRequest(dataset="pairs", method="baseline", bits=(16,), seed=int(sys.argv[2]), progress=False)
(result,) = training.train_runs(Cache(Path(sys.argv[1])), req)
print("trained", result.run_id, result.skipped, flush=True)
"""


class _Trainer:
    """A baseline training of ``pairs`` (16 bits, ``seed``) in another process, stopped once its features are
    read until the block ends; ``self.said`` is what it printed after it went on."""

    def __init__(self, cache: Path, seed: int) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _TRAIN, str(cache), str(seed)], cwd=REPO, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.said = ""

    def __enter__(self) -> int:
        line = self.proc.stdout.readline().strip()
        if line != "loaded":
            self.proc.kill()
            raise AssertionError(f"the trainer did not load: {line!r} {self.proc.communicate()[1][-2000:]}")
        return self.proc.pid

    def __exit__(self, *exc: object) -> None:
        out, err = self.proc.communicate("go\n", timeout=300)
        assert self.proc.returncode == 0, err[-2000:]
        self.said = out


def _features(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "features" / "dataset=pairs").rglob("*") if p.is_file())


def _lock(cache: Path) -> Path:
    return cache / "locks" / "dataset=pairs.lock"


def test_rm_of_a_dataset_a_training_reads_is_refused_naming_the_trainer(built, cli):
    _, cache, _ = built
    features = _features(cache)
    assert features
    trainer = _Trainer(cache, seed=2)
    with trainer as pid:  # --force: the finished run trained on it is not what holds the removal back
        refused = cli("rm", "--kind", "datasets", "pairs", "--yes", "--force", "--cache", cache)
    assert one_line_error(refused) == (
        f"error: pairs: dataset 'pairs' is being trained on by process {pid} (lock {_lock(cache)}); wait for it to "
        f"finish, or stop it, then run the command again; nothing removed")
    assert _features(cache) == features and (cache / "datasets" / "dataset=pairs" / "items.parquet").exists()
    assert trainer.said.startswith("trained pairs-baseline-16b-s2-") and trainer.said.split()[2] == "False"


def test_a_training_while_a_removal_runs_is_refused_naming_the_removal(built, cli):
    _, cache, _ = built
    runs = sorted(p.name for p in (cache / "runs").iterdir())
    with DatasetHolder(cache, "removing") as pid:
        refused = cli("train", "--method", "baseline", "--dataset", "pairs", "--cache", cache, "--bits", "16",
                      "--seed", "2")
    assert one_line_error(refused).startswith(
        f"error: dataset 'pairs' is being removed by process {pid} (lock {_lock(cache)}); wait for it to finish")
    assert sorted(p.name for p in (cache / "runs").iterdir()) == runs  # no run folder begun


def test_two_trainings_of_one_dataset_hold_it_together(built, cli):
    from pipeline.ground.store.layout import CacheLayout
    from pipeline.ground.store.lock import DatasetLock

    _, cache, _ = built
    first, second = _Trainer(cache, seed=2), _Trainer(cache, seed=3)
    with first as one, second as two:  # both have read the features, neither has let the dataset go
        with DatasetLock(CacheLayout(cache), "pairs", "removing") as look:
            holders = sorted(look.holders())
        assert holders == sorted([(str(one), "training"), (str(two), "training")])
    for trainer, seed in ((first, 2), (second, 3)):
        assert trainer.said.startswith(f"trained pairs-baseline-16b-s{seed}-"), trainer.said
        assert (cache / "runs" / trainer.said.split()[1] / "report.parquet").exists()


def test_a_mistyped_dataset_leaves_no_lock_behind(built, cli):
    """Training and encode take the dataset's lock only for a dataset that is cached: a typo is the readers'
    one-line "not cached" error, with no `locks/dataset=<typo>.lock` left in the cache."""
    _, cache, _ = built
    run = next(p.name for p in (cache / "runs").iterdir() if (p / "report.parquet").exists())
    for args in (("train", "--method", "baseline", "--dataset", "pairz", "--bits", "16"),
                 ("encode", "--run", run, "--dataset", "pairz")):
        refused = cli(*args, "--cache", cache)
        assert refused.code != 0 and one_line_error(refused).startswith("error: ") and "pairz" in refused.err
    assert not list((cache / "locks").glob("dataset=pairz*"))
