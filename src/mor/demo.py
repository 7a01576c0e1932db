"""A short built-in example: MoR against a depth-1 mixture of experts on running parity of bit strings.

Running parity needs information from every earlier position, so a depth-1 conv expert (which sees a few
neighbours) cannot solve it, while a reflecting expert spreads information one step at a time. The demo
trains both for the same number of optimiser steps on 8–16-bit strings and evaluates them at 16 and 32 bits.
"""

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from mor.nn import Halting, MoRModel, count_parameters, moe_baseline


def running_parity(n: int, length: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Bit strings as (N, L, 2) — the bit and a constant-1 channel that marks real positions — and labels."""
    bits = torch.randint(0, 2, (n, length), generator=generator)
    return torch.stack([bits.float(), torch.ones(n, length)], -1), bits.cumsum(1) % 2


@dataclass
class Row:
    """One evaluation: model, string length, halting rule, accuracies and mean steps per expert."""

    model: str
    length: int
    rule: str
    position_accuracy: float
    string_accuracy: float
    mean_steps: float


def train(model: MoRModel, steps: int, seed: int, batch: int = 64) -> float:
    """AdamW on strings of 8–16 bits; returns the wall time in seconds."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        x, y = running_parity(batch, int(torch.randint(8, 17, (), generator=gen)), gen)
        loss, _, _ = model.loss(x, y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return time.perf_counter() - start


@torch.no_grad()
def evaluate(name: str, model: MoRModel, length: int, rule: Halting, label: str, seed: int) -> Row:
    model.eval()
    x, y = running_parity(1024, length, torch.Generator().manual_seed(seed + length))
    out, diagnostics = model(x, halting=rule, return_diagnostics=True)
    right = out.argmax(-1) == y
    steps = diagnostics.steps[diagnostics.mask].float().mean().item()
    return Row(name, length, label, right.float().mean().item(), right.all(1).float().mean().item(), steps)


def run(steps: int = 500, seed: int = 0) -> tuple[list[Row], dict[str, int], dict[str, float]]:
    """Train MoR and the depth-1 MoE baseline; evaluate both. Returns rows, parameter counts, train times."""
    torch.manual_seed(seed)
    mor = MoRModel(2, 2, num_experts=2, k=1, dim=32, cell="conv", train_steps=16)
    torch.manual_seed(seed)
    moe = moe_baseline(2, 2, num_experts=2, k=1, dim=32, cell="conv")
    models = {"MoR (reflection)": mor, "MoE (depth 1)": moe}
    times = {name: train(model, steps, seed) for name, model in models.items()}
    rows = [evaluate("MoE (depth 1)", moe, length, Halting(max_steps=1), "depth 1", seed) for length in (16, 32)]
    for length in (16, 32):
        for label, rule in [("16 steps", Halting(max_steps=16)), ("64 steps", Halting(max_steps=64)),
                            ("stable 4, ≤64", Halting(max_steps=64, stable_steps=4))]:
            rows.append(evaluate("MoR (reflection)", mor, length, rule, label, seed))
    return rows, {name: count_parameters(m) for name, m in models.items()}, times
