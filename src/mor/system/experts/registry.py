"""Experts from plain config: `build_expert({"name": ..., "kind": ..., ...})` validates a spec and makes the adapter.

Each kind's options are a pydantic model here, strict (no silent type coercion) and closed (unknown keys are
refused); an error is one line naming the field, e.g. `experts[2].base_url: required; add it`. Options left out
take the adapter's own defaults. An adapter's module is imported only when a spec of its kind is built, so heavy
libraries (transformers, torch, sympy, bm25s) load only when used.
"""

import importlib
import inspect
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from mor.config import validate
from mor.errors import ConfigError, MorError, check, first_line
from mor.system.experts.base import Expert, ExpertInfo, Hints

IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class HintsSpec(_Strict):
    """See `Hints`: keywords, regex patterns and example requests that signal a fit."""

    keywords: list[str] = []
    patterns: list[str] = []
    examples: list[str] = []


class ExpertSpec(_Strict):
    """What every expert has (see `ExpertInfo`); subclasses add one adapter's options and name it in `adapter`."""

    adapter: ClassVar[str]
    name: str
    kind: str
    description: str = ""
    capabilities: list[str] = []
    cost_per_call: float = Field(0.0, ge=0, allow_inf_nan=False)
    max_concurrency: int = Field(4, ge=1)
    timeout_s: float = Field(30.0, gt=0, allow_inf_nan=False)
    hints: HintsSpec = HintsSpec()

    def info(self) -> ExpertInfo:
        """What the router knows about this expert, from the common fields."""
        common = self.model_dump(include=set(ExpertSpec.model_fields) - {"kind", "hints"})
        return ExpertInfo(**common, hints=Hints(**self.hints.model_dump()))

    def options(self, where: str) -> dict[str, Any]:
        """The adapter's keyword arguments: this kind's own fields that were set."""
        return self.model_dump(exclude=set(ExpertSpec.model_fields), exclude_none=True)

    def build(self, where: str) -> Expert:
        """The adapter, imported now and made with `info()` and `options()`."""
        return load_object(self.adapter, f"{where}.kind")(self.info(), **self.options(where))


class OpenAISpec(ExpertSpec):
    adapter = "mor.system.experts.openai_chat:OpenAIChatExpert"
    kind: Literal["openai"]
    base_url: str
    model: str
    api_key_env: str | None = None
    retries: int | None = Field(None, ge=0)
    backoff_s: float | None = Field(None, ge=0, allow_inf_nan=False)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    max_tokens: int | None = Field(None, ge=1)
    price_in: float | None = Field(None, ge=0, allow_inf_nan=False)
    price_out: float | None = Field(None, ge=0, allow_inf_nan=False)
    logprobs: bool | None = None
    default_confidence: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)


class TransformersSpec(ExpertSpec):
    adapter = "mor.system.experts.transformers_lm:TransformersExpert"
    kind: Literal["transformers"]
    path: str
    max_new_tokens: int | None = Field(None, ge=1)
    device: str | None = None


class CallableSpec(ExpertSpec):
    adapter = "mor.system.experts.callable:CallableExpert"
    kind: Literal["callable"]
    function: str = Field(description="'package.module:attribute' of the function")
    default_confidence: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)

    def options(self, where: str) -> dict[str, Any]:
        options = super().options(where)
        return options | {"fn": load_object(options.pop("function"), f"{where}.function")}


class SklearnSpec(ExpertSpec):
    adapter = "mor.system.experts.predictor:SklearnExpert"
    kind: Literal["sklearn"]
    estimator: str = Field(description="import path of a fitted estimator, or of a function returning one")
    feature_fn: str | None = Field(None, description="import path of a function: question text → features")
    default_confidence: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)

    def options(self, where: str) -> dict[str, Any]:
        options = super().options(where)
        estimator = load_object(options["estimator"], f"{where}.estimator")
        if inspect.isfunction(estimator):
            try:
                estimator = estimator()
            except Exception as err:  # the user's factory: say which field's code failed, in one line
                raise ConfigError(f"{where}.estimator: {options['estimator']} raised {type(err).__name__}: "
                                  f"{first_line(err)}") from None
        options["estimator"] = estimator
        if "feature_fn" in options:
            path = options["feature_fn"]
            options["feature_fn"] = load_object(path, f"{where}.feature_fn")
            check(callable(options["feature_fn"]), f"{where}.feature_fn: {path!r} is not a function; give one that "
                                                   f"turns the question text into features")
        return options


class MorSpec(ExpertSpec):
    adapter = "mor.system.experts.predictor:MorModelExpert"
    kind: Literal["mor"]
    checkpoint: str
    default_confidence: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)


class MathSpec(ExpertSpec):
    adapter = "mor.system.experts.math_tool:MathExpert"
    kind: Literal["math"]
    time_limit_s: float | None = Field(None, gt=0, allow_inf_nan=False)
    max_chars: int | None = Field(None, ge=1)
    max_exponent: int | None = Field(None, ge=1)
    max_degree: int | None = Field(None, ge=1)
    max_size: int | None = Field(None, ge=1)
    max_terms: int | None = Field(None, ge=1)


class RetrievalSpec(ExpertSpec):
    adapter = "mor.system.experts.retrieval:RetrievalExpert"
    kind: Literal["retrieval"]
    folder: str
    top_k: int | None = Field(None, ge=1)
    stopwords: str | None = None


SPECS: dict[str, type[ExpertSpec]] = {"openai": OpenAISpec, "transformers": TransformersSpec,
                                      "callable": CallableSpec, "sklearn": SklearnSpec, "mor": MorSpec,
                                      "math": MathSpec, "retrieval": RetrievalSpec}


def parse_spec(spec: dict[str, Any], where: str = "expert") -> ExpertSpec:
    """`spec` validated as its kind's spec; `where` names it in errors (e.g. `experts[2]`)."""
    check(isinstance(spec, dict), f"{where}: expected a mapping with 'name' and 'kind', got {type(spec).__name__}")
    kind = spec.get("kind")
    check(isinstance(kind, str) and kind in SPECS, f"{where}.kind: must be one of {', '.join(SPECS)}, got {kind!r}")
    return validate(SPECS[kind], spec, "", prefix=(where,))


@contextmanager
def located(where: str) -> Iterator[None]:
    """Errors raised inside say where in the config they come from, once (adapters name only the expert)."""
    try:
        yield
    except MorError as err:
        raise type(err)(str(err) if str(err).startswith(where) else f"{where}: {err}") from None


def build_expert(spec: dict[str, Any], where: str = "expert") -> Expert:
    """The expert `spec` describes; `where` names it in errors (e.g. `experts[2]`)."""
    parsed = parse_spec(spec, where)
    with located(where):
        return parsed.build(where)


def build_experts(specs: list[dict[str, Any]], where: str = "experts") -> list[Expert]:
    """Every expert of a config's list, refusing two with the same name."""
    experts: list[Expert] = []
    for i, spec in enumerate(_listed(specs, where)):
        experts.append(_new(build_expert(spec, f"{where}[{i}]"), experts, f"{where}[{i}]"))
    return experts


def declared_experts(specs: list[dict[str, Any]], where: str = "experts") -> list[ExpertInfo]:
    """What every expert of a config's list declares to the router, validated as `build_experts` validates it but
    without making any adapter: routing alone reads no API key and loads no model."""
    infos: list[ExpertInfo] = []
    for i, spec in enumerate(_listed(specs, where)):
        parsed = parse_spec(spec, f"{where}[{i}]")
        with located(f"{where}[{i}]"):
            infos.append(_new(parsed.info(), infos, f"{where}[{i}]"))
    return infos


def _listed(specs: Any, where: str) -> list[dict[str, Any]]:
    check(isinstance(specs, list), f"{where}: expected a list of expert specs, got {type(specs).__name__}")
    return specs


def _new(expert: Any, before: list, where: str) -> Any:
    """`expert` (anything with a `name`), refused when one of `before` has its name."""
    check(all(e.name != expert.name for e in before),
          f"{where}.name: {expert.name!r} is already used; give each expert its own name")
    return expert


def load_object(path: str, where: str) -> Any:
    """The object at import path 'package.module:attribute' (attribute may be dotted)."""
    check(bool(IMPORT_PATH.fullmatch(path)),
          f"{where}: {path!r} is not an import path; give 'package.module:attribute'")
    module, _, attribute = path.partition(":")
    try:
        found = importlib.import_module(module)
        for part in attribute.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"{where}: cannot import {path!r} ({type(err).__name__}: {err}); give an importable "
                          f"'package.module:attribute'") from None
    return found
