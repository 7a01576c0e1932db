"""A character-level corpus from a folder of text files: windows of character ids and their next characters.

The default corpus is the Python standard library's own sources, present on every machine, cut to
`max_chars` characters so it loads in well under a second.
"""

import os
import sysconfig
from collections.abc import Iterator, Sequence
from fnmatch import fnmatchcase
from itertools import pairwise
from pathlib import Path

import torch
from torch import Tensor

from mor.data.base import Batch, StreamTask, digest
from mor.errors import ConfigError, check

UNKNOWN = "\ufffd"  # id 0: characters not seen in the training text
SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


class Chars(StreamTask):
    """Next-character prediction over the text of the files under `root` matching `patterns`.

    Files are read folder by folder, each folder's files in sorted order before its subfolders (skipping hidden
    folders and installed packages), until `max_chars`
    characters, cut in order into training, validation (`val_fraction`) and test (`test_fraction`) text:
    validation picks checkpoints, the test text is what `eval_set` reports on (with `test_fraction` 0 there is
    none, and `eval_set` draws from the validation text). The vocabulary is built from the training text; id 0
    stands for characters it lacks; `ids` holds each split's ids. Batches are random windows of `size` (default
    `context`) ids, (N, size), with targets shifted by one; `split(name)` is the split cut into consecutive
    windows, for full-coverage evaluation.
    """

    name = "chars"
    kind = "classification"
    sequence = True
    tokens = True

    def __init__(self, root: str | Path | None = None, patterns: str | Sequence[str] = ("*.py", "*.txt"),
                 max_chars: int = 1_000_000, context: int = 128, val_fraction: float = 0.05,
                 test_fraction: float = 0.05):
        check(isinstance(max_chars, int) and max_chars >= 2,
              f"data.max_chars: expected an integer >= 2, got {max_chars!r}")
        check(isinstance(context, int) and context >= 1, f"data.context: expected a positive integer, got {context!r}")
        check(isinstance(val_fraction, int | float) and 0 < val_fraction < 1,
              f"data.val_fraction: expected a fraction between 0 and 1, got {val_fraction!r}")
        check(isinstance(test_fraction, int | float) and 0 <= test_fraction < 1 - val_fraction,
              f"data.test_fraction: expected a fraction from 0 to below 1 - val_fraction, got {test_fraction!r}")
        root = Path(sysconfig.get_paths()["stdlib"] if root is None else root)
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        check(root.is_dir(), f"data.root: no folder at '{root}'; give a folder of text files")
        text = _read(root, patterns, max_chars)
        parts = 3 if test_fraction else 2
        check(len(text) > 0, f"data.patterns: no text in files matching {patterns} under '{root}'; "
                             "check the folder and the glob patterns")
        check(len(text) >= parts, f"data.root: {len(text)} character(s) under '{root}', fewer than the {parts} "
                                  "parts to split (train, val and test); give more text")
        cuts, n = [0], len(text)
        for i, held in enumerate((val_fraction + test_fraction, test_fraction)[:parts - 1]):  # each part non-empty
            cuts.append(min(max(int(n * (1 - held)), cuts[-1] + 1), n - parts + i + 1))
        names = ("train", "val", "test")[:parts]
        texts = {name: text[a:b] for name, (a, b) in zip(names, pairwise([*cuts, n]), strict=True)}
        self.vocab = [UNKNOWN, *sorted(set(texts["train"]) - {UNKNOWN})]
        self._index = {char: i for i, char in enumerate(self.vocab)}
        self.in_dim = self.out_dim = len(self.vocab)
        self.sizes = (context, context)
        self.ids = {split: self.encode(part) for split, part in texts.items()}
        short = min(self.ids, key=lambda split: len(self.ids[split]))
        check(context < len(self.ids[short]), f"data.context: windows of {context} need more than the "
              f"{len(self.ids[short])} characters of {short} text; use a smaller context or more text (data.max_chars)")

    def fingerprint(self) -> str:
        """A digest of each split's ids and the vocabulary: it changes when the files under `root` do."""
        return digest([*self.ids.values(), torch.tensor([ord(char) for char in "".join(self.vocab)])])

    def encode(self, text: str) -> Tensor:
        """Character ids of `text`, (len(text),)."""
        return torch.tensor([self._index.get(char, 0) for char in text], dtype=torch.long)

    def decode(self, ids: Tensor) -> str:
        """The text of a 1-D tensor of ids."""
        return "".join(self.vocab[i] for i in ids.tolist())

    def batch(self, n: int, generator: torch.Generator, size: int | None = None, split: str = "train") -> Batch:
        ids, size = self._ids_of(split), self.draw_size(size, generator)
        check(size < len(ids), f"chars: size {size} needs more than {len(ids)} characters of {split} text; "
                               "use smaller windows or more text (data.max_chars)")
        starts = torch.randint(0, len(ids) - size, (n, 1), generator=generator)
        windows = ids[starts + torch.arange(size + 1)]
        return windows[:, :-1], windows[:, 1:]

    def eval_set(self, n: int, size: int | None = None, seed: int = 0) -> Batch:
        """Random windows of the test text (else the validation text), the same for the same (n, size, seed)."""
        split = "test" if "test" in self.ids else "val"
        return self.batch(n, torch.Generator().manual_seed(seed), size, split=split)

    def val_set(self, n: int, size: int | None = None, seed: int = 0) -> Batch:
        """Random windows of the validation text, the same for the same (n, size, seed)."""
        return self.batch(n, torch.Generator().manual_seed(seed), size, split="val")

    def split(self, name: str, size: int | None = None) -> Batch:
        """Split `name` ('train', 'val' or 'test') cut into consecutive windows of `size` (default `context`)."""
        ids, size = self._ids_of(name), self.sizes[0] if size is None else size
        check(isinstance(size, int) and size >= 1, f"chars: size must be a positive integer, got {size!r}")
        count = (len(ids) - 1) // size
        check(count >= 1, f"chars: the {name} text ({len(ids)} characters) is shorter than one window of {size}")
        return ids[:count * size].view(count, size), ids[1:count * size + 1].view(count, size)

    def _ids_of(self, split: str) -> Tensor:
        check(split in self.ids, f"chars: unknown split {split!r}; choose one of: {', '.join(self.ids)}")
        return self.ids[split]


def _read(root: Path, patterns: list[str], max_chars: int) -> str:
    """The text of the matching files, in `_files`' order, up to `max_chars` characters."""
    parts, total = [], 0
    for path in _files(root, patterns):
        if total >= max_chars:
            break
        try:
            parts.append(path.read_text(encoding="utf-8", errors="replace")[:max_chars - total])
        except OSError as error:
            raise ConfigError(f"data.root: cannot read '{path}' ({error.strerror}); fix or remove it, or narrow "
                              f"data.patterns") from None
        total += len(parts[-1])
    return "".join(parts)


def _files(root: Path, patterns: list[str]) -> Iterator[Path]:
    """Files under `root` whose names match any pattern: each folder's files, then its subfolders, sorted."""
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in SKIP_DIRS and not d.startswith("."))
        yield from (Path(folder, name) for name in sorted(names) if any(fnmatchcase(name, p) for p in patterns))
