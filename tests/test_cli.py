"""The `mor` command as a user runs it: a real subprocess, one-line errors, no tracebacks."""

import subprocess
import sys

import pytest


def mor(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from mor.cli import run; run()", *args],
                          capture_output=True, text=True, timeout=300)


def test_demo_runs_and_prints_its_table():
    result = mor("demo", "--steps", "5")
    assert result.returncode == 0, result.stderr
    assert "string acc" in result.stdout and "MoE (depth 1)" in result.stdout


@pytest.mark.parametrize("args,message", [(("bench", "nope"), "unknown suite 'nope'"),
                                          (("demo", "--steps", "0"), "Invalid value")])
def test_bad_input_gives_a_clear_error_without_traceback(args, message):
    result = mor(*args)
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert message in output and "Traceback" not in output
