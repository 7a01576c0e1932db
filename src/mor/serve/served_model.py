"""A trained mor.nn model behind /v1/predict: loaded from its checkpoint, inputs checked, forward passes batched.

A checkpoint that cannot be loaded leaves the model unready (with the reason) instead of stopping the service.
"""

import asyncio
import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from mor.errors import MorError, first_line
from mor.serve.batching import MicroBatcher
from mor.serve.errors import ApiError, public
from mor.serve.metrics import Metrics
from mor.serve.schemas import PredictOutput
from mor.serve.settings import Batching, PredictModel
from mor.system.experts.predictor import Prediction, TrainedModel

log = logging.getLogger("mor.serve")


class ServedModel:
    """One configured model: `ready` once loaded, else `reason` says why not; `predict` answers checked inputs."""

    def __init__(self, spec: PredictModel, index: int, batching: Batching, metrics: Metrics) -> None:
        self.spec, self.metrics = spec, metrics
        self.trained: TrainedModel | None = None
        self.reason = "not loaded yet"
        try:
            self.trained = TrainedModel(spec.checkpoint, f"models[{index}]")
        except MorError as err:
            log.error("model %s: %s", spec.name, err)
            self.reason = self._unloadable(index, str(err))
        except Exception as err:  # unforeseen (bad files raise MorError): unready too, the traceback goes to the log
            log.exception("model %s: cannot load %s", spec.name, spec.checkpoint)
            reason = f"{type(err).__name__}: {first_line(err)[:160]}"
            self.reason = self._unloadable(index, f"cannot load it ({reason}); check the checkpoint's files or train "
                                                  f"it again")
        batching = spec.batching or batching
        size = batching.max_batch if batching.enabled else 1
        self.batcher: MicroBatcher[np.ndarray, tuple[Prediction, int]] = MicroBatcher(
            self._forward, size, batching.max_wait_ms / 1000)

    def _unloadable(self, index: int, reason: str) -> str:
        """Why the model cannot serve, as /readyz (which takes no key) and its 503s show it: the checkpoint named by
        its config field, not by its path, which would show the server's files."""
        field = f"models[{index}].checkpoint"
        reason = public(reason.replace(str(self.spec.checkpoint), field))
        return reason if reason.startswith(f"models[{index}]") else f"{field}: {reason}"

    @property
    def ready(self) -> bool:
        return self.trained is not None

    def start(self) -> None:
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()

    async def predict(self, inputs: list[Any]) -> list[PredictOutput]:
        """Outputs for `inputs` (checked first; 400 naming the bad one), each from a possibly shared forward pass;
        422 naming the first input whose output is not finite."""
        if self.trained is None:
            raise ApiError(503, f"model {self.spec.name!r} is not available: {self.reason}", param="model",
                           code="model_unavailable", headers={"Retry-After": "30"})
        if len(inputs) > self.spec.max_inputs:
            raise ApiError(400, f"inputs: {len(inputs)} inputs, more than the limit of {self.spec.max_inputs}; "
                                f"split the request", param="inputs")
        arrays = [self.check(value, f"inputs[{i}]") for i, value in enumerate(inputs)]
        if len(arrays) == 1:  # the common case: no task per input, as gather would make
            results = [await self.batcher.submit(arrays[0])]
        else:
            results = await asyncio.gather(*(self.batcher.submit(array) for array in arrays))
        for i, (prediction, _) in enumerate(results):
            self._check_finite(prediction, f"inputs[{i}]")
        return [_output(prediction, size) for prediction, size in results]

    def _check_finite(self, prediction: Prediction, where: str) -> None:
        """A 422 when the model's output for an input is NaN or infinite (finite inputs can overflow inside it),
        so that a meaningless prediction is never returned as a valid one."""
        if not all(math.isfinite(x) for x in _numbers([prediction.value, *prediction.details.values()])):
            raise ApiError(422, f"{where}: model {self.spec.name!r} gives no finite output for it (NaN or infinity, "
                                f"as when values overflow inside it); send values of the scale it was trained on",
                           param=where, code="non_finite_output")

    def check(self, value: Any, where: str) -> np.ndarray:
        """One input as a float32 array of the model's shape, or a 400 saying what is wrong with it; a row by column
        name (a table model) goes through the preprocessing fitted in training."""
        if isinstance(value, dict):
            try:
                return self.trained.record(value, where)
            except MorError as err:
                raise ApiError(400, str(err), param=where) from None
        shape = self.trained.shape
        expected = (f"a sequence of rows of {shape[1]} numbers, e.g. [[0.5, …], …]" if len(shape) == 2
                    else f"a vector of {shape[0]} numbers, e.g. [0.5, -1.2, …]")
        try:
            array = np.asarray(value, dtype=np.float64)
        except ValueError:
            raise ApiError(400, f"{where}: rows of different lengths; send {expected}", param=where) from None
        if array.ndim != len(shape) or array.shape[-1] != shape[-1] or array.size == 0:
            raise ApiError(400, f"{where}: got shape {list(array.shape)}; this model takes {expected}", param=where)
        if len(shape) == 2 and array.shape[0] > self.spec.max_length:
            raise ApiError(400, f"{where}: {array.shape[0]} positions, more than the limit of "
                                f"{self.spec.max_length}; send a shorter sequence", param=where)
        single = array.astype(np.float32)
        finite = np.isfinite(single)
        if not finite.all():
            at = tuple(int(i) for i in np.argwhere(~finite)[0])
            field = where + "".join(f"[{i}]" for i in at)
            raise ApiError(400, f"{field}: {float(array[at])} is not a finite float32 number; send finite values",
                           param=field)
        return single

    def _forward(self, arrays: list[np.ndarray]) -> list[tuple[Prediction, int] | Exception]:
        """Predictions for a batch of checked inputs: one forward pass per input shape (sequence length); a pass
        that fails (say, out of memory on long sequences) fails its own inputs only, as the error in their place."""
        results: list[tuple[Prediction, int] | Exception | None] = [None] * len(arrays)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, array in enumerate(arrays):
            groups.setdefault(array.shape, []).append(i)
        for members in groups.values():
            try:
                outcomes = self._group([arrays[i] for i in members])
            except Exception as err:
                outcomes = [err] * len(members)
            for i, outcome in zip(members, outcomes, strict=True):
                results[i] = outcome
        return results

    def _group(self, arrays: list[np.ndarray]) -> list[tuple[Prediction, int]]:
        """Predictions for inputs of one shape, from one forward pass, recorded in the metrics."""
        predictions = self.trained.predict(torch.from_numpy(np.stack(arrays)))
        self.metrics.batch_size.labels(self.spec.name).observe(len(arrays))
        for prediction in predictions:
            self.metrics.reflection_steps.labels(self.spec.name).observe(prediction.steps)
            for expert in prediction.details.get("experts", []):
                self.metrics.model_experts.labels(self.spec.name, str(expert)).inc()
        return [(prediction, len(arrays)) for prediction in predictions]


def _numbers(value: Any) -> Iterator[float]:
    """Every float in `value` and the lists inside it."""
    if isinstance(value, float):
        yield value
    elif isinstance(value, list | tuple):
        for part in value:
            yield from _numbers(part)


def _output(prediction: Prediction, batch_size: int) -> PredictOutput:
    details = prediction.details
    label = details.get("label")
    return PredictOutput(prediction=prediction.value, label=None if label is None else str(label),
                         confidence=prediction.confidence, steps=prediction.steps,
                         experts=details.get("experts"), expert_steps=details.get("steps"),
                         conflict=details.get("conflict"), batch_size=batch_size)
