"""Shared config plumbing: strict pydantic sections, YAML reading, and pydantic errors as one line.

Every error names the field, the bad value and the fix, e.g. `train.lr: must be > 0, got -1`.
"""

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from mor.errors import ConfigError, MorError

Model = TypeVar("Model", bound=BaseModel)
BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


class Strict(BaseModel):
    """Base for config sections: unknown keys are refused, values are checked on assignment too, numbers must be
    finite (no field means anything by infinity), and YAML booleans (yes, on, true) are not taken as 1."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """Refuse a boolean where the field takes numbers: pydantic would read `steps: yes` as 1."""
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and _takes_numbers(field.annotation) and _has_bool(value):
            raise PydanticCustomError("bool_number", "takes numbers, not booleans (YAML reads yes, no, on, off, "
                                                     "true and false as booleans); write a number")
        return value


def _leaves(annotation: Any) -> Iterator[Any]:
    """The types an annotation is built of (through Optional, Annotated, list, dict…); Literal values are not."""
    args = get_args(annotation)
    if not args:
        yield annotation
    elif get_origin(annotation) is not Literal:
        for arg in args:
            yield from _leaves(arg)


def _takes_numbers(annotation: Any) -> bool:
    """Whether an annotation holds ints or floats but not booleans."""
    leaves = list(_leaves(annotation))
    return bool not in leaves and any(leaf in (int, float) for leaf in leaves)


def _has_bool(value: Any) -> bool:
    """Whether `value` is a boolean or a list or mapping holding one."""
    if isinstance(value, dict):
        return any(_has_bool(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_bool(v) for v in value)
    return isinstance(value, bool)


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key repeated in one mapping: PyYAML would silently keep the last one, so
    a second `train:` section would throw the first away. Keys are compared as written, before merge keys (`<<:`)
    bring in others that a mapping may override. Exponents without a dot (`5e-2`) are numbers, as in YAML 1.2."""

    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        seen: dict[tuple[str, str], yaml.Mark] = {}  # (tag, text) of each scalar key → where it first appears
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            if (key.tag, key.value) in seen:
                raise yaml.composer.ComposerError(
                    None, None, f"key {key.value!r} repeated (first at line {seen[key.tag, key.value].line + 1}), the "
                                f"later one would silently replace the earlier; merge them into one", key.start_mark)
            seen[key.tag, key.value] = key.start_mark
        return node


UniqueKeyLoader.add_implicit_resolver(  # YAML 1.2 reads 1e-3 as a number; PyYAML (1.1) would read text
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789"))


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
        what = f"must be {BOUNDS[kind]} {f'{bound:g}' if isinstance(bound, float) else bound}"
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
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; pass the path of a YAML file (see configs/)")
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
        return yaml.load(text, UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise error(f"{source}: not valid YAML{where}; {getattr(err, 'problem', err)}{fix}") from None
