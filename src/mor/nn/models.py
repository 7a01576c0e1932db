"""Ready models for whole inputs — vectors (N, in) and sequences (N, L, in) — and the baselines.

`MoRModel` routes each input to k reflection experts and integrates their answers. The baselines every
claim is measured against are the same class with the reflection or the routing taken away
(`moe_baseline`, `reflection_baseline`), and `DenseModel`, a fixed stack of refine cells.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor, nn

from mor.errors import ShapeError, check
from mor.nn.cells import ConvCell, MLPCell, TransformerCell
from mor.nn.diagnostics import Diagnostics
from mor.nn.dispatch import Dispatch
from mor.nn.functional import eps
from mor.nn.integration import Integrator, Mode
from mor.nn.losses import (
    LossWeights,
    check_target,
    consistency_loss,
    critic_loss,
    halting_distribution,
    ponder_loss,
    route_loss,
    task_loss,
)
from mor.nn.reflection import Halting, Reflection, ReflectionExpert
from mor.nn.router import Router, Routing

CellKind = Literal["mlp", "conv", "transformer"]
CELLS: dict[str, Callable[[int], nn.Module]] = {"mlp": MLPCell, "conv": ConvCell, "transformer": TransformerCell}


@dataclass(frozen=True)
class ConflictPolicy:
    """Spend more reflection where experts disagree: inputs whose conflict exceeds `threshold` are run again by
    the same experts under a rule `factor` times stricter — `factor` × the steps (at least one more), `factor` ×
    the unchanged steps a stable answer needs, and the doubt 1 − τ a confidence threshold allows divided by
    `factor` (or τ raised to `confidence`, when set). The run starts afresh, so a rule no stricter than the first
    would stop every input where it stopped before and give the same answer."""

    threshold: float
    factor: float = 2.0
    confidence: float | None = None

    def __post_init__(self) -> None:
        check(self.threshold >= 0, f"ConflictPolicy.threshold: conflict is >= 0, got {self.threshold}")
        check(self.factor > 1, f"ConflictPolicy.factor: must be > 1 to spend more steps, got {self.factor}")
        check(self.confidence is None or 0 < self.confidence <= 1,
              f"ConflictPolicy.confidence: must be in (0, 1] or None, got {self.confidence}")

    def escalate(self, rule: Halting) -> Halting:
        """`rule` with the larger budget, and halting conditions that cannot fire earlier than its own."""
        threshold = rule.threshold
        if threshold is not None:
            threshold = 1 - (1 - threshold) / self.factor if self.confidence is None else \
                max(threshold, self.confidence)
        return replace(rule, max_steps=self._more(rule.max_steps), threshold=threshold,
                       stable_steps=rule.stable_steps and self._more(rule.stable_steps))

    def _more(self, count: int) -> int:
        return max(count + 1, math.ceil(count * self.factor))


@dataclass
class Trajectory:
    """`MoRModel.trajectory`: answers at fixed depths, and each halting rule's outputs with its steps."""

    answers: Tensor  # (D, N, ..., out) integrated answer after each depth
    outputs: list[Tensor]  # per rule: (N, ..., out) integrated answer where the rule halted each expert
    steps: list[Tensor]  # per rule: (N, m) steps each selected expert used (0 in unused slots)
    mask: Tensor  # (N, m) which slots hold a selected expert


class MoRModel(nn.Module):
    """Router → k of E reflection experts → integrator, for classification or regression.

    Sequences are routed as a whole (mean over positions) and answered per position.
    `halting` is the inference rule of every expert; `train_steps` the unrolled depth in training.
    """

    def __init__(self, in_dim: int, out_dim: int, *, num_experts: int = 4, k: int = 2, dim: int = 64,
                 cell: CellKind = "mlp", task: Literal["classification", "regression"] = "classification",
                 train_steps: int = 8, halting: Halting | None = None, mode: Mode = "confidence",
                 conflict_policy: ConflictPolicy | None = None, regression_tol: float = 0.1,
                 progressive: float = 0.0, **router_kwargs):
        super().__init__()
        check(cell in CELLS, f"MoRModel: cell must be one of {sorted(CELLS)}, got {cell!r}")
        check(task in ("classification", "regression"),
              f"MoRModel: task must be 'classification' or 'regression', got {task!r}")
        self.in_dim, self.out_dim, self.classes, self.cell = in_dim, out_dim, task == "classification", cell
        check(0.0 <= progressive <= 1.0, f"MoRModel: progressive must be in [0, 1], got {progressive}")
        check(dim >= 1 and train_steps >= 1, f"MoRModel: dim ({dim}) and train_steps ({train_steps}) must be >= 1")
        self.conflict_policy, self.regression_tol, self.progressive = conflict_policy, regression_tol, progressive
        self.train_steps = train_steps
        self.router = Router(in_dim, num_experts, k, **router_kwargs)
        self.experts = nn.ModuleList(
            ReflectionExpert(CELLS[cell](dim), in_dim, out_dim, dim=dim, train_steps=train_steps,
                             halting=halting or Halting(max_steps=train_steps), classes=self.classes)
            for _ in range(num_experts))
        self.integrator = Integrator(mode, classes=self.classes, query_dim=in_dim, dim=out_dim, normalize=True)

    @property
    def halting(self) -> Halting:
        """The first expert's halting rule; setting it sets every expert's."""
        return self.experts[0].halting

    @halting.setter
    def halting(self, rule: Halting) -> None:
        for expert in self.experts:
            expert.halting = rule

    def forward(self, x: Tensor, halting: Halting | None = None,
                return_diagnostics: bool = False) -> Tensor | tuple[Tensor, Diagnostics]:
        """Answer `x`: logits (log-probabilities of the mixture) for classes, values for regression.

        `halting` overrides every expert's own rule (each expert keeps its own otherwise).
        """
        output, diagnostics, (_, _, routing) = self._run(x, halting)
        if not self.training and self.conflict_policy is not None:
            output, diagnostics = self._escalate(x, output, diagnostics, halting, routing)
        return (output, diagnostics) if return_diagnostics else output

    @torch.no_grad()
    def upcycle(self, source: int = 0) -> None:
        """Copy expert `source` into every expert (sparse upcycling, Komatsuzaki et al. 2022), so all start
        from one solution instead of each having to find its own."""
        state = self.experts[source].state_dict()
        for expert in self.experts:
            expert.load_state_dict(state)

    @torch.no_grad()
    def share_expert_gradients(self) -> None:
        """Give every expert the sum of all experts' gradients. Called after each backward pass on identical
        experts, it keeps them identical: together they train as one expert that sees every input."""
        for params in zip(*(expert.parameters() for expert in self.experts), strict=True):
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                total = torch.stack(grads).sum(0)
                for p in params:
                    p.grad = total.clone()

    def _run(self, x: Tensor, rule: Halting | list[Halting] | None, unroll: tuple[int, int | None] = (0, None),
             routing: Routing | None = None) -> tuple[Tensor, Diagnostics, tuple[Reflection, Dispatch, Routing]]:
        """One routed, reflected and integrated pass; `rule` is every expert's halting rule, or one per expert;
        `routing`, when given, is the decision to follow instead of asking the router."""
        self._check_input(x)
        query = x if x.dim() == 2 else x.mean(1)
        routing = self.router(query) if routing is None else routing
        dispatch = Dispatch.of(routing)
        parts = dispatch.gather(x).split(dispatch.sizes)
        rules = rule if isinstance(rule, list) else [rule] * len(self.experts)
        reflection = _concat([expert(part, own, *unroll) for expert, part, own
                              in zip(self.experts, parts, rules, strict=True) if part.shape[0] > 0])
        confidence = dispatch.scatter(reflection.confidence)
        integrated = self.integrator(dispatch.scatter(reflection.answer), routing.weights, routing.mask,
                                     confidence, query, with_conflict=True)
        diagnostics = Diagnostics(weights=integrated.weights, indices=routing.indices, mask=routing.mask,
                                  steps=dispatch.scatter(reflection.steps), confidence=confidence,
                                  conflict=integrated.conflict, load=routing.load, entropy=routing.entropy,
                                  aux=dict(routing.aux))
        return integrated.output, diagnostics, (reflection, dispatch, routing)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() not in (2, 3) or x.shape[-1] != self.in_dim or 0 in x.shape:
            raise ShapeError(f"MoRModel: expected (N, {self.in_dim}) vectors or (N, L, {self.in_dim}) "
                             f"sequences with N >= 1 (and L >= 1), got {tuple(x.shape)}")
        _check_cell_input("MoRModel", self.cell, x)

    @torch.no_grad()
    def trajectory(self, x: Tensor, depths: list[int], rules: Sequence[Halting] = ()) -> Trajectory:
        """Integrated answers with every expert run to each of `depths` steps, and the outputs under each of
        `rules`, routed once and reflected once to the deepest: accuracy against depth and every halting rule
        for the price of one run (inputs do not leave the batch, so a rule's compute is not saved here)."""
        self._check_input(x)
        query = x if x.dim() == 2 else x.mean(1)
        routing = self.router(query)
        dispatch = Dispatch.of(routing)
        runs = [expert.trajectory(part, depths, rules) for expert, part
                in zip(self.experts, dispatch.gather(x).split(dispatch.sizes), strict=True) if part.shape[0] > 0]
        answers, confidences = (torch.cat(parts, 1) for parts in zip(*(run[:2] for run in runs), strict=True))
        ruled = [_concat(parts) for parts in zip(*(run[2] for run in runs), strict=True)] if rules else []

        def integrate(answer: Tensor, confidence: Tensor) -> Tensor:
            return self.integrator(dispatch.scatter(answer), routing.weights, routing.mask,
                                   dispatch.scatter(confidence), query).output

        return Trajectory(answers=torch.stack([integrate(a, c) for a, c in zip(answers, confidences, strict=True)]),
                          outputs=[integrate(r.answer, r.confidence) for r in ruled],
                          steps=[dispatch.scatter(r.steps) for r in ruled], mask=routing.mask)

    @torch.no_grad()
    def _escalate(self, x: Tensor, output: Tensor, diagnostics: Diagnostics, rule: Halting | None,
                  routing: Routing) -> tuple[Tensor, Diagnostics]:
        """Re-run the high-conflict inputs through the experts `routing` chose for them, with the policy's larger
        budget, and keep those answers; each expert escalates its own halting rule unless `rule` overrides them.
        Routing them again would change their experts wherever a capacity limit counts the batch."""
        hard = diagnostics.conflict > self.conflict_policy.threshold
        if not hard.any():
            return output, diagnostics
        rules = [self.conflict_policy.escalate(rule or expert.halting) for expert in self.experts]
        again, more, _ = self._run(x[hard], rules, routing=routing.rows(hard))
        output = output.clone()
        output[hard] = again
        for name in ("weights", "indices", "mask", "confidence", "conflict"):
            getattr(diagnostics, name)[hard] = getattr(more, name)
        diagnostics.steps[hard] += more.steps
        return output, diagnostics

    def loss(self, x: Tensor, y: Tensor, weights: LossWeights | None = None
             ) -> tuple[Tensor, dict[str, Tensor], Diagnostics]:
        """Training loss (run in train mode) and its named terms, each unweighted, plus diagnostics."""
        w = weights or LossWeights()
        self._check_input(x)
        check_target("MoRModel", x, y, self.out_dim, self.classes)
        output, diagnostics, (reflection, dispatch, routing) = self._run(x, None, self._unroll())
        check(reflection.answers is not None, "MoRModel.loss: call model.train() first; eval mode halts "
                                              "adaptively and keeps no per-step answers to train on")
        target = dispatch.gather(y)
        per_step = torch.stack([task_loss(a, target, self.classes) for a in reflection.answers])
        gate = diagnostics.weights.reshape(-1)[dispatch.slots]
        expected, kl = ponder_loss(per_step, reflection.halt_logits, gate, w.prior_halt_prob)
        pair_loss = (halting_distribution(reflection.halt_logits) * per_step).sum(0)
        chosen = routing.probs.gather(1, routing.indices).reshape(-1)[dispatch.slots]
        parts = {"task": task_loss(output, y, self.classes, log_probs=True).mean(), "ponder": expected,
                 "halting_kl": kl, "route": route_loss(torch.log(chosen.clamp_min(eps(chosen.dtype))), pair_loss),
                 "critic": critic_loss(reflection.critic_logits, self._correct(reflection.answers, target)),
                 "consistency": consistency_loss(reflection.answers, self.classes), **diagnostics.aux}
        total = sum(getattr(w, name) * value for name, value in parts.items())
        return total, {name: value.detach() for name, value in parts.items()}, diagnostics

    def _unroll(self) -> tuple[int, int | None]:
        """(warmup, steps) of this training batch: with probability `progressive`, a random number of steps
        without gradient and a random number with it (Bansal et al. 2022), so no step count is special."""
        if self.train_steps < 2 or float(torch.rand(())) >= self.progressive:
            return 0, None
        warmup = int(torch.randint(1, self.train_steps, ()))
        return warmup, int(torch.randint(1, self.train_steps - warmup + 1, ()))

    def _correct(self, answers: Tensor, target: Tensor) -> Tensor:
        """Whether each step's answer is right, per position: (T, A, ...) booleans."""
        if self.classes:
            return answers.argmax(-1) == target
        return ((answers - target).abs() <= self.regression_tol).all(-1)


def _check_cell_input(model: str, cell: CellKind, x: Tensor) -> None:
    """Conv and transformer cells work over positions: vectors would fail (conv) or attend across the batch."""
    if cell != "mlp" and x.dim() != 3:
        raise ShapeError(f"{model}: cell {cell!r} works over positions and needs sequences (N, L, in), got "
                         f"{tuple(x.shape)}; use cell='mlp' for vectors")


def _concat(runs: list[Reflection]) -> Reflection:
    """Join the reflections of several experts' slices, in dispatch order."""
    def cat(name: str, dim: int = 0) -> Tensor | None:
        values = [getattr(r, name) for r in runs]
        return None if values[0] is None else torch.cat(values, dim)

    return Reflection(answer=cat("answer"), steps=cat("steps"), confidence=cat("confidence"),
                      answers=cat("answers", 1), halt_logits=cat("halt_logits", 1),
                      critic_logits=cat("critic_logits", 1))


def moe_baseline(in_dim: int, out_dim: int, **kwargs) -> MoRModel:
    """Standard mixture of experts: the same model with reflection depth fixed at 1."""
    kwargs.update(train_steps=1, halting=Halting(max_steps=1), mode=kwargs.get("mode", "gate"))
    return MoRModel(in_dim, out_dim, **kwargs)


def reflection_baseline(in_dim: int, out_dim: int, **kwargs) -> MoRModel:
    """A single reflection expert: the same model without routing."""
    kwargs.update(num_experts=1, k=1)
    return MoRModel(in_dim, out_dim, **kwargs)


class DenseModel(nn.Module):
    """Encoder → `depth` distinct residual refine cells → head: no routing, no reflection, no halting."""

    def __init__(self, in_dim: int, out_dim: int, *, dim: int = 64, depth: int = 4, cell: CellKind = "mlp",
                 task: Literal["classification", "regression"] = "classification"):
        super().__init__()
        check(cell in CELLS, f"DenseModel: cell must be one of {sorted(CELLS)}, got {cell!r}")
        check(dim >= 1 and depth >= 1, f"DenseModel: dim ({dim}) and depth ({depth}) must be >= 1")
        self.classes, self.cell = task == "classification", cell
        self.encode, self.head = nn.Linear(in_dim, dim), nn.Linear(dim, out_dim)
        self.cells = nn.ModuleList(CELLS[cell](dim) for _ in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() not in (2, 3) or x.shape[-1] != self.encode.in_features:
            raise ShapeError(f"DenseModel: expected (N, {self.encode.in_features}) vectors or "
                             f"(N, L, {self.encode.in_features}) sequences, got {tuple(x.shape)}")
        _check_cell_input("DenseModel", self.cell, x)
        z = xe = self.encode(x)
        for cell in self.cells:
            z = z + cell(z + xe)
        return self.head(z)

    def loss(self, x: Tensor, y: Tensor, weights: LossWeights | None = None
             ) -> tuple[Tensor, dict[str, Tensor], None]:
        """Task loss only; same signature as `MoRModel.loss` so one training loop serves both."""
        check_target("DenseModel", x, y, self.head.out_features, self.classes)
        task = task_loss(self(x), y, self.classes).mean()
        return task, {"task": task.detach()}, None


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, to match baselines by size."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
