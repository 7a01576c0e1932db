"""mor.data — built-in tasks and loaders: generated reasoning tasks with a size knob, a mixture of regimes,
a multi-task mix, scikit-learn's bundled datasets, CSV/Parquet tables and a character corpus.

The tables' `TabularTask` lives in `mor.data.tabular`, which imports pandas and scikit-learn.
"""

from mor.data.addition import Addition
from mor.data.base import Batch, DatasetTask, GroupedTask, Kind, StreamTask, Task
from mor.data.bits import BitSequenceTask
from mor.data.bundled import bundled_task
from mor.data.chars import Chars
from mor.data.files import read_table, table_task
from mor.data.mix import Mix
from mor.data.parity import Parity, SequenceParity
from mor.data.prefix_sum import PrefixSum
from mor.data.regimes import FUNCTIONS, Regimes
from mor.data.registry import TASKS, get_task

__all__ = [
    "FUNCTIONS", "TASKS", "Addition", "Batch", "BitSequenceTask", "Chars", "DatasetTask", "GroupedTask", "Kind",
    "Mix", "Parity", "PrefixSum", "Regimes", "SequenceParity", "StreamTask", "Task", "bundled_task",
    "get_task", "read_table", "table_task",
]
