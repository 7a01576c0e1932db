"""The router's trained head: request text → calibrated probabilities over labels (math, code, …).

Features are TF-IDF n-grams and, when the offline MiniLM package is installed, MiniLM sentence embeddings
whose top layers are fine-tuned on the labels. A multinomial logistic regression reads both; its temperature
is fitted on a held-out tenth of the training data (unseen by fine-tuning) so the probabilities
are calibrated, then the regression is refitted on all of it. Everything saves to a folder as JSON +
safetensors (no pickles).
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from scipy import sparse
from scipy.optimize import minimize_scalar
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from mor.errors import ConfigError, MorError, check
from mor.system.encoders import MiniLMEncoder, TfidfEncoder, inference_dtype, minilm_path
from mor.system.tuning import fine_tune


@dataclass
class HeadConfig:
    """How the head is built and trained."""

    encoder: str = "auto"  # auto: minilm+tfidf when the MiniLM package is installed, else tfidf
    layers: int = 4  # MiniLM layers kept: 4 of 6 route about as well and a third faster
    tune_layers: int = 3
    tune_epochs: int = 3
    tune_lr: float = 2e-4
    max_tokens: int = 128
    precision: str = "auto"  # MiniLM routing: bf16 where the CPU computes it natively (a third faster), else fp32
    c: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.encoder in {"auto", "tfidf", "minilm", "minilm+tfidf"},
              f"router.encoder: {self.encoder!r} is not one of auto, tfidf, minilm, minilm+tfidf")
        check(1 <= self.layers <= 6, f"router.layers: {self.layers} is outside 1–6")
        check(0 <= self.tune_layers <= self.layers,
              f"router.tune_layers: {self.tune_layers} is outside 0–{self.layers} (router.layers)")
        inference_dtype(self.precision)
        check(self.c > 0, f"router.c: the inverse regularisation strength must be > 0, got {self.c}")

    def parts(self) -> list[str]:
        if self.encoder != "auto":
            return self.encoder.split("+")
        return ["minilm", "tfidf"] if minilm_path() is not None else ["tfidf"]


class LabelHead:
    """Encoders + logistic regression + temperature; `proba(texts)` gives calibrated label probabilities."""

    def __init__(self, labels: list[str], config: HeadConfig, encoders: dict, weight: np.ndarray,
                 bias: np.ndarray, temperature: float) -> None:
        self.labels, self.config, self.encoders = labels, config, encoders
        self.weight, self.bias, self.temperature = weight, bias, temperature

    @classmethod
    def fit(cls, texts: list[str], labels: list[str], config: HeadConfig | None = None) -> "LabelHead":
        """Train on labeled texts; a held-out tenth, unseen by fine-tuning and regression, fits the temperature."""
        config = config or HeadConfig()
        names = sorted(set(labels))
        check(len(names) >= 2, f"router training data: needs at least two labels, found {names}")
        y = np.array([names.index(label) for label in labels])
        fit_idx, cal_idx = train_test_split(np.arange(len(y)), test_size=0.1, stratify=y, random_state=config.seed)
        encoders = {}
        for part in config.parts():
            if part == "tfidf":
                encoders[part] = TfidfEncoder().fit(texts)
                continue
            encoders[part] = MiniLMEncoder(max_tokens=config.max_tokens, layers=config.layers,
                                           precision=config.precision)
            if config.tune_layers:
                fine_tune(encoders[part], [texts[i] for i in fit_idx], y[fit_idx].tolist(), len(names),
                          layers=config.tune_layers, epochs=config.tune_epochs, lr=config.tune_lr, seed=config.seed)
        features = _features(encoders, texts)
        weight, bias = _linear(_regression(config).fit(features[fit_idx], y[fit_idx]))
        temperature = _temperature(np.asarray(features[cal_idx] @ weight.T) + bias, y[cal_idx])
        return cls(names, config, encoders, *_linear(_regression(config).fit(features, y)), temperature)

    def logits(self, texts: list[str]) -> np.ndarray:
        return np.asarray(_features(self.encoders, texts) @ self.weight.T) + self.bias

    def proba(self, texts: list[str]) -> np.ndarray:
        """(n, labels) calibrated probabilities."""
        z = self.logits(texts) / self.temperature
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for encoder in self.encoders.values():
            encoder.save(folder)
        save_file({"weight": torch.from_numpy(self.weight), "bias": torch.from_numpy(self.bias)},
                  folder / "head.safetensors")
        (folder / "head.json").write_text(json.dumps(
            {"labels": self.labels, "config": asdict(self.config), "temperature": self.temperature,
             "encoders": list(self.encoders)}, indent=1))

    @classmethod
    def load(cls, folder: Path) -> "LabelHead":
        try:
            meta = json.loads((folder / "head.json").read_text())
            tensors = load_file(folder / "head.safetensors")
        except (OSError, ValueError) as e:
            raise MorError(f"router {folder}: not a trained router folder ({e}); train one with "
                           f"`mor route train --data FILE.jsonl --out {folder}`") from e
        config = HeadConfig(**meta["config"])
        loaders = {"tfidf": TfidfEncoder.load,
                   "minilm": lambda f: MiniLMEncoder.load(f, config.max_tokens, config.precision)}
        encoders = {part: loaders[part](folder) for part in meta["encoders"]}
        return cls(meta["labels"], config, encoders, tensors["weight"].numpy(), tensors["bias"].numpy(),
                   meta["temperature"])


def _regression(config: HeadConfig) -> LogisticRegression:
    return LogisticRegression(C=config.c, max_iter=3000)


def _linear(model: LogisticRegression) -> tuple[np.ndarray, np.ndarray]:
    """(labels, dim) weights and (labels,) biases of the softmax; two labels become logits (0, z)."""
    weight, bias = model.coef_, model.intercept_
    if weight.shape[0] == 1:
        weight, bias = np.vstack([np.zeros_like(weight), weight]), np.concatenate([[0.0], bias])
    return np.ascontiguousarray(weight, dtype=np.float32), np.ascontiguousarray(bias, dtype=np.float32)


def _features(encoders: dict, texts: list[str]) -> sparse.csr_matrix:
    """All encoders' features side by side (each part has unit norm per text)."""
    if not texts:
        raise ConfigError("router: no texts to encode")
    return sparse.hstack([sparse.csr_matrix(e.encode(texts)) for e in encoders.values()], format="csr")


def _temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The softmax temperature that minimises the negative log-likelihood of held-out labels."""
    def nll(t: float) -> float:
        z = logits / t
        z = z - z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]))
    return float(minimize_scalar(nll, bounds=(0.05, 20.0), method="bounded").x)
