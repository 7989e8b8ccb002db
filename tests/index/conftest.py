"""The fault cases' built collection (alexnet + bow, a 16-bit baseline run) and in-process CLI, reused here."""
from tests.faults.conftest import _built, built, cli  # noqa: F401  (fixtures)
