"""Tables from a CSV or Parquet file (pandas; Parquet through pyarrow) as finite tasks.

pandas and scikit-learn are imported on first use, so `import mor.data` stays fast for the generated tasks.
"""

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


def read_table(path: str | Path, file_format: str = "csv") -> "pd.DataFrame":
    """Read a table, turning a missing, empty or unreadable file into a one-line ConfigError."""
    import pandas as pd

    check(file_format in READERS, f"data.format: expected one of {', '.join(READERS)}, got {file_format!r}")
    path = Path(path)
    check(path.is_file(), f"data.path: no file at '{path}'; give the path of an existing {file_format} file")
    with path.open("rb") as file:
        parquet = file.read(4) == PARQUET_MAGIC
    check(file_format == "parquet" or not parquet, f"data.path: '{path}' is a Parquet file; set task: parquet")
    try:
        frame = getattr(pd, READERS[file_format])(path)
    except pd.errors.EmptyDataError:
        raise ConfigError(f"data.path: '{path}' is empty; give a file with a header row and data rows") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"data.path: '{path}' is not UTF-8 text ({error.reason}); save it as UTF-8") from None
    except (ValueError, OSError) as error:
        raise ConfigError(f"data.path: cannot read '{path}' as {file_format}: {first_line(error)}") from None
    check(len(frame) > 0, f"data.path: '{path}' has no data rows; give a file with at least a few rows")
    return frame


def table_task(file_format: str, path: str | Path, target: str, columns: Sequence[str] | None = None,
               kind: Kind | None = None, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15,
               stratify: bool = True) -> "TabularTask":
    """A CSV or Parquet file with a `target` column as a train/val/test task (preprocessing: `TabularTask`)."""
    from mor.data.tabular import TabularTask

    return TabularTask(read_table(path, file_format), target, name=Path(path).name, columns=columns, kind=kind,
                       seed=seed, val_fraction=val_fraction, test_fraction=test_fraction, stratify=stratify)
