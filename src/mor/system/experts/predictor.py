"""Experts that are trained predictors over numeric features: a fitted scikit-learn estimator or a mor.nn checkpoint.

Both read the features from the request as a JSON array (e.g. `[0.5, -1.2, 3]`; a sequence model takes a list of
rows) unless given a function that makes features from the question. A request without the features the model needs
is refused with a RequestError (the request's fault, not counted against the expert); a failure of the model itself
on well-formed features stays the expert's.
"""

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from mor.data import get_task
from mor.data.table_rows import encoded_record
from mor.data.tabular import TabularTask
from mor.errors import ConfigError, check
from mor.nn import MoRModel
from mor.system.experts.base import Expert, ExpertInfo
from mor.system.experts.errors import RequestError
from mor.system.request import Answer, Request
from mor.train.build import build_model
from mor.train.checkpoint import CONFIG, check_data, load, restore
from mor.train.config import saved

# Confidence of a regressor's value: it gives no probability, so the expert declares a middling one.
DEFAULT_CONFIDENCE = 0.5


def parse_features(text: str, shape: tuple[int | None, ...], expert: str, dtype: type = np.float64) -> np.ndarray:
    """The JSON array in `text` (from its first '[' to its last ']') as features of `shape`; see `check_features`."""
    return check_features(_json_between(text, "[", "]"), shape, expert, dtype)


def _json_between(text: str, opening: str, closing: str) -> Any:
    """The JSON value from the first `opening` to the last `closing` in `text`, or None where there is none."""
    start, end = text.find(opening), text.rfind(closing)
    try:
        return json.loads(text[start:end + 1]) if 0 <= start < end else None
    except (ValueError, RecursionError):  # RecursionError: nested past what json reads
        return None


def check_features(data: Any, shape: tuple[int | None, ...], expert: str, dtype: type = np.float64) -> np.ndarray:
    """`data` as a finite array of `dtype` and `shape` (None: any length), or a one-line RequestError saying what to
    send. float64 for scikit-learn, which rounding to float32 would feed other numbers (100000037 → 100000040)."""
    rows = "a list of rows of " if len(shape) == 2 else ""
    hint = f"send {rows}{shape[-1] or 'the'} features as a JSON array, e.g. [0.5, -1.2, …]"
    try:
        array = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError):
        array = np.empty(0)
    if data is None or array.ndim != len(shape) or array.size == 0:
        raise RequestError(f"expert {expert}: no numeric feature array of {len(shape)} dimension(s) in the "
                           f"question; {hint}")
    if any(size is not None and got != size for got, size in zip(array.shape, shape, strict=True)):
        raise RequestError(f"expert {expert}: got features of shape {list(array.shape)}, expected "
                           f"{[size or 'any' for size in shape]}; {hint}")
    if not np.isfinite(array).all():
        raise RequestError(f"expert {expert}: the features hold NaN or infinity; {hint}")
    return array


def _plain(value: Any) -> Any:
    """A numpy scalar or array as a plain Python value (for JSON answers)."""
    return value.tolist() if isinstance(value, np.ndarray | np.generic) else value


class SklearnExpert(Expert):
    """A fitted scikit-learn estimator (one output). Classifiers with `predict_proba` answer the most probable class
    with its probability as confidence; others (regressors) answer `predict` with `default_confidence`. An estimator
    fitted on a DataFrame gets the features as one, under the column names it was fitted with, in that order.
    `feature_fn` turns the question text into the feature vector (raising RequestError for text it cannot read); by
    default the question is a JSON array.
    """

    def __init__(self, info: ExpertInfo, estimator: BaseEstimator,
                 feature_fn: Callable[[str], Sequence[float]] | None = None, *,
                 default_confidence: float = DEFAULT_CONFIDENCE) -> None:
        super().__init__(info)
        try:
            check_is_fitted(estimator)
        except (NotFittedError, TypeError) as err:
            raise ConfigError(f"expert {info.name}: {type(estimator).__name__} is not a fitted estimator "
                              f"({err}); fit it first") from None
        check(0 <= default_confidence <= 1, f"expert {info.name}: default_confidence must be in [0, 1]")
        check(not isinstance(getattr(estimator, "classes_", None), list),
              f"expert {info.name}: {type(estimator).__name__} predicts several outputs at once; an expert gives "
              f"one answer, so make one expert per output")
        self.estimator, self.feature_fn, self.default_confidence = estimator, feature_fn, default_confidence
        self.n_features: int | None = getattr(estimator, "n_features_in_", None)
        self.columns: np.ndarray | None = getattr(estimator, "feature_names_in_", None)  # fitted on a DataFrame

    async def _answer(self, request: Request) -> Answer:
        value, confidence, details = await self.in_thread(self._predict, request.question)
        return Answer(expert=self.name, value=value, confidence=confidence, details=details)

    def _predict(self, text: str) -> tuple[Any, float, dict[str, Any]]:
        """The estimator's answer to the question `text`; on the expert's own thread, with `feature_fn`, which is
        user code that may take long or block (on the event loop it would stall every request, beyond the deadline)."""
        shape = (self.n_features,)
        x = (check_features(self.feature_fn(text), shape, self.name) if self.feature_fn
             else parse_features(text, shape, self.name))[None]
        if self.columns is not None:  # columns chosen by name (a ColumnTransformer) need them named
            x = pd.DataFrame(x, columns=self.columns)
        if hasattr(self.estimator, "predict_proba"):
            proba = self.estimator.predict_proba(x)[0]
            best = int(np.argmax(proba))
            return (_plain(self.estimator.classes_[best]), float(proba[best]),
                    {"probabilities": {str(c): float(p) for c, p in zip(self.estimator.classes_, proba, strict=True)}})
        return _plain(self.estimator.predict(x)[0]), self.default_confidence, {}


@dataclass
class Prediction:
    """One input's prediction: the class (or value), its confidence, the reflection steps and the diagnostics."""

    value: Any
    confidence: float
    steps: int
    details: dict[str, Any]


class TrainedModel:
    """A model trained by `mor train`, rebuilt from the config saved with its checkpoint (a run folder, RUN/best
    or a step-* folder), in eval mode; `predict` answers a batch of inputs of `shape` (None: any length).

    Confidence is the critic's, weighted by the integration weights, for MoR models; the top class probability
    for other classifiers; `default_confidence` for other regressors. Steps are the reflection steps used.
    """

    def __init__(self, checkpoint: str | Path, where: str, default_confidence: float = DEFAULT_CONFIDENCE) -> None:
        check(0 <= default_confidence <= 1, f"{where}: default_confidence must be in [0, 1]")
        loaded = load(Path(checkpoint))
        config = saved(loaded.config, loaded.path / CONFIG)
        task = get_task(config.data.task, **config.data.options)
        check_data(loaded.state, task.fingerprints(), loaded.path, "its class names and output units come from that "
                                                                  "file: restore it, or train again")
        check(not task.tokens, f"{where}: {loaded.path} is a token model ({config.data.task}); "
                               f"only models over numeric features can answer here")
        self.model = build_model(config.model, task)
        restore(self.model, loaded.weights, loaded.path)
        self.model.eval()
        self.shape: tuple[int | None, ...] = (None, task.in_dim) if task.sequence else (task.in_dim,)
        self.classes, self.default_confidence = task.kind == "classification", default_confidence
        self.table = task if isinstance(task, TabularTask) else None  # takes rows by column name too
        self.names: list | None = getattr(task, "classes", None)  # a table's class names, by index
        self.scaler = getattr(task, "target_scaler", None)  # a table's targets are learned standardised
        self.source = f"{loaded.path} ({config.model.kind} on {config.data.task})"

    def record(self, record: dict[str, Any], where: str) -> np.ndarray:
        """A table model's input given as {column: value}, a row as in the training file, through the preprocessing
        fitted on its training split; a one-line MorError naming `where` when it does not fit."""
        check(self.table is not None, f"{where}: rows by column name are for models trained on a table; this model "
                                      f"takes {'a list of rows of ' if len(self.shape) == 2 else ''}"
                                      f"{self.shape[-1]} numbers", RequestError)
        try:
            return encoded_record(self.table, record, where)
        except ConfigError as err:
            raise RequestError(str(err)) from None

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> list[Prediction]:
        """One prediction per input of the batch `x`, (N, *shape); the per-input values are read out once for the
        whole batch, so a large batch costs little more than its forward pass."""
        diagnostics = None
        if isinstance(self.model, MoRModel):
            output, diagnostics = self.model(x, return_diagnostics=True)
        else:
            output = self.model(x)
        n = x.shape[0]
        if self.classes:
            top = output.softmax(-1).max(-1)
            values, confidences = top.indices.tolist(), top.values.reshape(n, -1).mean(-1).tolist()
        else:
            if self.scaler is not None:  # back to the target's own units
                output = torch.from_numpy(self.scaler.inverse_transform(output.double().reshape(n, -1).numpy()))
            values, confidences = (output[..., 0] if output.shape[-1] == 1 else output).tolist(), None
        read = {}
        if diagnostics is not None:
            weights = diagnostics.weights * diagnostics.mask
            critic = (weights * diagnostics.confidence).sum(-1) / weights.sum(-1).clamp_min(1e-12)
            read = {"critic": critic.tolist(), "most": diagnostics.steps.max(-1).values.tolist(),
                    "mask": diagnostics.mask.tolist(), "experts": diagnostics.indices.tolist(),
                    "steps": diagnostics.steps.tolist(), "conflict": diagnostics.conflict.tolist()}
        predictions = []
        for i in range(n):
            details: dict[str, Any] = {"model": self.source}
            if self.names is not None:
                details["label"] = self.names[values[i]]
            confidence, steps = self.default_confidence, 1
            if confidences is not None:
                confidence = details["probability"] = confidences[i]
            if read:
                used = read["mask"][i]
                confidence, steps = read["critic"][i], int(read["most"][i])
                details |= {"experts": [e for e, u in zip(read["experts"][i], used, strict=True) if u],
                            "steps": [s for s, u in zip(read["steps"][i], used, strict=True) if u],
                            "critic": confidence, "conflict": read["conflict"][i]}
            predictions.append(Prediction(values[i], min(1.0, max(0.0, confidence)), steps, details))
        return predictions


class MorModelExpert(Expert):
    """A `TrainedModel` as an expert: the question is the input as a JSON array, as the model sees it, or, for a
    model trained on a table, a JSON object of the row's columns (`{"size": 150, "city": "north"}`), preprocessed
    as in training."""

    def __init__(self, info: ExpertInfo, checkpoint: str | Path, *,
                 default_confidence: float = DEFAULT_CONFIDENCE) -> None:
        super().__init__(info)
        self.trained = TrainedModel(checkpoint, f"expert {info.name}", default_confidence)

    async def _answer(self, request: Request) -> Answer:
        record = _record(request.question) if self.trained.table is not None else None
        features = (self.trained.record(record, f"expert {self.name}") if record is not None else
                    parse_features(request.question, self.trained.shape, self.name, np.float32))
        x = torch.from_numpy(features)[None]
        (prediction,) = await self.in_thread(self.trained.predict, x)
        label = prediction.details.get("label")
        return Answer(expert=self.name, text=None if label is None else str(label), value=prediction.value,
                      confidence=prediction.confidence, steps=prediction.steps, details=prediction.details)


def _record(text: str) -> dict | None:
    """The JSON object in `text` (from its first '{' to its last '}'), or None where there is none."""
    value = _json_between(text, "{", "}")
    return value if isinstance(value, dict) else None
