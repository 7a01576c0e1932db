"""ReflectionExpert: an expert that answers, judges its answer, and refines it until it is confident.

State z₀ = encode(x); each step z ← norm(z + cell(z + encode(x) + feedback(previous answer))), so the input
is re-injected every step. An answer head and a judge head read z: the judge gives a halting logit
(PonderNet) and a critic logit (is this answer right?). Training runs a fixed number of steps and returns
every step; inference halts each input on its own and drops it from the active batch, so compute follows
the depth actually used, and may run past the training depth.
"""

import contextlib
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from mor.errors import ShapeError, check
from mor.nn.functional import softmax
from mor.nn.losses import halting_distribution


@dataclass(frozen=True)
class Halting:
    """When an input stops reflecting at inference.

    `threshold`: critic confidence ≥ τ (None: never). `stable_steps`: the answer stayed the same for that
    many consecutive steps (None: never). `combine`: stop when any of the two fires, or only when all of them
    hold — a critic that is over-confident on inputs longer than its training ones then waits for the answer
    to settle. `max_steps`: always stop there; it may exceed the training depth.
    """

    max_steps: int = 16
    threshold: float | None = None
    stable_steps: int | None = None
    combine: Literal["any", "all"] = "any"

    def __post_init__(self) -> None:
        check(_count(self.max_steps) and self.max_steps >= 1, f"Halting.max_steps must be an integer >= 1, got "
                                                              f"{self.max_steps!r}")
        check(self.threshold is None or 0.0 < self.threshold <= 1.0,
              f"Halting.threshold must be in (0, 1] or None, got {self.threshold}")
        check(self.stable_steps is None or (_count(self.stable_steps) and self.stable_steps >= 1),
              f"Halting.stable_steps must be an integer >= 1 or None, got {self.stable_steps!r}")
        check(self.combine in ("any", "all"), f"Halting.combine must be 'any' or 'all', got {self.combine!r}")
        check(self.combine == "any" or (self.threshold is not None and self.stable_steps is not None),
              "Halting.combine='all' needs both a threshold and stable_steps; set both, or use combine='any'")

    def done(self, confidence: Tensor, unchanged: Tensor | None) -> Tensor | None:
        """Which inputs stop now, from their confidence and unchanged-answer counts; None: the rule only counts."""
        done = confidence >= self.threshold if self.threshold is not None else None
        if unchanged is None:
            return done
        stable = unchanged >= self.stable_steps
        if done is None:
            return stable
        return done & stable if self.combine == "all" else done | stable


@dataclass
class Reflection:
    """What an expert's reflection produced for N inputs; the per-step fields are filled in training only."""

    answer: Tensor  # (N, ..., D) halted answer (inference) or halting-weighted expected answer (training)
    steps: Tensor  # (N,) steps each input used (in training: the warm-up steps too, every step the cell ran)
    confidence: Tensor  # (N,) critic confidence of the answer, in [0, 1]
    answers: Tensor | None = None  # (T, N, ..., D) answer after every step
    halt_logits: Tensor | None = None  # (T, N) PonderNet halting logits
    critic_logits: Tensor | None = None  # (T, N, ...) critic logits per position

    @property
    def halting_distribution(self) -> Tensor:
        """p_t: probability of halting at step t, (T, N)."""
        return halting_distribution(self.halt_logits)


class ReflectionExpert(nn.Module):
    """An expert that reflects with any refine `cell` mapping (n, ..., dim) → (n, ..., dim).

    Inputs are (N, in_dim) vectors or (N, L, in_dim) sequences; answers are (N, out_dim) or
    (N, L, out_dim). `classes=True` means answers are logits (stability compares the argmax);
    otherwise values (stability compares within `stable_tol`). The halting bias starts negative
    (`halt_bias`), since a zero or positive start makes PonderNet halt at once and never learn to think.
    `state_norm` layer-normalises the state after every step, so it cannot drift in scale over long runs:
    without it, models overthink (accuracy falls past the training depth) and extrapolate far worse.
    """

    def __init__(self, cell: nn.Module, in_dim: int, out_dim: int, *, dim: int, train_steps: int = 8,
                 halting: Halting | None = None, feedback: bool = True, classes: bool = True,
                 stable_tol: float = 1e-3, halt_bias: float = -3.0, state_norm: bool = True):
        super().__init__()
        check(_count(train_steps) and train_steps >= 1,
              f"ReflectionExpert: train_steps must be an integer >= 1, got {train_steps!r}")
        check(halt_bias < 0, f"ReflectionExpert: halt_bias must be negative (PonderNet does not train from "
                             f"a zero or positive start), got {halt_bias}")
        self.cell, self.in_dim, self.out_dim, self.dim = cell, in_dim, out_dim, dim
        self.train_steps, self.classes, self.stable_tol = train_steps, classes, stable_tol
        self.halting = halting or Halting(max_steps=train_steps)
        self.encode = nn.Linear(in_dim, dim)
        self.feedback = nn.Linear(out_dim, dim, bias=False) if feedback else None
        self.head = nn.Linear(dim, out_dim)
        self.judge = nn.Linear(dim, 2)
        self.norm = nn.LayerNorm(dim) if state_norm else nn.Identity()
        with torch.no_grad():
            self.judge.bias.copy_(torch.tensor([halt_bias, 0.0]))

    def step(self, z: Tensor, xe: Tensor, answer: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """One reflection step: returns the new state, its answer and its judge logits (halt, critic)."""
        h = z + xe
        if self.feedback is not None and answer is not None:  # class answers are fed back as probabilities
            h = h + self.feedback(softmax(answer) if self.classes else answer)
        z = self.norm(z + self.cell(h))
        return z, self.head(z), self.judge(z)

    def forward(self, x: Tensor, halting: Halting | None = None, warmup: int = 0,
                steps: int | None = None) -> Reflection:
        """Reflect on `x`: adaptive halting in eval mode; in training, `warmup` steps without gradient
        (progressive training: learn to improve from any intermediate state), then `steps` (default
        `train_steps`) recorded steps."""
        self._check_input(x)
        check(steps is None or steps >= 1, f"ReflectionExpert: steps must be >= 1 (or None for train_steps), "
                                           f"got {steps}")
        if self.training:
            return self._unroll(x, self.train_steps if steps is None else steps, warmup)
        return self._reflect(x, halting or self.halting)

    def _unroll(self, x: Tensor, steps: int, warmup: int = 0) -> Reflection:
        xe = self.encode(x)
        z, answer, answers, judged = xe, None, [], []
        if warmup:
            with torch.no_grad():
                for _ in range(warmup):
                    z, answer, _ = self.step(z, xe, answer)
        for _ in range(steps):
            z, answer, j = self.step(z, xe, answer)
            answers.append(answer)
            judged.append(j)
        answers_t, judged_t = torch.stack(answers), torch.stack(judged)
        halt_logits = judged_t[..., 0].reshape(steps, x.shape[0], -1).mean(-1)
        critic_logits = judged_t[..., 1]
        p = halting_distribution(halt_logits).view(*halt_logits.shape, *([1] * (answers_t.dim() - 2)))
        return Reflection(answer=(p * answers_t).sum(0),
                          steps=torch.full((x.shape[0],), warmup + steps, dtype=torch.long, device=x.device),
                          confidence=self._confidence(critic_logits[-1]).detach(), answers=answers_t,
                          halt_logits=halt_logits, critic_logits=critic_logits)

    @torch.no_grad()
    def trajectory(self, x: Tensor, depths: list[int], rules: Sequence[Halting] = ()
                   ) -> tuple[Tensor, Tensor, list[Reflection]]:
        """Answers (D, N, ..., out) and confidences (D, N) after each of `depths` steps, and what each of `rules`
        would answer, all from one run without inputs leaving the batch: a fixed-depth sweep and every halting
        rule for the price of the longest of them (the adaptive run's answers, up to rounding)."""
        depths = list(depths)
        check(bool(depths) and min(depths) >= 1, f"ReflectionExpert.trajectory: depths must be >= 1, got {depths}")
        self._check_input(x)
        xe = self.encode(x)
        z, answer, wanted, answers, confidences = xe, None, set(depths), {}, {}
        watched = [_Watch(rule, x.shape[0]) for rule in rules]
        for t in range(1, max(depths + [rule.max_steps for rule in rules]) + 1):
            z, new_answer, j = self.step(z, xe, answer)
            conf = self._confidence(j[..., 1])
            running = [watch for watch in watched if not watch.finished]
            counting = answer is not None and any(watch.rule.stable_steps for watch in running)
            same = self._same_answer(new_answer, answer) if counting else None
            for watch in running:
                watch.see(t, new_answer, conf, same)
            answer = new_answer
            if t in wanted:
                answers[t], confidences[t] = answer, conf
            if t >= max(depths) and not running:
                break
        return (torch.stack([answers[d] for d in depths]), torch.stack([confidences[d] for d in depths]),
                [Reflection(answer=w.final, steps=w.steps, confidence=w.confidence) for w in watched])

    def _check_input(self, x: Tensor) -> None:
        if x.dim() < 2 or x.shape[-1] != self.in_dim or 0 in x.shape:
            raise ShapeError(f"ReflectionExpert: expected inputs (N, ..., {self.in_dim}) with N >= 1 and no empty "
                             f"dimension, got {tuple(x.shape)}")

    @staticmethod
    def _confidence(critic_logits: Tensor) -> Tensor:
        """An input's confidence is that of its least confident position: sigmoid(min critic logit)."""
        return torch.sigmoid(critic_logits.reshape(critic_logits.shape[0], -1).amin(-1))

    def _same_answer(self, a: Tensor, b: Tensor) -> Tensor:
        same = a.argmax(-1) == b.argmax(-1) if self.classes else (a - b).abs() <= self.stable_tol
        return same.reshape(a.shape[0], -1).all(-1)

    @torch.no_grad()
    def _reflect(self, x: Tensor, rule: Halting) -> Reflection:
        n = x.shape[0]
        xe = self.encode(x)
        z, answer, idx = xe, None, torch.arange(n, device=x.device)
        unchanged = torch.zeros(n, dtype=torch.long, device=x.device) if rule.stable_steps else None
        final = confidence = None
        steps = torch.zeros(n, dtype=torch.long, device=x.device)
        for t in range(1, rule.max_steps + 1):
            z, new_answer, j = self.step(z, xe, answer)
            conf = self._confidence(j[..., 1])
            if final is None:  # the answers' dtype, which autocast may have lowered
                final, confidence = new_answer.new_empty(n, *new_answer.shape[1:]), conf.new_zeros(n)
            if unchanged is not None and answer is not None:
                unchanged = torch.where(self._same_answer(new_answer, answer), unchanged + 1, 0)
            done = rule.done(conf, unchanged)
            answer = new_answer
            if t == rule.max_steps:
                final[idx], steps[idx], confidence[idx] = answer, t, conf
                break
            halted = done.nonzero().squeeze(1) if done is not None else idx[:0]
            if halted.numel() == 0:
                continue
            out = idx[halted]
            final[out], steps[out], confidence[out] = answer[halted], t, conf[halted]
            if halted.numel() == idx.numel():
                break
            keep = (~done).nonzero().squeeze(1)  # halted inputs leave the active batch
            idx, z, xe, answer = (v.index_select(0, keep) for v in (idx, z, xe, answer))
            unchanged = unchanged.index_select(0, keep) if unchanged is not None else None
        return Reflection(answer=final, steps=steps, confidence=confidence)


def _count(value: object) -> bool:
    """Whether `value` is a whole number (an int or a NumPy integer, not a bool or a float)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class _Watch:
    """One halting rule applied along a trajectory: inputs stay in the batch, and each one's answer, step and
    confidence are recorded at the step the rule stops it (as the adaptive run would)."""

    def __init__(self, rule: Halting, n: int) -> None:
        self.rule, self.n, self.finished = rule, n, False
        self.final = self.steps = self.confidence = self.unchanged = None

    def see(self, t: int, answer: Tensor, confidence: Tensor, same: Tensor | None) -> None:
        """Step `t`'s answers and confidences (all inputs); `same`: whether each answer equals the previous one."""
        if self.final is None:  # allocated at the first step, in the answers' dtype (autocast may lower it)
            self.final, self.confidence = answer.new_zeros(self.n, *answer.shape[1:]), confidence.new_zeros(self.n)
            self.steps = torch.zeros(self.n, dtype=torch.long, device=answer.device)
            self.unchanged = torch.zeros_like(self.steps) if self.rule.stable_steps else None
        running = self.steps == 0
        if self.unchanged is not None and same is not None:
            self.unchanged = torch.where(same, self.unchanged + 1, 0)
        done = self.rule.done(confidence, self.unchanged)
        stop = running if t >= self.rule.max_steps else running & done if done is not None else None
        if stop is not None and bool(stop.any()):
            self.final[stop], self.steps[stop], self.confidence[stop] = answer[stop], t, confidence[stop]
            self.finished = bool((self.steps > 0).all())


@contextlib.contextmanager
def fixed_depth(model: nn.Module, depth: int) -> Iterator[None]:
    """Inside the block every ReflectionExpert in `model` runs exactly `depth` steps; their own rules come back
    after. How a model whose experts sit deep inside it (a token model's FFN) is scored at a chosen depth."""
    experts = [m for m in model.modules() if isinstance(m, ReflectionExpert)]
    own = [expert.halting for expert in experts]
    for expert in experts:
        expert.halting = Halting(max_steps=depth)
    try:
        yield
    finally:
        for expert, rule in zip(experts, own, strict=True):
            expert.halting = rule
