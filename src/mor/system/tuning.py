"""Fine-tune the top layers of the MiniLM encoder on labeled requests, so its embedding separates the labels.

The lower layers stay frozen and their token states are computed once, which makes an epoch cost about a
third of full fine-tuning; tuning only the top layers also keeps the general-purpose features that help on
requests unlike the training ones.
"""

from collections.abc import Callable

import torch
from torch import nn

from mor.system.encoders import MiniLMEncoder


def fine_tune(encoder: MiniLMEncoder, texts: list[str], labels: list[int], n_labels: int, *, layers: int = 2,
              epochs: int = 3, batch_size: int = 32, lr: float = 2e-4, seed: int = 0,
              report: Callable[[str], None] | None = None) -> list[float]:
    """Train the top `layers` layers with a temporary linear head; returns the mean loss of every epoch, and tells
    `report` how far it is (a few lines per run: it takes minutes on a CPU)."""
    torch.manual_seed(seed)
    start = encoder.layers - layers
    encoder.eval()
    with torch.no_grad():
        cached = []
        for i in range(0, len(texts), batch_size):
            batch = encoder.tokens(texts[i:i + batch_size])
            cached.append((encoder.hidden(batch, start), batch["attention_mask"]))
    top = [p for block in encoder.model.encoder.layer[start:] for p in block.parameters()]
    head = nn.Linear(encoder.dim, n_labels)
    steps = epochs * len(cached)
    optimiser = torch.optim.AdamW([{"params": top, "lr": lr}, {"params": head.parameters(), "lr": 10 * lr}],
                                  weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, [lr, 10 * lr], total_steps=steps, pct_start=0.1)
    target = torch.tensor(labels)
    losses = []
    encoder.train()
    for _ in range(epochs):
        total = 0.0
        for b in torch.randperm(len(cached)).tolist():
            hidden, mask = cached[b]
            y = target[b * batch_size: b * batch_size + len(hidden)]
            loss = nn.functional.cross_entropy(head(encoder.finish(hidden, mask, start)), y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item()
        losses.append(total / len(cached))
        if report:
            report(f"fine-tuning MiniLM's top {layers} layer(s): epoch {len(losses)}/{epochs}, loss {losses[-1]:.3f}")
    encoder.eval()
    return losses
