"""mor.nn — the in-network Mixture of Reflection for PyTorch: router, reflection experts, integration."""

from mor.nn.cells import ConvCell, MLPCell, TransformerCell
from mor.nn.diagnostics import Diagnostics
from mor.nn.experts import ReflectionExperts, SwiGLU, SwiGLUExperts
from mor.nn.integration import Integrator, conflict
from mor.nn.layer import MoRLayer, reflection_layer
from mor.nn.losses import LossWeights
from mor.nn.models import (
    ConflictPolicy,
    DenseModel,
    MoRModel,
    Trajectory,
    count_parameters,
    moe_baseline,
    reflection_baseline,
)
from mor.nn.reflection import Halting, Reflection, ReflectionExpert
from mor.nn.router import Router, Routing
from mor.nn.transformer import TokenModel

__all__ = [
    "ConflictPolicy", "ConvCell", "DenseModel", "Diagnostics", "Halting", "Integrator", "LossWeights",
    "MLPCell", "MoRLayer", "MoRModel", "Reflection", "ReflectionExpert", "ReflectionExperts", "Router",
    "Routing", "SwiGLU", "SwiGLUExperts", "TokenModel", "Trajectory", "TransformerCell", "conflict", "count_parameters",
    "moe_baseline", "reflection_baseline", "reflection_layer",
]
