"""Auxiliary losses of mor.nn: router balance and z-loss, PonderNet halting, critic calibration, consistency."""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mor.errors import ShapeError
from mor.nn.functional import eps, log_softmax, softmax


def load_balance_loss(probs: Tensor, counts: Tensor) -> Tensor:
    """Switch-Transformer balance loss E·Σ f_e·P_e: 1.0 when routing is uniform, larger when it collapses.

    `probs` (N, E) are router probabilities (rows summing to 1), `counts` (E,) the assignments per expert. In float32
    whatever their dtype, as the z-loss: in bfloat16 the loss moves in steps of 2⁻⁷ near 1 and reads flat.
    """
    probs = probs.float()
    if probs.shape[0] == 0:  # no inputs (zero tokens): nothing to balance, and a mean over none is NaN
        return probs.sum()
    num_experts = probs.shape[-1]
    fraction = counts.to(probs.dtype) / counts.sum().clamp_min(1)
    return num_experts * (fraction * probs.mean(0)).sum()


def router_z_loss(logits: Tensor) -> Tensor:
    """ST-MoE z-loss: mean squared log-partition of the router logits; keeps logits small and stable."""
    if logits.numel() == 0:  # no inputs: no logits to keep small, and a mean over none is NaN
        return logits.float().sum()
    return torch.logsumexp(logits.float(), dim=-1).square().mean()


def halting_distribution(halt_logits: Tensor) -> Tensor:
    """PonderNet halting distribution p_t = λ_t·Π_{s<t}(1-λ_s) over (T, N) logits; the last step takes the rest.
    In float32 whatever the logits' dtype: in bfloat16 (autocast) the p_t summed to 1 ± 2 %."""
    lam = torch.sigmoid(halt_logits.float())
    lam = torch.cat([lam[:-1], torch.ones_like(lam[-1:])])
    not_halted = torch.cumprod(torch.cat([torch.ones_like(lam[:1]), 1 - lam[:-1]]), dim=0)
    return lam * not_halted


def geometric_prior(steps: int, halt_prob: float, device: torch.device | str | None = None) -> Tensor:
    """Truncated geometric distribution over `steps` steps with per-step halting probability `halt_prob`."""
    t = torch.arange(steps, device=device, dtype=torch.float32)
    prior = halt_prob * (1 - halt_prob) ** t
    return prior / prior.sum()


def ponder_loss(step_losses: Tensor, halt_logits: Tensor, weights: Tensor | None = None,
                prior_halt_prob: float = 0.2) -> tuple[Tensor, Tensor]:
    """PonderNet objective: expected loss under the halting distribution, and KL(p ‖ geometric prior).

    `step_losses` and `halt_logits` are (T, N); `weights` (N,) weigh inputs (e.g. by router gate).
    Returns (expected loss, KL), each a weighted mean over inputs. Only the expected loss passes gradient to the
    weights: the KL shapes each expert's halting and is no reason to route an input to one expert or another.
    """
    p = halting_distribution(halt_logits)
    weights = torch.ones_like(p[0]) if weights is None else weights
    total = weights.sum().clamp_min(eps(weights.dtype))
    expected = ((p * step_losses).sum(0) * weights).sum() / total
    return expected, (halting_kl(p, prior_halt_prob) * weights.detach()).sum() / total.detach()


def halting_kl(p: Tensor, prior_halt_prob: float = 0.2) -> Tensor:
    """KL(p ‖ geometric prior) of each input's (T, N) halting distribution, (N,): keeps halting from collapsing."""
    prior = geometric_prior(p.shape[0], prior_halt_prob, p.device)[:, None]
    return (p * (torch.log(p.clamp_min(eps(p.dtype))) - torch.log(prior))).sum(0)


def critic_loss(critic_logits: Tensor, correct: Tensor) -> Tensor:
    """Binary cross-entropy of the critic against whether each step's answer was right (its calibration)."""
    return F.binary_cross_entropy_with_logits(critic_logits, correct.to(critic_logits.dtype))


def consistency_loss(answers: Tensor, classification: bool) -> Tensor:
    """Mean change between consecutive step answers (T, N, ..., D): rewards answers that settle."""
    if answers.shape[0] < 2:
        return answers.new_zeros(())
    a = softmax(answers) if classification else answers
    return (a[1:] - a[:-1].detach()).square().sum(-1).mean()


def route_loss(log_prob: Tensor, loss: Tensor) -> Tensor:
    """Score-function term that teaches the router which expert answers each input best.

    `log_prob` (A,) is the router's log-probability of each chosen (input, expert) pair and `loss` (A,) that
    expert's loss on the input; pairs that did better than the batch average are made more likely. It is the
    only task signal a top-1 router gets when answers are mixed with renormalised weights (always 1).
    """
    advantage = (loss - loss.mean()).detach()
    return (advantage * log_prob).mean()


def entropy(probs: Tensor, dim: int = -1) -> Tensor:
    """Shannon entropy in nats along `dim`, treating 0·log 0 as 0."""
    return -(probs * torch.log(probs.clamp_min(eps(probs.dtype, 1e-12)))).sum(dim)


NATS_PER_BIT = math.log(2)


def task_loss(prediction: Tensor, target: Tensor, classes: bool, log_probs: bool = False) -> Tensor:
    """Per-input task loss, (N,): cross-entropy for classes, squared error for values; mean over positions.

    `prediction` is (N, ..., D); class targets are (N, ...) ints, value targets (N, ..., D).
    With `log_probs`, class predictions are already log-probabilities (an integrated mixture).
    """
    if classes:
        flat = prediction.reshape(-1, prediction.shape[-1])
        log_p = flat if log_probs else log_softmax(flat)
        per = F.nll_loss(log_p, target.reshape(-1), reduction="none").view(target.shape)
    else:
        per = (prediction - target).square().mean(-1)
    return per.reshape(per.shape[0], -1).mean(-1)


def holds_ids(t: Tensor) -> bool:
    """Whether `t` can hold class or token ids: an integer dtype, not bool."""
    return not (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool)


def check_target(model: str, x: Tensor, y: Tensor, out_dim: int, classes: bool) -> None:
    """Targets that fit the inputs, else a ShapeError: class ids (N, ...) of an integer type in [0, out_dim), or
    values (N, ..., out_dim). A value target of (N,) for (N, 1) predictions would broadcast to (N, N) silently."""
    expected = tuple(x.shape[:-1]) if classes else (*x.shape[:-1], out_dim)
    if tuple(y.shape) != expected or (classes and not holds_ids(y)):
        what = "integer class ids" if classes else "values"
        raise ShapeError(f"{model}.loss: targets y of shape {tuple(y.shape)} and dtype {y.dtype} do not fit inputs "
                         f"of shape {tuple(x.shape)}; give {what} of shape {expected}")
    if classes and y.numel() and (int(y.min()) < 0 or int(y.max()) >= out_dim):
        raise ShapeError(f"{model}.loss: class ids must be in [0, {out_dim}), got {int(y.min())} to {int(y.max())}; "
                         f"label classes 0 to {out_dim - 1}, or build the model with more outputs")


@dataclass
class LossWeights:
    """How much each term counts in a MoR model's training loss (all logged separately)."""

    task: float = 1.0  # the integrated answer's loss
    ponder: float = 1.0  # experts' expected loss under their halting distribution, gate-weighted
    halting_kl: float = 0.01  # KL of the halting distribution to the geometric prior
    critic: float = 0.1  # critic calibration against correctness
    consistency: float = 0.0  # answers settling from step to step
    route: float = 0.1  # router pushed towards the experts that did better on each input
    load_balance: float = 0.01
    z_loss: float = 0.001
    prior_halt_prob: float = 0.2  # λ_p of the geometric prior
