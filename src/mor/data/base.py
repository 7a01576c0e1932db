"""What every built-in task offers a trainer: its shapes, what it asks, and deterministic batches from a seed.

Two flavours share `Task`. A `StreamTask` generates fresh instances without end and has a size knob (string
length, number of digits), so evaluation can ask for larger instances than training saw; a `GroupedTask` is
a stream whose instances come from hidden groups that evaluation may see. A `DatasetTask` holds a finite
table split once, by seed, into train / val / test tensors.
"""

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from mor.errors import check

Kind = Literal["classification", "regression"]
Batch = tuple[Tensor, Tensor]
SPLITS = ("train", "val", "test")


class Task(ABC):
    """A dataset for a model: input and output widths, classification or regression, vectors or sequences.

    Inputs are float features (N, in_dim) or (N, L, in_dim); token tasks (`tokens`) give (N, L) ids below
    `in_dim` instead. Class labels are ints below `out_dim`; regression targets are floats (N, out_dim).
    """

    name: str
    in_dim: int
    out_dim: int
    kind: Kind
    sequence: bool
    tokens: bool = False

    @abstractmethod
    def batches(self, batch_size: int, seed: int = 0) -> Iterator[Batch]:
        """Endless training batches (x, y), the same ones for the same seed."""

    def fingerprint(self) -> str | None:
        """A digest of the data read from outside the config (a file, a folder), so a checkpoint can tell they
        changed since it was trained; None where the config and seeds alone make the data."""
        return None

    def fingerprints(self) -> tuple[str | None, ...]:
        """The fingerprint, then the forms earlier versions of mor computed for the same data, which checkpoints
        they wrote still hold."""
        return (self.fingerprint(),)


class StreamTask(Task):
    """Generated instances: `batch` draws fresh ones, `eval_set` a fixed held-out set of a given size."""

    sizes: tuple[int, int] | None = None  # training range of the size knob, both ends; None: no size knob
    min_size: int = 1
    max_size: int | None = None

    @abstractmethod
    def batch(self, n: int, generator: torch.Generator, size: int | None = None) -> Batch:
        """`n` fresh instances of `size`; None draws one size from the training range `sizes`."""

    def eval_set(self, n: int, size: int | None = None, seed: int = 0) -> Batch:
        """A fixed evaluation set, the same for the same (n, size, seed); use a seed other than training's."""
        return self.batch(n, torch.Generator().manual_seed(seed), size)

    def val_set(self, n: int, size: int | None = None, seed: int = 0) -> Batch:
        """A fixed validation set, for picking checkpoints; fresh instances, so `eval_set` with another seed."""
        return self.eval_set(n, size, seed)

    def batches(self, batch_size: int, seed: int = 0) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(seed)
        while True:
            yield self.batch(batch_size, generator)

    def draw_size(self, size: int | None, generator: torch.Generator) -> int:
        """The size to generate: `size` once checked, or one drawn uniformly from the training range."""
        if size is None:
            low, high = self.sizes
            return int(torch.randint(low, high + 1, (), generator=generator))
        high = "∞" if self.max_size is None else self.max_size
        check(isinstance(size, int) and size >= self.min_size and (self.max_size is None or size <= self.max_size),
              f"{self.name}: size must be an integer in [{self.min_size}, {high}], got {size!r}")
        return size


class GroupedTask(StreamTask):
    """A stream whose instances come from hidden groups (regimes, sub-tasks): the model never sees the group,
    evaluation and routing reports do."""

    groups: tuple[str, ...]  # group names; group ids index this

    @abstractmethod
    def grouped_batch(self, n: int, generator: torch.Generator, size: int | None = None
                      ) -> tuple[Tensor, Tensor, Tensor]:
        """Like `batch`, plus each instance's group id, (N,) ints."""

    def batch(self, n: int, generator: torch.Generator, size: int | None = None) -> Batch:
        x, y, _ = self.grouped_batch(n, generator, size)
        return x, y

    def grouped_eval_set(self, n: int, size: int | None = None, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        """`eval_set(n, size, seed)` with the group of each instance."""
        return self.grouped_batch(n, torch.Generator().manual_seed(seed), size)


class DatasetTask(Task):
    """A finite dataset split once, by seed, into train / val / test tensors."""

    @abstractmethod
    def split(self, name: str) -> Batch:
        """The (x, y) tensors of split `name`: 'train', 'val' or 'test'."""

    def dataset(self, name: str) -> TensorDataset:
        """Split `name` as a torch Dataset."""
        return TensorDataset(*self.split(name))

    def loader(self, name: str, batch_size: int, seed: int = 0, shuffle: bool | None = None) -> DataLoader:
        """Batches of split `name`; shuffled (by `seed`) by default only for 'train'."""
        check(isinstance(batch_size, int) and batch_size >= 1,
              f"{self.name}: batch_size must be a positive integer, got {batch_size!r}")
        shuffle = name == "train" if shuffle is None else shuffle
        return DataLoader(self.dataset(name), batch_size=batch_size, shuffle=shuffle,
                          generator=torch.Generator().manual_seed(seed))

    def batches(self, batch_size: int, seed: int = 0) -> Iterator[Batch]:
        loader = self.loader("train", batch_size, seed)
        while True:
            yield from loader

    def fingerprint(self) -> str:
        """A digest of every split as the model sees it: it changes with the rows, their split or preprocessing."""
        return digest(t for name in SPLITS for t in self.split(name))


def digest(tensors: Iterable[Tensor]) -> str:
    """A short SHA-256 of the tensors' shapes, dtypes and values."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(f"{tuple(t.shape)} {t.dtype};".encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def check_seed(seed: int, field: str = "data.seed") -> int:
    """Validate a random seed: an integer that numpy and torch both accept."""
    check(isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**32,
          f"{field}: expected an integer in [0, 2^32), got {seed!r}")
    return seed


def check_sizes(sizes: Sequence[int], min_size: int = 1, max_size: int | None = None,
                field: str = "data.sizes") -> tuple[int, int]:
    """Validate a training size range [low, high] (a YAML list or a tuple) and return it as a tuple."""
    fine = (isinstance(sizes, Sequence) and not isinstance(sizes, str) and len(sizes) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) for s in sizes))
    high = "∞" if max_size is None else max_size
    check(fine and min_size <= sizes[0] <= sizes[1] and (max_size is None or sizes[1] <= max_size),
          f"{field}: expected [low, high] integers with {min_size} <= low <= high <= {high}, got {sizes!r}; "
          f"e.g. {field.rsplit('.', 1)[-1]}: [{min_size}, {max(min_size, 8)}]")
    return int(sizes[0]), int(sizes[1])
