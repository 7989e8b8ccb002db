"""Every command answers --help; errors a user can cause print a fix, not a traceback."""
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from pipeline.cli import app

COMMANDS = ["extract", "train", "report", "query", "encode", "index", "grid", "list"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command):
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_module_entry_point_lists_commands():
    out = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for command in COMMANDS:
        assert command in out.stdout


def test_unknown_method_names_alternatives(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pipeline", "train", "--method", "ucmhf", "--cache", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "did you mean 'ucmfh'" in out.stderr and "cmh list methods" in out.stderr


def test_missing_cache_says_how_to_extract(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pipeline", "train", "--method", "baseline", "--dataset", "nothing",
                          "--cache", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "make extract" in out.stderr
