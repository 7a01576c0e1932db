"""Build the model a config names, sized for its task, and the loss weights of its recipe."""

from torch import nn

from mor.data import Task
from mor.errors import check
from mor.nn import DenseModel, Halting, LossWeights, MoRModel, TokenModel, moe_baseline, reflection_baseline
from mor.train.config import LossConfig, ModelConfig

TOKEN_MODEL_FIXED = {"cell": "mlp", "mode": "gate", "score": "softmax", "noise_std": 0.0, "progressive": 0.0}
"""What a `TokenModel` always does where the config has a setting: other values are refused, not ignored."""


def build_model(cfg: ModelConfig, task: Task, kind: str | None = None) -> nn.Module:
    """The model of `cfg` (or of baseline `kind` with the same sizes) for `task`'s input and output widths;
    a `TokenModel` for token tasks."""
    kind = kind or cfg.kind
    if task.tokens:
        return token_model(cfg, task, kind)
    check(task.sequence or cfg.cell == "mlp",
          f"model.cell: task {task.name!r} gives vectors, so cell must be 'mlp', got {cfg.cell!r}")
    if kind == "dense":
        return DenseModel(task.in_dim, task.out_dim, dim=cfg.dim, depth=cfg.depth, cell=cfg.cell, task=task.kind)
    common = {"dim": cfg.dim, "cell": cfg.cell, "task": task.kind, "score": cfg.score, "noise_std": cfg.noise_std}
    if kind == "moe":
        return moe_baseline(task.in_dim, task.out_dim, num_experts=cfg.num_experts, k=cfg.k, **common)
    common |= {"train_steps": cfg.train_steps, "halting": halting_rule(cfg), "mode": cfg.mode,
               "progressive": cfg.progressive}
    if kind == "reflection":
        return reflection_baseline(task.in_dim, task.out_dim, **common)
    return MoRModel(task.in_dim, task.out_dim, num_experts=cfg.num_experts, k=cfg.k, **common)


def token_model(cfg: ModelConfig, task: Task, kind: str) -> TokenModel:
    """A causal transformer over `task`'s token ids with FFN `kind` (mor, moe or dense) and the task's context."""
    check(kind != "reflection", f"model.kind: 'reflection' has no token model (task {task.name!r} gives token "
                                "ids); use mor, moe or dense")
    check(cfg.dim % cfg.heads == 0, f"model.heads: must divide model.dim ({cfg.dim}), got {cfg.heads}")
    for name, fixed in TOKEN_MODEL_FIXED.items():
        value = getattr(cfg, name)
        check(value in (fixed, ModelConfig.model_fields[name].default),
              f"model.{name}: token models (task {task.name!r}) always use {fixed!r}, got {value!r}; remove "
              f"model.{name}, it applies to vector and sequence tasks")
    check(cfg.halting.threshold is None and cfg.halting.stable_steps is None,
          f"model.halting: token models (task {task.name!r}) reflect to a fixed depth, since nothing trains their "
          "critic or halting head; remove halting.threshold and halting.stable_steps (max_steps sets the depth)")
    return TokenModel(task.in_dim, dim=cfg.dim, depth=cfg.depth, heads=cfg.heads, max_len=task.sizes[1], ffn=kind,
                      num_experts=cfg.num_experts, k=cfg.k, hidden=cfg.hidden, train_steps=cfg.train_steps,
                      halting=halting_rule(cfg))


def halting_rule(cfg: ModelConfig) -> Halting:
    """The model's inference rule; without `halting.max_steps`, reflection stops at its training depth."""
    return Halting(**{**cfg.halting.model_dump(), "max_steps": cfg.halting.max_steps or cfg.train_steps})


def loss_weights(cfg: LossConfig) -> LossWeights:
    """The nn-level loss weights from the config section."""
    return LossWeights(**cfg.model_dump())
