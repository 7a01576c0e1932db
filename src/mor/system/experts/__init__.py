"""Expert adapters: each wraps one kind of model or tool behind `Expert.answer(request) -> Answer`."""

from mor.system.experts.base import Expert, ExpertInfo, Hints

__all__ = ["Expert", "ExpertInfo", "Hints"]
