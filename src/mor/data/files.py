"""Tables from a CSV or Parquet file (pandas; Parquet through pyarrow) as finite tasks.

A CSV is read with `data.sep` between values (a comma unless set); in a comma-separated file, a column of numbers
written with thousands separators ("5,126", quoted) is read as numbers. When the target is not a column, the error
says whether the file seems to use another delimiter or to have no header row.
pandas and scikit-learn are imported on first use, so `import mor.data` stays fast for the generated tasks.
"""

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mor.data.base import Kind
from mor.errors import ConfigError, check, first_line

if TYPE_CHECKING:
    import pandas as pd

    from mor.data.tabular import TabularTask

READERS = {"csv": "read_csv", "parquet": "read_parquet"}  # file format → pandas reader
PARQUET_MAGIC = b"PAR1"  # the first bytes of every Parquet file
DELIMITERS = (";", "\t", "|")  # the delimiters besides a comma that a header cell may betray
GROUPED = re.compile(r"[+-]?\d{1,3}(,\d{3})+(\.\d+)?")  # a number with thousands separators: 5,126 or 1,234,567.5
PLAIN = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")  # a number without them


def read_table(path: str | Path, file_format: str = "csv", sep: str | None = None,
               field: str = "data.path") -> "pd.DataFrame":
    """Read a table (`~` is the home folder; `sep` is a CSV's delimiter, a comma by default), turning a missing,
    empty or unreadable file into a one-line ConfigError that names the setting it came from (`field`)."""
    import pandas as pd

    check(file_format in READERS, f"data.format: expected one of {', '.join(READERS)}, got {file_format!r}")
    check(sep is None or file_format == "csv", "data.sep: only a CSV file has a delimiter; leave data.sep out")
    check(sep is None or (isinstance(sep, str) and len(sep) == 1),
          f"data.sep: expected one character such as ';' or a tab, got {sep!r}")
    path = Path(path).expanduser()
    check(path.is_file(), f"{field}: no file at '{path}'; give the path of an existing {file_format} file")
    check(file_format == "parquet" or not is_parquet(path), f"{field}: '{path}' is a Parquet file; set task: parquet")
    options = {"sep": sep or ","} if file_format == "csv" else {}
    try:
        frame = getattr(pd, READERS[file_format])(path, **options)
    except pd.errors.EmptyDataError:
        raise ConfigError(f"{field}: '{path}' is empty; give a file with a header row and data rows") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{field}: '{path}' is not UTF-8 text ({error.reason}); save it as UTF-8") from None
    except (ValueError, OSError) as error:
        raise ConfigError(f"{field}: cannot read '{path}' as {file_format}: {first_line(error)}") from None
    check(len(frame) > 0, f"{field}: '{path}' has no data rows; give a file with at least a few rows")
    return _grouped_numbers(frame) if options.get("sep") == "," else frame


def is_parquet(path: Path) -> bool:
    """Whether the file at `path` starts as every Parquet file does."""
    with path.open("rb") as file:
        return file.read(4) == PARQUET_MAGIC


def _grouped_numbers(frame: "pd.DataFrame") -> "pd.DataFrame":
    """`frame` with each text column whose values are all numbers, some with thousands separators ("5,126"), read
    as numbers. pandas' own `thousands=","` would also read "1,2" as 12; these must be grouped by three digits."""
    import pandas as pd

    for column in frame.columns:
        given = frame[column].dropna()
        if pd.api.types.is_numeric_dtype(frame[column]) or given.empty:
            continue
        text = given.astype(str).str.strip()
        grouped = text.map(GROUPED.fullmatch).notna()
        if grouped.any() and (grouped | text.map(PLAIN.fullmatch).notna()).all():
            frame[column] = pd.to_numeric(text.str.replace(",", "", regex=False)).reindex(frame.index)
    return frame


def _check_header(frame: "pd.DataFrame", target: str, name: str, sep: str | None) -> None:
    """When `target` is not a column, refuse a header that shows why: one column whose name holds another
    delimiter, or names that are all numbers (a file without a header row)."""
    if target in frame.columns:
        return
    names = [str(c) for c in frame.columns]
    other = next((d for d in DELIMITERS if d != sep and len(names) == 1 and d in names[0]), None)
    check(other is None, f"data.sep: the header of {name} is one column, {names[0]!r}, so the file seems to separate "
                         f"values with {other!r}, not {sep or ','!r}; set data.sep: {json.dumps(other)}")
    check(not all(PLAIN.fullmatch(n.strip()) for n in names),
          f"data.path: the first row of {name} holds numbers ({', '.join(names[:3])}), so the file seems to have no "
          f"header row; add a first row naming the columns, {target!r} among them")


def table_task(file_format: str, path: str | Path, target: str, columns: Sequence[str] | None = None,
               kind: Kind | None = None, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15,
               stratify: bool = True, sep: str | None = None) -> "TabularTask":
    """A CSV or Parquet file with a `target` column as a train/val/test task (preprocessing: `TabularTask`);
    `sep` is a CSV's delimiter."""
    from mor.data.tabular import TabularTask

    frame, name = read_table(path, file_format, sep), Path(path).name
    if file_format == "csv":
        _check_header(frame, target, name, sep)
    return TabularTask(frame, target, name=name, columns=columns, kind=kind, seed=seed, val_fraction=val_fraction,
                       test_fraction=test_fraction, stratify=stratify)
