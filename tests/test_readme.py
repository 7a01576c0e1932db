"""The README's Python examples run as written."""

import re
from pathlib import Path

import pytest

from routing_data import generated

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.fixture
def trained_router(monkeypatch):
    """What `mor route train` leaves in runs/router, which the routing example needs (a small TF-IDF one here)."""
    from mor.system.head import HeadConfig, LabelHead

    monkeypatch.chdir(ROOT)
    if not (ROOT / "runs/router/head.json").is_file():
        rows = generated(20)
        LabelHead.fit([r["text"] for r in rows], [r["label"] for r in rows], HeadConfig(encoder="tfidf")).save(
            ROOT / "runs/router")


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, trained_router):
    namespace: dict = {}
    for block in BLOCKS[: index + 1]:  # later blocks may use names from earlier ones
        exec(compile(block, f"README.md example {index}", "exec"), namespace)
