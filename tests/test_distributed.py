"""Two-process DDP training (gloo, CPU) against one process on the same global batch."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from mor.train import checkpoint

CONFIG = """model: {dim: 8, train_steps: 3, halting: {max_steps: 3}}
data: {task: prefix_sum, sizes: [4, 8], batch_size: 32}
train: {steps: 12, eval_every: 6, log_every: 3, warmup: 2, threads: 1,
        loss: {load_balance: 0.0, route: 0.0}}  # the two terms whose batch statistics are not additive over shards
eval: {examples: 32, sizes: [8], max_steps: [1, 3]}
"""


@pytest.mark.slow
def test_two_processes_match_one_on_the_same_global_batch(tmp_path):
    config = tmp_path / "ddp.yaml"
    config.write_text(CONFIG)
    single = subprocess.run([sys.executable, "-m", "mor", "train", str(config), "--out", str(tmp_path / "one")],
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29571",
                          "-m", "mor", "train", str(config), "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stdout[-2000:] + ddp.stderr[-4000:]
    one = load_file(checkpoint.resolve(tmp_path / "one") / checkpoint.WEIGHTS)
    two = load_file(checkpoint.resolve(tmp_path / "two") / checkpoint.WEIGHTS)
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=2e-5, rtol=1e-4, msg=name)
    logged = [[json.loads(line)["loss"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()
               if '"train"' in line] for run in ("one", "two")]  # the whole batch's loss, not rank 0's shard
    assert len(logged[0]) == 4 and logged[1] == pytest.approx(logged[0], rel=1e-4)


def test_each_process_takes_its_own_shard_of_the_global_batch(tmp_path):
    import yaml

    from mor.train.config import parse
    from mor.train.trainer import Trainer

    trainer = Trainer(parse(yaml.safe_load(CONFIG)), tmp_path)
    whole = trainer.batch_at(5, 0)
    shards = []
    for rank in range(2):
        trainer.rank, trainer.world = rank, 2
        shards.append(trainer.batch_at(5, 0))
    assert shards[0][0].shape[0] == 16 and not torch.equal(shards[0][0], shards[1][0])
    assert torch.equal(torch.cat([shards[0][0], shards[1][0]]), whole[0])
