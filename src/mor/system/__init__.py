"""Across-model Mixture of Reflection: route requests among whole models and tools, and integrate their answers."""

from mor.system.experts.base import Expert, ExpertInfo, Hints
from mor.system.request import Answer, Cost, Delta, Request

__all__ = ["Answer", "Cost", "Delta", "Expert", "ExpertInfo", "Hints", "Request"]
