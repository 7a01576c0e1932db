"""A routing system from one YAML file: experts, router, integration, reflection, breaker and state.

Errors name the field, e.g. `configs/route.yaml: router.top_k: must be >= 1, got 0`.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, model_validator

from mor.config import Strict, read_yaml, validate
from mor.errors import ConfigError, check
from mor.system.experts.base import ExpertInfo
from mor.system.experts.registry import build_experts, declared_experts
from mor.system.head import LabelHead, is_router
from mor.system.router import RouterWeights, Selection, SystemRouter
from mor.system.stats import Breaker
from mor.system.store import StateStore
from mor.system.system import Combine, MoRSystem, Reflection


class WeightsConfig(Strict):
    """See `RouterWeights`; the defaults are its own."""

    head: float = Field(RouterWeights.head, ge=0, allow_inf_nan=False)
    hints: float = Field(RouterWeights.hints, ge=0, allow_inf_nan=False)
    tools: float = Field(RouterWeights.tools, ge=0, allow_inf_nan=False)
    feedback: float = Field(RouterWeights.feedback, ge=0, allow_inf_nan=False)
    load: float = Field(RouterWeights.load, ge=0, allow_inf_nan=False)


class RouterConfig(Strict):
    path: Path | None = Field(None, description="folder written by `mor route train`; none: no trained head")
    weights: WeightsConfig = WeightsConfig()
    top_k: int = Field(Selection.top_k, ge=1)
    threshold: float | None = Field(None, allow_inf_nan=False)
    min_confidence: float = Field(Selection.min_confidence, ge=0, le=1)
    default: str | None = None

    @model_validator(mode="after")
    def _top_k_or_threshold(self) -> "RouterConfig":
        """Threshold routing picks every expert above it, so a top_k given beside it would be silently ignored."""
        if self.threshold is not None and "top_k" in self.model_fields_set:
            raise ValueError("router.top_k: router.threshold picks every expert scoring above it, so top_k is not "
                             "read; remove one of them")
        return self


class IntegrationConfig(Strict):
    mode: str = Combine.mode
    synthesizer: str | None = None
    coefficients: dict[str, Annotated[float, Field(allow_inf_nan=False)]] = Field(
        default_factory=dict, description="stacking: each expert's weight, by expert name")
    intercept: float = Field(0.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _used_by_mode(self) -> "IntegrationConfig":
        """Refuse options the mode never reads: they would be silently ignored."""
        for field, value, mode in (("coefficients", self.coefficients, "stacking"), ("intercept", self.intercept,
                                   "stacking"), ("synthesizer", self.synthesizer, "ensemble")):
            if value and self.mode != mode:
                raise ValueError(f"integration.{field}: only mode {mode!r} uses it, but integration.mode is "
                                 f"{self.mode!r}; set mode: {mode} or remove {field}")
        return self


class ReflectionConfig(Strict):
    rounds: int = Field(Reflection.rounds, ge=0)
    min_confidence: float = Field(Reflection.min_confidence, ge=0, le=1)


class BreakerConfig(Strict):
    failures_to_open: int = Field(Breaker.failures_to_open, ge=1)
    cooldown_s: float = Field(Breaker.cooldown_s, ge=0, allow_inf_nan=False)
    refusals_to_open: int = Field(Breaker.refusals_to_open, ge=1, description="refusals in a row that open the "
                                  "breaker too: an expert that refuses every request is misconfigured")


class StateConfig(Strict):
    path: Path | None = Field(None, description="SQLite file for statistics and feedback; none: in memory only")
    save_every_s: float | None = Field(60.0, gt=0, allow_inf_nan=False,
                                       description="also save statistics this long after a call changes them, "
                                                   "not only on shutdown and feedback; none: only then")


class SystemConfig(Strict):
    experts: list[dict[str, Any]] = Field(min_length=1)
    router: RouterConfig = RouterConfig()
    integration: IntegrationConfig = IntegrationConfig()
    reflection: ReflectionConfig = ReflectionConfig()
    breaker: BreakerConfig = BreakerConfig()
    state: StateConfig = StateConfig()


def load_config(path: str | Path) -> SystemConfig:
    """Read and validate a system YAML file; relative paths inside it are relative to the file."""
    config = validate(SystemConfig, read_yaml(path), str(path))
    base = Path(path).resolve().parent
    for section in (config.router, config.state):
        if section.path is not None and not section.path.is_absolute():
            section.path = base / section.path
    for spec in config.experts:
        for key in ("folder", "path", "checkpoint"):
            if isinstance(spec, dict) and isinstance(spec.get(key), str) and not Path(spec[key]).is_absolute():
                spec[key] = str(base / spec[key])
    return config


def build_system(config: SystemConfig, source: str = "config", head: LabelHead | None = None) -> MoRSystem:
    """The system a config describes; `head` overrides `router.path` (e.g. one just trained)."""
    with _from(source):
        experts = build_experts(config.experts)
        router = build_router(config.router, [e.info for e in experts], head)
        store = StateStore(config.state.path, config.state.save_every_s) if config.state.path else None
        return MoRSystem(experts, router, Combine(**config.integration.model_dump()),
                         Reflection(**config.reflection.model_dump()), Breaker(**config.breaker.model_dump()), store)


def routing_only(config: SystemConfig, source: str = "config") -> SystemRouter:
    """The router a config describes, over what its experts declare: routing calls no expert, so none is built (no
    API key read, no model loaded, nothing to close)."""
    with _from(source):
        return build_router(config.router, declared_experts(config.experts))


def build_router(r: RouterConfig, experts: list[ExpertInfo], head: LabelHead | None = None) -> SystemRouter:
    """The router of section `r` over `experts`; `head` overrides `router.path`."""
    if head is None and r.path is not None:
        check(is_router(r.path), f"router.path: {r.path} holds no trained router; train one first with "
                                 f"`mor route train --data FILE.jsonl --out {r.path}`")
        head = LabelHead.load(r.path)
    check(head is None or not r.min_confidence or r.default is not None,
          f"router.min_confidence: {r.min_confidence} needs router.default, the expert that answers when the "
          "head is less sure; set router.default or remove min_confidence")
    check(head is not None or not r.min_confidence,
          f"router.min_confidence: {r.min_confidence} compares the trained head's probability, but there is no "
          "head; set router.path (or --router) to a trained router, or remove min_confidence")
    names = [e.name for e in experts]
    check(r.default is None or r.default in names, f"router.default: {r.default!r} is not an expert; experts are: "
                                                   f"{', '.join(names)}")
    router = SystemRouter(experts, head, RouterWeights(**r.weights.model_dump()),
                          Selection(r.top_k, r.threshold, r.min_confidence, r.default))
    _check_capabilities(router)
    return router


@contextmanager
def _from(source: str) -> Iterator[None]:
    """Config errors raised inside name the file (`source`) they come from."""
    try:
        yield
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def load_system(path: str | Path, head: LabelHead | None = None) -> MoRSystem:
    return build_system(load_config(path), str(path), head)


def _check_capabilities(router: SystemRouter) -> None:
    """Each expert capability should be a label the head knows, or it can never score on the head."""
    if router.head is None:
        return
    for info in router.experts.values():
        unknown = [c for c in info.capabilities if c not in router.head.labels and c != "tool"]
        check(not unknown, f"experts.{info.name}.capabilities: {unknown} are not router labels "
                           f"({', '.join(router.head.labels)}); use those names")

