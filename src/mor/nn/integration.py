"""Integrator: combines the selected experts' answers for each input and measures how much they disagree.

Modes: `gate` (classic MoE: router weights), `confidence` (router weight × critic confidence, renormalised),
`attention` (learned: a query from the input scores each expert's answer, added to the log router weight).
Class answers (logits) are mixed as probabilities, with weights rescaled to sum to 1 so the mixture is a
distribution; values and features as a weighted sum. Conflict is the weighted Jensen–Shannon divergence for
classes and the weighted variance for values.
"""

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from mor.errors import check
from mor.nn.functional import eps, lifted, log_softmax, normalized, softmax
from mor.nn.losses import entropy

Mode = Literal["gate", "confidence", "attention"]


@dataclass
class Integrated:
    """Combined answer (N, ..., D), the weights actually used (N, m) and, when asked, the conflict (N,)."""

    output: Tensor
    weights: Tensor
    conflict: Tensor | None = None


class Integrator(nn.Module):
    """Combines (N, m, ..., D) expert answers with (N, m) weights; `classes` says answers are logits.

    `normalize` rescales gate weights to sum to 1 for value answers too, as a final prediction needs: with one
    slot the raw router probability p would scale the answer to p·f(x). Off, they stay raw, as in an FFN
    feeding a residual (Switch Transformer). `query_dim` (the router's input width) and `dim` (the answer width)
    are needed by `attention` only.
    """

    def __init__(self, mode: Mode = "gate", *, classes: bool = False, query_dim: int | None = None,
                 dim: int | None = None, attention_dim: int = 32, normalize: bool = False):
        super().__init__()
        check(mode in ("gate", "confidence", "attention"),
              f"Integrator: mode must be 'gate', 'confidence' or 'attention', got {mode!r}")
        check(mode != "attention" or (query_dim and dim),
              "Integrator: mode 'attention' needs query_dim (input width) and dim (answer width)")
        self.mode, self.classes, self.normalize = mode, classes, normalize
        if mode == "attention":
            self.query = nn.Linear(query_dim, attention_dim, bias=False)
            self.key = nn.Linear(dim, attention_dim, bias=False)

    def weigh(self, weights: Tensor, mask: Tensor, confidence: Tensor | None = None,
              query: Tensor | None = None, answers: Tensor | None = None) -> Tensor:
        """The integration weights (N, m) for this mode; unused slots get 0."""
        if self.mode == "gate":
            w = weights * mask
            return normalized(w) if self.normalize and not self.classes else w
        if self.mode == "confidence":
            w, gate = weights * confidence * mask, weights * mask
            return normalized(torch.where(w.sum(-1, keepdim=True) > 0, w, gate))  # every critic at 0: the gate
        keys = self.key(answers.flatten(2, -2).mean(2) if answers.dim() > 3 else answers)
        scores = (keys @ self.query(query).unsqueeze(-1)).squeeze(-1) / keys.shape[-1] ** 0.5
        scores = scores + torch.log(weights.clamp_min(eps(weights.dtype)))
        # finite fill, then the mask: an input whose slots were all dropped (capacity) gets 0 weights, not NaN
        return softmax(scores.masked_fill(~mask, torch.finfo(scores.dtype).min)) * mask

    def forward(self, answers: Tensor, weights: Tensor, mask: Tensor, confidence: Tensor | None = None,
                query: Tensor | None = None, with_conflict: bool = False) -> Integrated:
        w = self.weigh(weights, mask, confidence, query, answers)
        wb = w.view(*w.shape, *([1] * (answers.dim() - 2)))
        output = mixture_log_probs(answers, lifted(w).view_as(wb)) if self.classes else (wb * answers).sum(1)
        return Integrated(output=output, weights=w,
                          conflict=self.conflict(answers.detach(), w.detach()) if with_conflict else None)

    def conflict(self, answers: Tensor, weights: Tensor) -> Tensor:
        """Disagreement among the selected experts per input (N,): 0 when they agree."""
        return conflict(answers, weights, self.classes)


def mixture_log_probs(answers: Tensor, weights: Tensor) -> Tensor:
    """log Σ_m share_m · softmax(answers_m). Where the mixture underflows the log's guard (a class every expert all
    but rules out) it is taken in log space, so that class keeps its true log-probability and gradient, which the
    clamped log cut off; elsewhere the direct form, bit for bit as before. `weights` (N, m, 1…) broadcast over the
    answers (N, m, …, D); an input whose weights are all 0 (every slot dropped) gets log(eps) for every class."""
    total = weights.sum(1, keepdim=True).clamp_min(eps(weights.dtype))
    mixed = (weights * softmax(answers)).sum(1) / total.squeeze(1)
    direct = torch.log(mixed.clamp_min(eps(mixed.dtype)))
    share = weights / total
    used = share > 0
    anything = used.any(1, keepdim=True)
    log_share = torch.where(used, share, 1.0).log().masked_fill(~used, float("-inf"))
    exact = torch.logsumexp(torch.where(anything, log_share, 0.0) + log_softmax(answers), dim=1)
    return torch.where((mixed > eps(mixed.dtype)) | ~anything.squeeze(1), direct, exact)


def conflict(answers: Tensor, weights: Tensor, classes: bool) -> Tensor:
    """Weighted Jensen–Shannon divergence (nats) of class answers, or weighted variance of values.

    `answers` (N, m, ..., D), `weights` (N, m) summing to 1 over used slots; the result is averaged
    over positions, (N,). Computed in float32 whatever the answers' dtype: bf16 weights sum to 1 ± 2⁻⁸, which alone
    would give identical experts a conflict of that size.
    """
    w = normalized(weights.float())
    wb = w.view(*w.shape, *([1] * (answers.dim() - 2)))
    if classes:
        probs = softmax(answers.float())
        mixed = (wb * probs).sum(1)
        per_position = entropy(mixed) - (wb[..., 0] * entropy(probs)).sum(1)
    else:
        answers = answers.float()
        mean = (wb * answers).sum(1, keepdim=True)
        per_position = (wb * (answers - mean).square()).sum(1).mean(-1)
    per_input = per_position.flatten(1).mean(-1) if per_position.dim() > 1 else per_position  # flatten: N may be 0
    return per_input.clamp_min(0)
