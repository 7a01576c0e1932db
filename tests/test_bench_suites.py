"""The tabular and hidden-task-mix suites' quick versions write well-formed tables (numbers in range, not asserted)."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

from benchmarks import hidden_mix, tabular
from typer.testing import CliRunner

from mor import cli


def test_tabular_quick_run_writes_one_row_per_dataset_and_model(tmp_path):
    tabular.run(quick=True, out_dir=str(tmp_path))
    saved = json.loads((tmp_path / "tabular.json").read_text())
    markdown = (tmp_path / "tabular.md").read_text()
    assert (tmp_path / "tabular.png").stat().st_size > 0 and saved["machine"]["cpu"]
    assert {r["kind"] for r in saved["datasets"].values()} == {"classification", "regression"}
    for name, result in saved["datasets"].items():
        assert set(result["summary"]) == set(tabular.MODELS)
        assert result["parameters"]["mor"] == result["parameters"]["moe"]
        for kind, summary in result["summary"].items():
            assert len(result["per_fold"][kind]) == result["folds"]
            assert all(math.isfinite(v) for s in summary.values() for v in s.values())
            if result["kind"] == "classification":
                assert 0 <= summary["accuracy"]["mean"] <= 1
            else:
                assert summary["r2"]["mean"] <= 1 and summary["rmse"]["mean"] >= 0
        assert markdown.count(f"| {name} |") == len(tabular.MODELS) and f"- {name}:" in markdown
    assert "| dataset | model | parameters | score (mean ± std) | RMSE | steps | fit s |" in markdown


def test_hidden_mix_quick_run_writes_accuracy_per_task_and_routing(tmp_path):
    results = hidden_mix.run(quick=True, out_dir=str(tmp_path))
    saved = json.loads((tmp_path / "mix.json").read_text())
    markdown = (tmp_path / "mix.md").read_text()
    assert (tmp_path / "mix.png").stat().st_size > 0 and saved["machine"]["cpu"]
    assert set(saved["models"]) == set(hidden_mix.KINDS)
    sizes = {str(size) for size in hidden_mix.SIZES}
    for model in saved["models"].values():
        measured = [model["matched"], *([model["own_rule"]] if "own_rule" in model else [])]
        for by_size in measured:
            assert set(by_size) == sizes
            for m in by_size.values():
                assert set(m["accuracy"]) == set(saved["tasks"]) and m["flops"] > 0
                assert all(0 <= a <= 1 for a in [*m["accuracy"].values(), m["mean_accuracy"]])
    routing = saved["models"]["mor"]["matched"][str(hidden_mix.SIZES[0])]["routing"]
    experts = results["recipe"]["model"]["num_experts"]
    assert 0 <= routing["mutual_information"] <= math.log2(min(len(saved["tasks"]), experts)) + 1e-9
    assert all(math.isclose(sum(row), 1) for row in routing["matrix"])
    assert "I(task; expert)" in markdown and "## Against the goals" in markdown


def test_bench_all_runs_every_suite(tmp_path, monkeypatch):
    def fake(module: str) -> SimpleNamespace:
        def run(quick: bool, out_dir: str, task: str = "") -> None:
            suite = next(s for s, (m, options) in cli.SUITES.items() if m == module and options.get("task", "") == task)
            Path(out_dir, f"{suite}.md").write_text(f"{suite} {quick}")
        return SimpleNamespace(run=run)

    monkeypatch.setattr(cli, "_load_benchmark", fake)
    result = CliRunner().invoke(cli.app, ["bench", "all", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert all(f"{suite} True" in result.output for suite in cli.SUITES)
