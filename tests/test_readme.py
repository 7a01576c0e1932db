"""The README's Python examples run as written."""

import re
import shutil
from pathlib import Path

import pytest

from routing_data import generated

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A copy of the repository's layout in a temporary folder: configs/route.yaml and docs/ as they are, and what
    `mor route train` leaves in runs/router (a small TF-IDF router here), so the examples never read or write the
    repository's own runs/ (its router, its state file)."""
    from mor.system.head import HeadConfig, LabelHead

    folder = tmp_path_factory.mktemp("readme")
    (folder / "configs").mkdir()
    shutil.copy(ROOT / "configs/route.yaml", folder / "configs/route.yaml")
    shutil.copytree(ROOT / "docs", folder / "docs")
    rows = generated(20)
    LabelHead.fit([r["text"] for r in rows], [r["label"] for r in rows], HeadConfig(encoder="tfidf")).save(
        folder / "runs/router")
    return folder


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    namespace: dict = {"__name__": "__main__"}  # as a script runs them, guarded parts included
    for block in BLOCKS[: index + 1]:  # later blocks may use names from earlier ones
        exec(compile(block, f"README.md example {index}", "exec"), namespace)
    if "system" in namespace:  # the routing example kept its state in the temporary folder, not the repository
        store = namespace["system"].store
        assert store.path.resolve() == workspace.resolve() / "runs/route-state.sqlite" and store.path.is_file()
