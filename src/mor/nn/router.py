"""Router: scores the experts for each input and selects some of them (top-k or threshold), load-aware.

Selection is dropless unless a capacity factor is given. Besides the choice, the router returns the
auxiliary losses that keep it balanced (Switch load balance, ST-MoE z-loss) and its statistics.
"""

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import torch
from torch import Tensor, nn

from mor.errors import ShapeError, check
from mor.nn.functional import normalized, softmax
from mor.nn.losses import entropy, load_balance_loss, router_z_loss


@dataclass
class Routing:
    """One routing decision for N inputs over E experts, with m = the most experts an input may use.

    Slots are ordered by score, best first; `mask` marks the slots in use (all of them in top-k mode
    without a capacity limit). The batch statistics (`aux`, `load`, `entropy`) are computed when first read, so an
    inference forward that reads none of them launches none of their kernels.
    """

    weights: Tensor  # (N, m) integration weights of the selected experts, 0 in unused slots
    indices: Tensor  # (N, m) expert ids
    mask: Tensor  # (N, m) bool, slot in use
    probs: Tensor  # (N, E) router probabilities
    logits: Tensor  # (N, E) router logits (noisy in training when noise is on)
    chosen: Tensor | None = None  # (N, m) the router's own choices, before a capacity limit; None: no statistics
    full: bool = False  # every slot in use, known without reading `mask` (top-k without a capacity limit)
    sigmoid: bool = False  # sigmoid scores, which the statistics renormalise into a distribution

    def rows(self, select: Tensor) -> "Routing":
        """The same decision for the inputs `select` picks (a boolean mask or indices); the batch statistics
        (load, entropy, aux losses) are left out, as they describe the whole batch."""
        return Routing(weights=self.weights[select], indices=self.indices[select], mask=self.mask[select],
                       probs=self.probs[select], logits=self.logits[select], full=self.full)

    @cached_property
    def counts(self) -> Tensor:
        """Number of inputs each expert receives, (E,)."""
        return chosen_counts(self.indices, self.mask, self.probs.shape[-1])

    @cached_property
    def aux(self) -> dict[str, Tensor]:
        """Switch load-balance and ST-MoE z-loss of the batch; {} for a `rows` selection."""
        if self.chosen is None:
            return {}
        # the balance loss counts the router's own choices, before a capacity limit drops any (Switch, GShard):
        # counting only the kept ones would hide the imbalance exactly when it costs dropped inputs
        wanted = self.counts if self.mask is self.chosen else chosen_counts(self.indices, self.chosen,
                                                                            self.probs.shape[-1])
        return {"load_balance": load_balance_loss(self._distribution, wanted), "z_loss": router_z_loss(self.logits)}

    @cached_property
    def load(self) -> Tensor | None:
        """(E,) fraction of inputs sent to each expert; None for a `rows` selection."""
        if self.chosen is None:
            return None
        with torch.no_grad():
            return self.counts.float() / max(self.probs.shape[0], 1)

    @cached_property
    def entropy(self) -> Tensor | None:
        """() mean routing entropy in nats; None for a `rows` selection."""
        if self.chosen is None:
            return None
        with torch.no_grad():
            dist = self._distribution
            return entropy(dist.float()).mean() if dist.shape[0] else dist.new_zeros(())

    @cached_property
    def _distribution(self) -> Tensor:
        return self.probs / self.probs.sum(-1, keepdim=True) if self.sigmoid else self.probs


def expert_counts(ids: Tensor, num_experts: int) -> Tensor:
    """How many of `ids` name each expert, (E,). An index_add, not bincount, which reads the largest id back to
    the host and so makes it wait for a GPU."""
    ids = ids.reshape(-1)
    return ids.new_zeros(num_experts).index_add_(0, ids, torch.ones_like(ids))


def chosen_counts(indices: Tensor, mask: Tensor, num_experts: int) -> Tensor:
    """How many of the slots `mask` keeps name each expert, (E,), without a boolean index (another host wait):
    unkept slots count towards an extra expert, dropped."""
    return expert_counts(torch.where(mask, indices, num_experts), num_experts + 1)[:num_experts]


class Router(nn.Module):
    """Linear scorer over experts with softmax or sigmoid scores and top-k or threshold selection.

    Top-k (default): every input uses the `k` best experts. Threshold: an input uses every expert whose
    probability is at least `threshold`, but no fewer than `min_experts` and no more than `max_experts`.
    `noise_std` adds Gaussian noise to the logits in training (noisy gating). `capacity_factor`, when set,
    caps each expert at ceil(factor · assignments / E) inputs, keeping first choices before second ones.
    `normalize` rescales the chosen experts' weights to sum to 1; an input with one choice (top-1, or one expert
    above the threshold) keeps its raw probability (Switch Transformer), since a renormalised single weight is the
    constant 1 and passes no gradient. A capacity limit drops assignments after that, so the kept ones keep their
    shares (GShard) rather than being scaled up.
    """

    def __init__(self, dim: int, num_experts: int, k: int = 2, *,
                 score: Literal["softmax", "sigmoid"] = "softmax", threshold: float | None = None,
                 min_experts: int = 1, max_experts: int | None = None, noise_std: float = 0.0,
                 capacity_factor: float | None = None, normalize: bool = True):
        super().__init__()
        check(num_experts >= 1, f"Router: num_experts must be >= 1, got {num_experts}")
        check(score in ("softmax", "sigmoid"), f"Router: score must be 'softmax' or 'sigmoid', got {score!r}")
        check(threshold is not None or (min_experts == 1 and max_experts is None),
              f"Router: min_experts ({min_experts}) and max_experts ({max_experts}) apply to threshold routing "
              "only; set threshold, or drop them and use k for top-k")
        max_experts = num_experts if max_experts is None else max_experts
        if threshold is None:
            check(1 <= k <= num_experts, f"Router: k must be in [1, num_experts={num_experts}], got {k}")
        else:
            check(0.0 < threshold <= 1.0, f"Router: threshold must be in (0, 1], got {threshold}")
            check(1 <= min_experts <= max_experts <= num_experts,
                  f"Router: need 1 <= min_experts ({min_experts}) <= max_experts ({max_experts}) "
                  f"<= num_experts ({num_experts})")
        check(capacity_factor is None or capacity_factor > 0,
              f"Router: capacity_factor must be > 0 or None, got {capacity_factor}")
        check(noise_std >= 0, f"Router: noise_std must be >= 0, got {noise_std}")
        self.num_experts, self.k, self.score, self.threshold = num_experts, k, score, threshold
        self.min_experts, self.max_experts = min_experts, max_experts
        self.noise_std, self.capacity_factor, self.normalize = noise_std, capacity_factor, normalize
        self.proj = nn.Linear(dim, num_experts, bias=False)

    @property
    def slots(self) -> int:
        """m: the most experts one input can be sent to."""
        return self.k if self.threshold is None else self.max_experts

    def forward(self, x: Tensor) -> Routing:
        if x.dim() != 2 or x.shape[-1] != self.proj.in_features:
            raise ShapeError(f"Router: expected inputs of shape (N, {self.proj.in_features}), got "
                             f"{tuple(x.shape)}; flatten leading dimensions first")
        logits = self.proj(x)
        if self.training and self.noise_std > 0:
            logits = logits + torch.randn_like(logits) * self.noise_std
        probs = softmax(logits) if self.score == "softmax" else torch.sigmoid(logits)
        top, indices = probs.topk(self.slots, dim=-1)
        chosen = self._selection_mask(top)
        mask = chosen & self._within_capacity(indices, chosen) if self.capacity_factor is not None else chosen
        weights = top * chosen
        if self.normalize and self.slots > 1:
            weights = torch.where(chosen.sum(-1, keepdim=True) > 1, normalized(weights), weights)
        weights = weights * mask  # a capacity drop leaves the kept assignments their shares (GShard)
        routing = Routing(weights=weights, indices=indices, mask=mask, probs=probs, logits=logits, chosen=chosen,
                          full=self.threshold is None and self.capacity_factor is None, sigmoid=self.score == "sigmoid")
        if torch.is_grad_enabled():  # the losses' graph is built now, in the forward's grad mode, not when read
            routing.aux  # noqa: B018
        return routing

    def _selection_mask(self, top: Tensor) -> Tensor:
        """Slots in use: all k in top-k mode; in threshold mode those ≥ τ, the first `min_experts` always."""
        if self.threshold is None:
            return torch.ones_like(top, dtype=torch.bool)
        rank = torch.arange(top.shape[-1], device=top.device)
        return (top >= self.threshold) | (rank < self.min_experts)

    def _within_capacity(self, indices: Tensor, mask: Tensor) -> Tensor:
        """Keep at most `capacity` assignments per expert, first choices (slot 0) of all inputs first."""
        n, m = indices.shape
        capacity = math.ceil(self.capacity_factor * int(mask.sum()) / self.num_experts)
        slot_major = torch.where(mask, indices, self.num_experts).t().reshape(-1)
        order = torch.sort(slot_major, stable=True).indices
        starts = torch.searchsorted(slot_major[order], torch.arange(self.num_experts + 1, device=order.device))
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=order.device) - starts[slot_major[order]]
        return (rank < capacity).view(m, n).t()
