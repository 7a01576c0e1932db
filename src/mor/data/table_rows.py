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
from mor.errors import check


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
    features = torch.as_tensor(task.preprocessor.transform(frame[task.columns]), dtype=torch.float32)
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
    numeric = set(next((cols for name, _, cols in task.preprocessor.transformers_ if name == "num"), []))
    for column, value in record.items():
        number = isinstance(value, int | float) and not isinstance(value, bool)
        check(value is None or not isinstance(value, float) or math.isfinite(value),
              f"{where}.{column}: {value} is not a finite number; send a finite value, or null where it is missing")
        check(column not in numeric or value is None or number or isinstance(value, bool),
              f"{where}.{column}: {value!r} is not a number, and column {column!r} held numbers in training; send a "
              f"number, or null where it is missing")
    frame = pd.DataFrame([{c: np.nan if record[c] is None else record[c] for c in task.columns}])
    for column in numeric:
        frame[column] = pd.to_numeric(frame[column])
    return task.preprocessor.transform(frame)[0].astype(np.float32)


__all__ = ["encoded_record", "encoded_rows"]
