"""A table with a target column as a finite task: split once by seed (stratified for classes), preprocessed
by scikit-learn transformers fitted on the training split only, so val and test stay unseen.

Columns of pandas' nullable dtypes are read as numpy ones first, an unnamed row counter (the index pandas writes
with a CSV) is left out of the features with a warning on the `mor.data` logger, and what cannot be learned as
given is refused in one line that names the column and, for bad values, the rows: missing targets, infinite
values, numbers with placeholders, ID-like text columns, classes too small to stratify.
"""

import copy
import hashlib
import json
import logging
import re
from collections.abc import Hashable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import LabelEncoder, OneHotEncoder, StandardScaler
from sklearn.utils.multiclass import type_of_target

from mor.data.base import SPLITS, Batch, DatasetTask, Kind, check_seed
from mor.errors import ConfigError, check, first_line

log = logging.getLogger("mor.data")


class TabularTask(DatasetTask):
    """Rows of `frame` → features (N, in_dim) float32 and targets: class ids (N,) or standardised values (N, 1).

    Numeric columns are median-imputed and standardised; other columns are imputed with their most frequent
    value and one-hot encoded (categories unseen in training encode as all zeros). `kind` None infers the
    task from the target column. Class ids follow the sorted classes of the whole column (`classes`), so
    every class has an id; regression targets are standardised with `target_scaler`, fitted on train.
    Fitted pieces stay inspectable: `target`; `columns`, the frame's columns the features come from; `preprocessor`
    and its `feature_names`; `target_scaler`; and `rows`, each split's row positions. `mor.data.table_rows` puts
    another table's rows through them.
    """

    sequence = False

    def __init__(self, frame: pd.DataFrame, target: str, *, name: str = "table", columns: Sequence[str] | None = None,
                 kind: Kind | None = None, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15,
                 stratify: bool = True):
        self.name, self.target = name, target
        frame = numpy_dtypes(frame)
        features = _feature_columns(frame, target, columns, name)
        check_seed(seed)
        labels = frame[target]
        _check_values(frame, target, features, name)
        self.kind = _infer_kind(labels, target) if kind is None else kind
        check(self.kind in ("classification", "regression"),
              f"data.kind: expected 'classification' or 'regression', got {self.kind!r}")
        classes = self.kind == "classification"
        check(classes or pd.api.types.is_numeric_dtype(labels),
              f"data.kind: column {target!r} of {name} is not numeric, so it cannot be a regression target; "
              f"use kind: classification")
        self.rows = _split(len(frame), labels if classes and stratify else None, seed, val_fraction, test_fraction,
                           name)
        x = _with_values(frame[features], self.rows["train"], name)
        _check_not_ids(x, self.rows["train"], name)
        self.columns = list(x.columns)
        try:
            self.preprocessor = _preprocessor(x).fit(x.iloc[self.rows["train"]])
            encoded = {split: self.preprocessor.transform(x.iloc[rows]) for split, rows in self.rows.items()}
        except (TypeError, ValueError) as error:
            raise ConfigError(f"data.columns: cannot preprocess the features of {name} ({first_line(error)}); give "
                              "every column a string name and one type of values, numbers or strings") from None
        self.feature_names = list(self.preprocessor.get_feature_names_out())
        overflowed = sorted({self.feature_names[j].split("__", 1)[-1] for part in encoded.values()
                             for j in np.nonzero(~np.isfinite(part).all(axis=0))[0]})
        check(not overflowed, f"data.columns: {overflowed} of {name} overflow when standardised (values near the "
                              "float limit); rescale those columns first")
        self.in_dim = len(self.feature_names)
        if classes:
            encoder = LabelEncoder().fit(labels)
            self.classes, self.target_scaler = list(encoder.classes_), None
            self.out_dim, y = len(self.classes), torch.as_tensor(encoder.transform(labels), dtype=torch.long)
        else:
            values = labels.to_numpy(dtype=np.float64)[:, None]
            self.classes, self.out_dim = None, 1
            self.target_scaler = StandardScaler().fit(values[self.rows["train"]])
            y = torch.as_tensor(self.target_scaler.transform(values), dtype=torch.float32)
        self._data = {split: (torch.as_tensor(encoded[split], dtype=torch.float32), y[torch.as_tensor(rows)])
                      for split, rows in self.rows.items()}

    def split(self, name: str) -> Batch:
        check(name in SPLITS, f"{self.name}: unknown split {name!r}; choose one of: {', '.join(SPLITS)}")
        return self._data[name]

    def scored_on(self, rows: Batch, name: str) -> "TabularTask":
        """This task with `rows` (from `mor.data.table_rows`) as its test split, its fitted pieces untouched, named
        after the file they came from."""
        scored = copy.copy(self)
        scored._data, scored.name = {**self._data, "test": rows}, f"{self.name} → {name}"
        return scored

    def fingerprint(self) -> str:
        """The splits' digest and what turns outputs back into the target's terms (class names, the target's mean
        and scale): a file whose targets were rescaled or renamed gives the same tensors but other answers."""
        return self.fingerprints()[0]

    def fingerprints(self) -> tuple[str, ...]:
        """The fingerprint, then the splits' digest alone, which checkpoints before 2026-11-23 hold (for them a
        rescaled or renamed target goes unnoticed, as it did)."""
        splits = super().fingerprint()
        units = {"classes": None if self.classes is None else list(map(str, self.classes)),
                 "target": None if self.target_scaler is None else [self.target_scaler.mean_.tolist(),
                                                                     self.target_scaler.scale_.tolist()]}
        return hashlib.sha256(f"{splits} {json.dumps(units)}".encode()).hexdigest()[:16], splits


def listed(items: Iterable, limit: int = 5) -> str:
    """The first `limit` items joined by commas, and how many there are in all when that is more: one-line errors
    stay short however many values are wrong."""
    items = list(items)
    shown = ", ".join(map(str, items[:limit]))
    return shown if len(items) <= limit else f"{shown}, …, {len(items)} in all"


def row_numbers(mask: np.ndarray) -> str:
    """The rows where `mask` holds, numbered as a spreadsheet or a CSV file counts them: the header is row 1."""
    numbers = np.flatnonzero(mask) + 2
    return f"row{'s' * (len(numbers) > 1)} {listed(numbers.tolist())}, the header being row 1"


def _shown(column: Hashable) -> str:
    """A column name as written, or quoted when plain text would hide what it is (spaces around it, a comma, no
    text, not a string)."""
    plain = isinstance(column, str) and column and column == column.strip() and "," not in column
    return column if plain else repr(column)


def numpy_dtypes(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with the columns of pandas' nullable dtypes (`convert_dtypes()`: string, boolean, Int64, Float64,
    missing as pd.NA) read as a CSV reads them, numpy ones with NaN: scikit-learn cannot compare pd.NA."""
    nullable = [c for c in frame.columns if getattr(frame[c].dtype, "na_value", None) is pd.NA]
    if not nullable:
        return frame
    frame = frame.copy()
    for column in nullable:
        values = frame[column].to_numpy(dtype=object, na_value=np.nan)
        frame[column] = pd.Series(values, index=frame.index).infer_objects()
    return frame


def _feature_columns(frame: pd.DataFrame, target: str, columns: Sequence[str] | str | None, name: str) -> list:
    """The columns the features come from: `columns` as given, else every column but the target and an unnamed
    row counter, which is left out with a warning."""
    available = listed(map(_shown, frame.columns), limit=30)
    spaced = [c for c in frame.columns if isinstance(c, str) and c != target and c.strip() == str(target).strip()]
    hint = f"; column {spaced[0]!r} has spaces around its name: set data.target: {spaced[0]!r}" if spaced else ""
    check(target in frame.columns, f"data.target: no column {target!r} in {name}; available: {available}{hint}")
    if columns is None:
        counters = [c for c in frame.columns if c != target and _is_row_counter(frame[c])]
        for column in counters:
            log.warning("data: column %r of %s only counts the rows, like the index pandas writes with a CSV, so it "
                        "is left out of the features; name it in data.columns to keep it", column, name)
        features = [c for c in frame.columns if c != target and c not in counters]
    else:
        features = [columns] if isinstance(columns, str) else list(columns)
    missing = [c for c in features if c not in frame.columns or c == target]
    check(not missing and features,
          f"data.columns: {missing or 'none given'} are not feature columns of {name}; available: {available}")
    check(len(set(features)) == len(features), f"data.columns: {features} names a column twice; list each once")
    return features


UNNAMED = re.compile(r"Unnamed: \d+")  # how pandas names a column whose header cell is empty


def _is_row_counter(column: pd.Series) -> bool:
    """An unnamed column of the integers 0..n-1 or 1..n in some order: a saved index, which tells nothing about a
    row but its place in the file (and the target, in a file sorted by it)."""
    if not (isinstance(column.name, str) and UNNAMED.fullmatch(column.name)
            and pd.api.types.is_integer_dtype(column) and not column.isna().any()):
        return False
    values = np.sort(column.to_numpy())
    return bool(np.array_equal(values, np.arange(len(values))) or np.array_equal(values, np.arange(len(values)) + 1))


def _check_values(frame: pd.DataFrame, target: str, features: list, name: str) -> None:
    """Refuse a target with missing values or one value only, and infinite or placeholder-ridden columns."""
    labels = frame[target]
    missing = labels.isna().to_numpy()
    check(not missing.any(), f"data.target: column {target!r} of {name} has {int(missing.sum())} missing values "
                             f"({row_numbers(missing)}); drop or fill those rows first")
    for column in (*features, target):
        check_finite(frame[column], column, name)
        _check_numbers_not_text(frame[column], column, name)
    check(labels.nunique() > 1, f"data.target: column {target!r} of {name} holds one value only "
                                f"({labels.tolist()[0]!r}); there is nothing to learn — choose another target")


def _with_values(x: pd.DataFrame, train: np.ndarray, name: str) -> pd.DataFrame:
    """The feature columns that hold a value in some training row: an empty one tells nothing (and would leave the
    scaler no column when it is the only numeric one), so it is left out, unless it is every column."""
    empty = [c for c in x.columns if x[c].iloc[train].isna().all()]
    check(len(empty) < len(x.columns), f"data.columns: every feature column of {name} is empty in the training rows "
                                       f"({', '.join(map(str, empty))}); give columns that hold values")
    return x.drop(columns=empty)


MANY_CATEGORIES = 50  # a text column may have this many categories however few the rows


def _check_not_ids(x: pd.DataFrame, train: np.ndarray, name: str) -> None:
    """Refuse a text column with a value for nearly every training row (an ID, free text): its one-hot code would
    be dense and as wide as the table, and would say nothing of rows it has not seen."""
    for column in x.columns:
        if pd.api.types.is_numeric_dtype(x[column]):
            continue
        distinct = x[column].iloc[train].nunique()
        check(distinct <= MANY_CATEGORIES or distinct <= len(train) / 2,
              f"data.columns: column {column!r} of {name} has {distinct} distinct values in {len(train)} training "
              "rows, like an ID or free text, so its categories would not carry to new rows; leave it out by "
              "listing the other feature columns in data.columns")


def check_finite(column: pd.Series, field: str, name: str) -> None:
    """Refuse ±inf in a numeric column (NaN is a missing value, imputed in features)."""
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        infinite = np.isinf(column.to_numpy(dtype=np.float64))
        check(not infinite.any(), f"data: column {field!r} of {name} has {int(infinite.sum())} infinite values "
                                  f"({row_numbers(infinite)}); replace or drop those rows first")


NUMERIC_SHARE = 0.9  # a text column whose values are this much numbers is numbers with a few placeholders


def _check_numbers_not_text(column: pd.Series, field: str, name: str) -> None:
    """Refuse a column of numbers with a few placeholders ('?', '-'): pandas reads it as text, so every number
    would become a category of its own."""
    if pd.api.types.is_numeric_dtype(column) or column.dropna().empty:
        return
    given = column.dropna()
    numbers = pd.to_numeric(given.astype(str), errors="coerce").notna()
    if numbers.mean() >= NUMERIC_SHARE and not numbers.all():
        odd = list(dict.fromkeys(given[~numbers].astype(str)))
        raise ConfigError(f"data: column {field!r} of {name} holds numbers but for {int((~numbers).sum())} values "
                          f"like {', '.join(map(repr, odd[:3]))}, so it reads as text and each number would be a "
                          f"category; leave those cells empty (missing) or drop the column with data.columns")


MANY_CLASSES = 50  # a numeric target with more distinct integers than this may be a quantity: the user says which


def _infer_kind(labels: pd.Series, target: str) -> Kind:
    """Classification for binary or multiclass targets (labels, strings, a few integers), regression for real
    values; many distinct integers (a count, a price) are ambiguous, so the user is asked to say."""
    found = type_of_target(labels.to_numpy())
    distinct = labels.nunique()
    check(found != "multiclass" or not pd.api.types.is_numeric_dtype(labels) or distinct <= MANY_CLASSES,
          f"data.kind: column {target!r} holds {distinct} distinct integers, as a quantity or as many class labels; "
          f"set kind: regression or kind: classification")
    if found in ("binary", "multiclass"):
        return "classification"
    check(found == "continuous", f"data.kind: cannot tell the task from column {target!r} ({found} values); "
                                 "set kind: classification or kind: regression")
    return "regression"


def _split(n: int, stratify: pd.Series | None, seed: int, val_fraction: float, test_fraction: float,
           name: str) -> dict[str, np.ndarray]:
    """Row positions of train / val / test, disjoint and covering all `n` rows."""
    for field, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        check(isinstance(value, int | float) and 0 < value < 1,
              f"data.{field}: expected a fraction between 0 and 1, got {value!r}")
    check(val_fraction + test_fraction < 1,
          f"data.val_fraction: val_fraction + test_fraction must be below 1, got {val_fraction} + {test_fraction}")
    rows = np.arange(n)
    try:
        rest, test = train_test_split(rows, test_size=test_fraction, random_state=seed, stratify=stratify)
        keep = None if stratify is None else stratify.iloc[rest]
        train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), random_state=seed,
                                      stratify=keep)
    except ValueError as error:
        if stratify is not None:
            raise ConfigError(_unstratified(stratify, name)) from None
        raise ConfigError(f"data.val_fraction: cannot split {n} rows of {name} into train/val/test: "
                          f"{first_line(error)}; use more rows") from None
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def _unstratified(labels: pd.Series, name: str) -> str:
    """Why the rows cannot be split with every class in each split, and the fix: numbers with classes that small
    are more likely a quantity (an age, a price), so those point at kind: regression."""
    counts = labels.value_counts()
    single = labels[labels.map(counts).to_numpy() < 2].tolist()
    detail = (f"{len(single)} of them have one row: {listed(single)}" if single
              else "more classes than the val or test split has rows")
    problem = (f"column {labels.name!r} of {name} has {len(counts)} classes, too many for each to be in train, val "
               f"and test of {len(labels)} rows ({detail})")
    if pd.api.types.is_numeric_dtype(labels) and not pd.api.types.is_bool_dtype(labels):
        return (f"data.kind: {problem}, and looks like a quantity; set kind: regression, or stratify: false to keep "
                f"{len(counts)} classes")
    return f"data.stratify: {problem}; set stratify: false or use more rows"


def _preprocessor(x: pd.DataFrame) -> ColumnTransformer:
    """Impute and standardise numeric columns; impute and one-hot encode the others."""
    numeric = [c for c in x.columns if pd.api.types.is_numeric_dtype(x[c])]
    other = [c for c in x.columns if c not in numeric]
    numeric_steps = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    other_steps = Pipeline([("impute", SimpleImputer(strategy="most_frequent")),
                            ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False))])
    parts = [(name, steps, columns) for name, steps, columns in
             (("num", numeric_steps, numeric), ("cat", other_steps, other)) if columns]
    return ColumnTransformer(parts, sparse_threshold=0.0)
