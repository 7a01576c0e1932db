"""`python -m mor …` is the `mor` command (and what `torchrun -m mor train …` launches)."""

from mor.cli import run

run()
