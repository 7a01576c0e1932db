"""Build the model a config names, sized for its task, and the loss weights of its recipe."""

from torch import nn

from mor.data import Task
from mor.errors import check
from mor.nn import DenseModel, Halting, LossWeights, MoRModel, moe_baseline, reflection_baseline
from mor.train.config import LossConfig, ModelConfig


def build_model(cfg: ModelConfig, task: Task, kind: str | None = None) -> nn.Module:
    """The model of `cfg` (or of baseline `kind` with the same sizes) for `task`'s input and output widths."""
    kind = kind or cfg.kind
    check(not task.tokens, f"model.kind: {kind!r} takes feature vectors or sequences, but task {task.name!r} "
                           f"gives token ids; token models arrive with the char-LM benchmark")
    check(task.sequence or cfg.cell == "mlp",
          f"model.cell: task {task.name!r} gives vectors, so cell must be 'mlp', got {cfg.cell!r}")
    if kind == "dense":
        return DenseModel(task.in_dim, task.out_dim, dim=cfg.dim, depth=cfg.depth, cell=cfg.cell, task=task.kind)
    common = {"dim": cfg.dim, "cell": cfg.cell, "task": task.kind, "score": cfg.score, "noise_std": cfg.noise_std}
    if kind == "moe":
        return moe_baseline(task.in_dim, task.out_dim, num_experts=cfg.num_experts, k=cfg.k, **common)
    common |= {"train_steps": cfg.train_steps, "halting": Halting(**cfg.halting.model_dump()), "mode": cfg.mode,
               "progressive": cfg.progressive}
    if kind == "reflection":
        return reflection_baseline(task.in_dim, task.out_dim, **common)
    return MoRModel(task.in_dim, task.out_dim, num_experts=cfg.num_experts, k=cfg.k, **common)


def loss_weights(cfg: LossConfig) -> LossWeights:
    """The nn-level loss weights from the config section."""
    return LossWeights(**cfg.model_dump())
