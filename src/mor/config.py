"""Shared config plumbing: strict pydantic sections, YAML reading, and pydantic errors as one line.

Every error names the field, the bad value and the fix, e.g. `train.lr: must be > 0, got -1`.
"""

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from mor.errors import ConfigError, MorError

Model = TypeVar("Model", bound=BaseModel)
BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


class Strict(BaseModel):
    """Base for config sections: unknown keys are refused, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def error_line(error: dict) -> str:
    """One pydantic error as `field: what is wrong, got VALUE`, with the fix where it is not obvious."""
    field, kind, ctx = ".".join(str(p) for p in error["loc"]) or "config", error["type"], error.get("ctx", {})
    if kind == "extra_forbidden":
        return f"{field}: unknown key; remove it or check its spelling"
    if kind == "missing":
        return f"{field}: required; add it"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind in BOUNDS:
        (bound,) = (v for k, v in ctx.items())
        what = f"must be {BOUNDS[kind]} {bound}"
    else:
        what = error["msg"].replace("Input should be", "must be")
    return f"{field}: {what}, got {error.get('input')!r}"


def validate(model: type[Model], raw: Any, source: str, prefix: tuple = ()) -> Model:
    """`model.model_validate(raw)`, or a ConfigError naming `source` and the first bad field."""
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise ConfigError(f"{source}: " * bool(source) + error_line({**first, "loc": (*prefix, *first["loc"])})
                          + more) from None


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content, or a one-line ConfigError saying where it is broken."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; pass the path of a YAML file (see configs/)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read it as UTF-8 text ({err}); save the config as UTF-8") from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, source: str, error: type[MorError] = ConfigError, fix: str = "") -> Any:
    """YAML text's content, or a one-line `error` naming `source` and where the text is broken (then `fix`)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise error(f"{source}: not valid YAML{where}; {getattr(err, 'problem', err)}{fix}") from None
