"""A mixture of regimes: inputs in different regions of the space follow different nonlinear functions, the
classic case for routing each input to the expert of its regime. The regime is hidden from the model and
given to evaluation, so reports can show which expert each regime goes to."""

import math
from collections.abc import Callable

import torch
from torch import Tensor

from mor.data.base import GroupedTask, Kind, check_seed
from mor.errors import check

FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "sine": lambda t: torch.sin(3 * t),
    "square": lambda t: t.square() - 1,
    "linear": lambda t: -t,
    "step": lambda t: torch.tanh(5 * t),
    "bump": lambda t: 2 * torch.exp(-2 * t.square()) - 1,
    "cosine": lambda t: torch.cos(3 * t),
}


class Regimes(GroupedTask):
    """Inputs x ~ N(0, I) in `dim` dimensions; regime r = the sector of the angle of (x₀, x₁) among `regimes`
    equal sectors; value = FUNCTIONS[groups[r]](x · directions[r]).

    Regression: target (N, 1) = value + `noise`·ε. Classification: label (N,) = whether value + `noise`·ε > 0.
    `seed` fixes the directions (the task itself); batches are drawn from the generator given to `batch`.
    There is no size knob.
    """

    name = "regimes"
    sequence = False

    def __init__(self, dim: int = 4, regimes: int = 4, noise: float = 0.05, kind: Kind = "regression",
                 seed: int = 0):
        check(isinstance(dim, int) and dim >= 2, f"data.dim: expected an integer >= 2, got {dim!r}")
        check(isinstance(regimes, int) and 1 <= regimes <= len(FUNCTIONS),
              f"data.regimes: expected an integer in [1, {len(FUNCTIONS)}], got {regimes!r}")
        check(isinstance(noise, int | float) and math.isfinite(noise) and noise >= 0,
              f"data.noise: expected a finite number >= 0, got {noise!r}")
        check(kind in ("classification", "regression"),
              f"data.kind: expected 'classification' or 'regression', got {kind!r}")
        self.in_dim, self.kind, self.noise = dim, kind, float(noise)
        self.out_dim = 2 if kind == "classification" else 1
        self.groups = tuple(list(FUNCTIONS)[:regimes])
        directions = torch.randn(regimes, dim, generator=torch.Generator().manual_seed(check_seed(seed)))
        self.directions = directions / directions.norm(dim=1, keepdim=True)

    def regime(self, x: Tensor) -> Tensor:
        """The regime of each input (N, dim): which of the equal angular sectors (x₀, x₁) falls in, (N,)."""
        angle = torch.atan2(x[:, 1], x[:, 0]) + math.pi
        return (angle / (2 * math.pi) * len(self.groups)).long().clamp(max=len(self.groups) - 1)

    def value(self, x: Tensor) -> Tensor:
        """The noise-free value of each input (N, dim) under its own regime's function, (N,)."""
        regime, out = self.regime(x), x.new_zeros(x.shape[0])
        for r, name in enumerate(self.groups):
            rows = regime == r
            out[rows] = FUNCTIONS[name](x[rows] @ self.directions[r])
        return out

    def grouped_batch(self, n: int, generator: torch.Generator, size: int | None = None
                      ) -> tuple[Tensor, Tensor, Tensor]:
        check(size is None, f"regimes: has no size knob; leave size unset, got {size!r}")
        x = torch.randn(n, self.in_dim, generator=generator)
        noisy = self.value(x) + self.noise * torch.randn(n, generator=generator)
        y = (noisy > 0).long() if self.kind == "classification" else noisy[:, None]
        return x, y, self.regime(x)
