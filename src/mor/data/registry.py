"""Every built-in task by name, built from config options with one-line errors for bad names and options."""

import inspect
from collections.abc import Callable
from functools import partial
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError

from mor.data.addition import Addition
from mor.data.base import Task
from mor.data.bundled import BUNDLED, bundled_task
from mor.data.chars import Chars
from mor.data.files import READERS, table_task
from mor.data.mix import Mix
from mor.data.parity import Parity, SequenceParity
from mor.data.prefix_sum import PrefixSum
from mor.data.regimes import Regimes
from mor.errors import ConfigError, check

TASKS: dict[str, Callable[..., Task]] = {
    "prefix_sum": PrefixSum, "addition": Addition, "parity": Parity, "sequence_parity": SequenceParity,
    "regimes": Regimes, "mix": Mix, "chars": Chars,
    **{name: partial(bundled_task, name) for name in BUNDLED},
    **{name: partial(table_task, name) for name in READERS},
}


def get_task(name: str, **options) -> Task:
    """The task called `name`, built with `options` (the keys under `data:` in a config, besides `task`)."""
    check_options(name, options)
    return TASKS[name](**options)


def check_options(name: str, options: dict) -> None:
    """Refuse an unknown task name, an option the task does not take, or a required option left out."""
    check(name in TASKS, f"data.task: unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    parameters = inspect.signature(TASKS[name]).parameters
    for key in options:
        check(key in parameters, f"data.{key}: task {name!r} has no option {key!r}; "
                                 f"its options are: {', '.join(parameters) or 'none'}")
    for key, parameter in parameters.items():
        check(parameter.default is not inspect.Parameter.empty or key in options,
              f"data.{key}: task {name!r} needs option {key!r}; set data.{key}")
        if key in options:
            _check_type(name, key, parameter, options[key])


def _check_type(name: str, key: str, parameter: inspect.Parameter, value: Any) -> None:
    """Refuse an option value the task's signature does not take: the task would fail on it with a traceback."""
    if parameter.annotation is inspect.Parameter.empty:
        return
    try:
        strict = ConfigDict(arbitrary_types_allowed=True, strict=True)  # strict: YAML's true is not the integer 1
        TypeAdapter(parameter.annotation, config=strict).validate_python(value)
    except ValidationError:
        expected = inspect.formatannotation(parameter.annotation).replace("collections.abc.", "")
        raise ConfigError(f"data.{key}: task {name!r} takes {expected}, got {value!r}") from None
