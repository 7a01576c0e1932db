"""Every third-party package the library imports is declared in pyproject.toml (a plain `pip install .` works).

An import guarded by `try: … except ImportError` may come from an optional extra instead.
"""

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _names(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Import):
        return {alias.name.split(".")[0] for alias in node.names}
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return {node.module.split(".")[0]}
    return set()


def _guarded(node: ast.Try) -> bool:
    return any(isinstance(h.type, ast.Name) and h.type.id in {"ImportError", "ModuleNotFoundError"}
               for h in node.handlers)


def imported_top_levels() -> tuple[set[str], set[str]]:
    """Third-party top-level packages imported by mor: (required, guarded by an ImportError handler)."""
    required, optional = set(), set()
    for path in (ROOT / "src" / "mor").rglob("*.py"):
        tree = ast.parse(path.read_text())
        guarded = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try) and _guarded(t)
                   for stmt in t.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            (optional if id(node) in guarded else required).update(_names(node))
    outside = set(sys.stdlib_module_names) | {"mor"}
    return required - outside, optional - outside


def _declared(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[ ]", d)[0].lower().replace("_", "-") for d in requirements}


def _missing(names: set[str], declared: set[str]) -> dict[str, list[str]]:
    distributions = packages_distributions()
    return {name: distributions.get(name, [name]) for name in names
            if not {d.lower().replace("_", "-") for d in distributions.get(name, [name])} & declared}


def test_every_imported_package_is_a_declared_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = _declared(project["dependencies"])
    extras = core | {name for group in project["optional-dependencies"].values() for name in _declared(group)}
    required, optional = imported_top_levels()
    assert not _missing(required, core), f"imported but not in project.dependencies: {_missing(required, core)}"
    assert not _missing(optional, extras), f"imported but in no extra: {_missing(optional, extras)}"
