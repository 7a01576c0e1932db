"""Temperature scaling of the head's logits and the measures of how well its probabilities are calibrated."""

import numpy as np
from scipy.optimize import minimize_scalar

BOUNDS = (0.05, 20.0)  # the temperatures searched
MIN_REQUESTS = 50  # fewer labeled requests fit a temperature to their noise


def log_loss(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels `y` under softmax(logits / temperature)."""
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The softmax temperature that minimises the negative log-likelihood of held-out labels."""
    return float(minimize_scalar(lambda t: log_loss(logits, y, t), bounds=BOUNDS, method="bounded").x)


def at_bound(temperature: float) -> bool:
    """Whether a fitted temperature stopped at the edge of the search: the data did not pin it down."""
    return not BOUNDS[0] * 1.01 < temperature < BOUNDS[1] * 0.99


def calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: |accuracy − mean confidence| per confidence bin, weighted by the bin's share."""
    edges = np.minimum((confidence * bins).astype(int), bins - 1)
    return float(sum(abs(correct[edges == b].mean() - confidence[edges == b].mean()) * (edges == b).mean()
                     for b in range(bins) if (edges == b).any()))


def report(logits: np.ndarray, y: np.ndarray, temperature: float) -> dict[str, float]:
    """Accuracy, log-loss and calibration error of softmax(logits / temperature) against `y`."""
    z = logits / temperature
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    correct = p.argmax(axis=1) == y
    return {"accuracy": float(correct.mean()), "log_loss": log_loss(logits, y, temperature),
            "calibration_error": calibration_error(p.max(axis=1), correct)}
