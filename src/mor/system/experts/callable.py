"""An expert that is a plain Python function: the quickest way to put a rule, a lookup or a script in a mixture."""

import dataclasses
import inspect
import numbers
import typing
from collections.abc import Callable
from typing import Any

from mor.errors import check
from mor.system.experts.base import Expert, ExpertInfo
from mor.system.experts.errors import ExpertError
from mor.system.request import Answer, Request

# Confidence of a bare string or number: the function said nothing about how sure it is.
DEFAULT_CONFIDENCE = 0.5


class CallableExpert(Expert):
    """Wraps `fn`, sync (run on the expert's worker threads) or async. It gets the request's question text, or the
    `Request` itself when its first parameter is annotated `Request` (or `Request | None`). It returns a string
    (→ text), a number (→ value; numpy scalars become plain int or float), an `Answer` (copied: the function may
    hand the same one out again), or a `(string or number, confidence)` pair; bare strings and numbers get
    `default_confidence`. To turn down a request it cannot read without the refusal counting against the expert's
    health, it raises `RequestError`; any other exception counts as a failure.
    """

    def __init__(self, info: ExpertInfo, fn: Callable[..., Any], *,
                 default_confidence: float = DEFAULT_CONFIDENCE) -> None:
        super().__init__(info)
        check(callable(fn), f"expert {info.name}: function must be callable, got {type(fn).__name__}")
        check(0 <= default_confidence <= 1, f"expert {info.name}: default_confidence must be in [0, 1]")
        self.fn, self.default_confidence, self.takes_request = fn, default_confidence, _takes_request(fn)

    async def _answer(self, request: Request) -> Answer:
        argument = request if self.takes_request else request.question
        if inspect.iscoroutinefunction(self.fn):
            result = await self.fn(argument)
        else:
            result = await self.in_thread(self.fn, argument)
            if inspect.isawaitable(result):  # an object whose __call__ is async
                result = await result
        return self._to_answer(result)

    def _to_answer(self, result: Any) -> Answer:
        if isinstance(result, Answer):  # a copy: the function may hand out the same Answer again (a lookup table)
            check(0 <= result.confidence <= 1, f"expert {self.name}: confidence must be in [0, 1], "
                                               f"got {result.confidence}", ExpertError)
            return dataclasses.replace(result, expert=self.name, value=_plain(result.value),
                                       details=dict(result.details))
        confidence = self.default_confidence
        if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], numbers.Real):
            result, confidence = result
            check(0 <= confidence <= 1, f"expert {self.name}: the function returned confidence {confidence}; "
                                        f"return one in [0, 1]", ExpertError)
        if isinstance(result, str):
            return Answer(expert=self.name, text=result, confidence=float(confidence))
        if isinstance(result, numbers.Real) and not isinstance(result, bool):
            return Answer(expert=self.name, value=_plain(result), confidence=float(confidence))
        raise ExpertError(f"expert {self.name}: the function returned a {type(result).__name__}; return a string, "
                          f"a number, an Answer or a (value, confidence) pair")


def _plain(value: Any) -> Any:
    """A number as a plain Python int or float (numpy scalars such as np.float32(10.5) or np.int64(2) included,
    which JSON and stacking refuse); anything else, bools included, as it is."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or type(value) in (int, float):
        return value
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def _takes_request(fn: Callable[..., Any]) -> bool:
    """Whether `fn`'s first parameter is annotated `Request`, alone or in a union (`Request | None`, Optional);
    string annotations are resolved."""
    try:
        parameters = list(inspect.signature(fn, eval_str=True).parameters.values())
    except (ValueError, TypeError, NameError):  # builtins without a signature, unresolvable annotations
        return False
    if not parameters:
        return False
    annotation = parameters[0].annotation
    return annotation is Request or Request in typing.get_args(annotation)
