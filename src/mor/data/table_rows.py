"""Another table's rows as a trained table task sees them, so a model trained on one file can score the next file
(`encoded_rows`) or answer a single row sent by name (`encoded_record`, what /v1/predict takes for table models).

The rows go through the pieces fitted on the task's training split (imputers, scalers, one-hot codes; class ids or
the target's scale), never refitted; a column the model was trained on that the file lacks, a class it never saw, a
missing target or an infinite value is refused in one line naming the file, the column and the rows.
"""

import math
from typing import Any

import numpy as np
import pandas as pd
import torch

from mor.data.base import Batch
from mor.data.tabular import TabularTask, check_finite, listed, numpy_dtypes, row_numbers
from mor.errors import ConfigError, check


def encoded_rows(task: TabularTask, frame: pd.DataFrame, name: str) -> Batch:
    """The (features, targets) of `frame`'s rows for `task`'s model: features through its fitted preprocessor,
    targets as its class ids or standardised values."""
    frame = numpy_dtypes(frame)
    missing = [c for c in (*task.columns, task.target) if c not in frame.columns]
    check(not missing, f"--data: {name} lacks column(s) {listed(map(repr, missing))} that the model was trained on; "
                       f"give a file with the training file's columns")
    labels = frame[task.target]
    absent = labels.isna().to_numpy()
    check(not absent.any(), f"--data: column {task.target!r} of {name} has {int(absent.sum())} missing values "
                            f"({row_numbers(absent)}); drop or fill those rows first")
    for column in (*task.columns, task.target):
        check_finite(frame[column], column, name)
    features = torch.as_tensor(_features(task, frame, f"--data: {name}"))
    if task.classes is None:
        check(pd.api.types.is_numeric_dtype(labels), f"--data: column {task.target!r} of {name} is not numeric, but "
                                                     f"the model predicts values; give numbers there")
        values = task.target_scaler.transform(labels.to_numpy(dtype=np.float64)[:, None])
        return features, torch.as_tensor(values, dtype=torch.float32)
    ids = {label: i for i, label in enumerate(task.classes)}
    unseen = sorted({str(label) for label in labels if label not in ids})
    check(not unseen, f"--data: column {task.target!r} of {name} holds class(es) {listed(unseen)} the model never saw "
                      f"(it knows {listed(map(str, task.classes))}); drop those rows")
    return features, torch.as_tensor([ids[label] for label in labels], dtype=torch.long)


def encoded_record(task: TabularTask, record: dict[str, Any], where: str) -> np.ndarray:
    """One row given as {column: value} (null: missing, imputed as in training) as the float32 features `task`'s
    model reads; a column missing or unknown, or a value of the wrong kind, is a one-line error naming `where`."""
    missing = [c for c in task.columns if c not in record]
    unknown = [c for c in record if c not in task.columns]
    columns = listed(map(repr, task.columns), limit=20)
    check(not missing, f"{where}: no value for column(s) {listed(map(repr, missing))}; send every feature column the "
                       f"model was trained on ({columns}), null where a value is missing")
    check(not unknown, f"{where}: column(s) {listed(map(repr, unknown))} are not among the model's feature columns "
                       f"({columns}); leave them out")
    for column, value in record.items():
        check(not isinstance(value, int | float) or isinstance(value, bool) or _finite(value),
              f"{where}.{column}: {value} is not a finite float64 number; send one, or null where it is missing")
    frame = pd.DataFrame([{c: np.nan if record[c] is None else record[c] for c in task.columns}])
    return _features(task, frame, where, one=True)[0]


def _finite(value: int | float) -> bool:
    """Whether a number is finite as a float64 (an integer of 400 digits is not)."""
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _features(task: TabularTask, frame: pd.DataFrame, where: str, one: bool = False) -> np.ndarray:
    """`frame`'s feature columns through `task`'s fitted preprocessor, float32, after refusing in one line what it
    would misread: text where training had numbers, and numbers or booleans where it had text (one-hot coded as no
    category, silently). `one`: a single row sent by name, where errors name `where.column`."""
    numeric, categories = _kinds(task)
    x = frame[task.columns].copy()
    for column in numeric:
        values = pd.to_numeric(x[column], errors="coerce")
        text = (values.isna() & x[column].notna()).to_numpy()
        if text.any():
            at = f"{where}.{column}" if one else f"{where}, column {column!r} ({row_numbers(text)})"
            raise ConfigError(f"{at}: {x[column][text].iloc[0]!r} is not a number, and the model read numbers there "
                              f"in training; give numbers (empty or null where a value is missing)")
        x[column] = values
    for column, known in categories.items():
        wrong = [v for v in x[column].dropna() if not isinstance(v, str)] if all(isinstance(k, str) for k in known) \
            else []
        if wrong:
            at = f"{where}.{column}" if one else f"{where}, column {column!r}"
            raise ConfigError(f"{at}: {wrong[0]!r} is not text, and the model read categories there in training "
                              f"({listed(map(repr, known))}); send the category's name")
    features = task.preprocessor.transform(x).astype(np.float32)
    check(np.isfinite(features).all(), f"{where}: a value is too large for the model's float32 features once "
                                       f"standardised; send values of the scale it was trained on")
    return features


def _kinds(task: TabularTask) -> tuple[list, dict]:
    """The feature columns the preprocessor reads as numbers, and those it one-hot codes with their categories."""
    fitted = {name: (steps, columns) for name, steps, columns in task.preprocessor.transformers_}
    numeric = list(fitted.get("num", (None, []))[1])
    if "cat" not in fitted:
        return numeric, {}
    steps, columns = fitted["cat"]
    return numeric, dict(zip(columns, (list(c) for c in steps.named_steps["onehot"].categories_), strict=True))


__all__ = ["encoded_record", "encoded_rows"]
