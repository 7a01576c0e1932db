"""Confidence from token log-probabilities, shared by the language-model experts."""

import math
from collections.abc import Sequence


def from_logprobs(logprobs: Sequence[float], default: float) -> float:
    """Geometric mean of the tokens' probabilities, exp(mean log p), in [0, 1]: how sure the model was of its
    own tokens, whatever the answer's length; `default` when there are no tokens to judge."""
    if not logprobs:
        return default
    return min(1.0, max(0.0, math.exp(sum(logprobs) / len(logprobs))))
