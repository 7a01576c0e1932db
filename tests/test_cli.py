"""The `mor` command as a user runs it: a real subprocess, one-line errors, no tracebacks."""

import subprocess
import sys

import pytest


def mor(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from mor.cli import run; run()", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args,message", [(("bench", "nope"), "unknown suite 'nope'"),
                                          (("eval", "x", "--examples", "0"), "Invalid value")])
def test_bad_input_gives_a_clear_error_without_traceback(args, message):
    result = mor(*args)
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert message in output and "Traceback" not in output


def test_bench_refuses_an_out_it_cannot_write_before_running_anything(tmp_path):
    (tmp_path / "afile").write_text("kept\n")
    result = mor("bench", "layer", "--quick", "--out", str(tmp_path / "afile"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"--out: '{tmp_path / 'afile'}' is a file; give a folder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
    assert (tmp_path / "afile").read_text() == "kept\n"


TINY = """model: {dim: 8, train_steps: 3, halting: {max_steps: 3}}
data: {task: prefix_sum, sizes: [4, 8], batch_size: 16}
train: {steps: 6, eval_every: 3, log_every: 3, warmup: 2}
eval: {examples: 32, sizes: [8, 16], max_steps: [1, 3, 6]}
compare: [moe]
"""


def test_train_then_eval_write_reports(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    run = tmp_path / "run"
    result = mor("train", str(config), "--out", str(run))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (run / "report.md").is_file() and (run / "results.json").is_file()
    assert (run / "baseline-moe" / "latest.json").is_file()
    assert "MoE (depth 1)" in (run / "report.md").read_text()
    result = mor("eval", str(run), "--max-steps", "1,2,9", "--size", "12")
    assert result.returncode == 0, result.stdout + result.stderr
    evaluated = (run / "eval" / "eval.json").read_text()
    assert '"max_steps": 9' in evaluated and '"size": 12' in evaluated
    again = mor("train", str(config), "--out", str(run), "--resume")  # finished run: nothing left to do
    assert again.returncode == 0, again.stdout + again.stderr


@pytest.mark.parametrize("args,message", [
    (("train", "missing.yaml"), "config file not found"),
    (("train", "missing[b].yaml"), "missing[b].yaml"),  # printed as it is, not read as Rich markup
    (("train", "."), ".: is a folder; pass the path of a YAML file"),
    (("eval", "nowhere"), "no checkpoint here"),
    (("eval", ".", "--max-steps", "a,b"), "--max-steps: expected comma-separated int values"),
    (("eval", ".", "--max-steps", "4,0"), "mor eval: --max-steps: must be >= 1, got 0"),  # before loading
    (("eval", ".", "--threshold", "5"), "mor eval: --threshold: must be <= 1, got 5.0"),
    (("eval", ".", "--out", "afile"), "--out: 'afile' is a file; give a folder"),
    (("train", "tiny.yaml", "--out", "afile"), "checkpoint.dir (--out): 'afile' is a file; give a folder"),
    (("train", "tiny.yaml", "--out", "afile/run"), "--out): 'afile/run' inside 'afile', which is a file; give a"),
    (("eval", ".", "--out", "afile/ev"), "--out: 'afile/ev' inside 'afile', which is a file; give a folder"),
])
def test_train_and_eval_errors_are_one_line(tmp_path, args, message):
    (tmp_path / "afile").write_text("")
    (tmp_path / "tiny.yaml").write_text(TINY)
    result = subprocess.run([sys.executable, "-c", "from mor.cli import run; run()", *args], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2
    output = (result.stdout + result.stderr).strip()
    assert message in output and "Traceback" not in output and len(output.splitlines()) == 1


def test_an_interrupt_before_the_first_checkpoint_says_that_resume_starts_over(tmp_path):
    from mor.cli import _interrupted

    assert _interrupted(tmp_path, 250) == ("interrupted before the first checkpoint (one every 250 steps, and at each "
                                           "better evaluation): the same command with --resume starts again from "
                                           "step 0")
    (tmp_path / "latest.json").write_text("{}")
    assert _interrupted(tmp_path, 250).endswith("continues from the last checkpoint")


@pytest.mark.slow  # about 40 s on 2 cores: a real process interrupted mid-run; CI runs it
def test_ctrl_c_then_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    import signal
    import time

    import torch
    from safetensors.torch import load_file

    from mor.train import checkpoint

    config = tmp_path / "long.yaml"
    config.write_text(TINY.replace("steps: 6, eval_every: 3", "steps: 1000, eval_every: 50")
                      .replace("compare: [moe]", "checkpoint: {every: 20}"))
    assert mor("train", str(config), "--out", str(tmp_path / "whole")).returncode == 0
    command = [sys.executable, "-c", "from mor.cli import run; run()", "train", str(config), "--out",
               str(tmp_path / "cut")]
    # as from a terminal: a test run started in the background (nohup, `&`) ignores SIGINT, and children inherit that
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (tmp_path / "cut" / "latest.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before its first checkpoint was seen; it could not be interrupted"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in err, err  # interrupted, without a traceback
    assert "interrupted: the same command with --resume continues from the last checkpoint" in err
    resumed = mor("train", str(config), "--out", str(tmp_path / "cut"), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    whole = load_file(checkpoint.resolve(tmp_path / "whole") / checkpoint.WEIGHTS)
    cut = load_file(checkpoint.resolve(tmp_path / "cut") / checkpoint.WEIGHTS)
    assert all(torch.equal(whole[k], cut[k]) for k in whole)
