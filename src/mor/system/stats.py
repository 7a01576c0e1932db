"""Per-expert statistics the router and operators read: success rate, latency EWMA, load, errors, cooldown.

A failing expert is put in cooldown (a circuit breaker): after `failures_to_open` consecutive failures it is
skipped for `cooldown_s`, then given one trial call ("half-open"); a success closes the breaker again. A refusal
(the expert could not read that request: the request's fault, not the expert's) is counted apart, in `refusals`,
and neither counts towards the failures nor closes the breaker; but `refusals_to_open` refusals in a row by a remote
endpoint (HTTP 400, 413, 422), with no success between them, open it too, since an endpoint that refuses every
request means the expert is misconfigured (a model name or parameter it rejects). A local expert's refusals (a
question the math tool cannot read) never do: any client could send twenty of them.
"""

import time
from dataclasses import dataclass, field

from mor.errors import check


@dataclass
class Breaker:
    """Circuit-breaker settings shared by all experts of a system."""

    failures_to_open: int = 3
    cooldown_s: float = 30.0
    refusals_to_open: int = 20

    def __post_init__(self) -> None:
        check(self.failures_to_open >= 1, f"breaker.failures_to_open must be ≥ 1, got {self.failures_to_open}")
        check(self.refusals_to_open >= 1, f"breaker.refusals_to_open must be ≥ 1, got {self.refusals_to_open}")
        check(self.cooldown_s >= 0, f"breaker.cooldown_s must be ≥ 0, got {self.cooldown_s}")


@dataclass
class ExpertStats:
    """What one expert has done so far: its calls (`calls`, `errors`, `refusals`, `busy`, latency, breaker state),
    and in `successes`/`failures` the verdicts `feedback()` gave on its answers, which calls alone never move."""

    calls: int = 0
    successes: int = 0
    failures: int = 0
    errors: int = 0
    refusals: int = 0
    busy: int = 0
    latency_ewma_s: float = 0.0
    latency_samples: int = 0
    in_flight: int = 0
    consecutive_failures: int = 0
    consecutive_refusals: int = 0
    open_until: float = 0.0
    last_error: str | None = None
    alpha: float = field(default=0.2, repr=False)

    @property
    def success_rate(self) -> float:
        """Posterior mean of the success probability from feedback (`successes`, `failures`) under a uniform
        Beta(1, 1) prior: 0.5 before any feedback, however many calls succeeded or failed (`reliability` also
        weighs the calls that failed)."""
        return (self.successes + 1) / (self.successes + self.failures + 2)

    @property
    def reliability(self) -> float:
        """The success rate times the share of calls that did not fail: what the ranking orders by, so an expert
        whose calls fail is not ranked first on the strength of its feedback alone."""
        return self.success_rate * (1 - self.errors / self.calls if self.calls else 1.0)

    def available(self, now: float | None = None) -> bool:
        """False while the breaker is open (in cooldown); once it has passed, one trial call at a time."""
        if (time.monotonic() if now is None else now) < self.open_until:
            return False
        return self.open_until == 0.0 or self.in_flight == 0

    def started(self) -> None:
        self.calls += 1
        self.in_flight += 1

    def finished(self, latency_s: float, error: str | None, breaker: Breaker, refused: bool = False,
                 by_endpoint: bool = False, busy: bool = False) -> None:
        """Record a call's outcome; open the breaker after too many consecutive errors. A refusal (`refused`: the
        request was not one the expert can read) is recorded apart, and opens it only in a run of refusals by a
        remote endpoint (`by_endpoint`); a call that never got a slot (`busy`) only in `busy`."""
        self.in_flight -= 1
        if busy:
            self.busy += 1
            return
        self.latency_samples += 1
        self.latency_ewma_s = latency_s if self.latency_samples == 1 else (
            self.alpha * latency_s + (1 - self.alpha) * self.latency_ewma_s)
        if error is None:
            self.close_breaker()
            return
        self.last_error = error
        if refused:
            self.refusals += 1
            self.consecutive_refusals += by_endpoint
            tripped = by_endpoint and self.consecutive_refusals >= breaker.refusals_to_open
        else:
            self.errors += 1
            self.consecutive_failures += 1
            tripped = self.consecutive_failures >= breaker.failures_to_open
        if tripped:
            self.open_until = time.monotonic() + breaker.cooldown_s

    def close_breaker(self) -> None:
        """Forget the failures and refusals in a row, and any cooldown: after a success, or for a new adapter."""
        self.consecutive_failures = self.consecutive_refusals = 0
        self.open_until = 0.0

    def feedback(self, success: bool) -> None:
        """A user's or checker's verdict on an answer this expert gave."""
        if success:
            self.successes += 1
        else:
            self.failures += 1

    def as_dict(self) -> dict:
        return {"calls": self.calls, "successes": self.successes, "failures": self.failures, "errors": self.errors,
                "refusals": self.refusals, "busy": self.busy, "success_rate": round(self.success_rate, 4),
                "reliability": round(self.reliability, 4),
                "latency_ewma_s": self.latency_ewma_s, "in_flight": self.in_flight, "available": self.available(),
                "last_error": self.last_error}
