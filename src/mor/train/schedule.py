"""Learning-rate schedule: linear warmup, then cosine decay to a floor, optionally with warm restarts."""

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from mor.train.config import TrainConfig


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rate at optimiser step `step` (0-based)."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return 1.0
    elapsed, total = step - cfg.warmup, cfg.steps - cfg.warmup
    cycle = max(1, math.ceil(total / (cfg.restarts + 1)))
    progress = 1.0 if elapsed >= total else (elapsed % cycle) / cycle  # past the end: stay at the floor
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def scheduler(optimizer: Optimizer, cfg: TrainConfig) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
