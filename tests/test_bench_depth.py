"""The reasoning-depth suite's quick version trains every kind on every seed and writes consistent tables."""

import json

from benchmarks import reasoning_depth


def test_quick_run_scores_every_kind_and_seed_at_every_size(tmp_path):
    results = reasoning_depth.run(quick=True, out_dir=str(tmp_path), seeds=2, workers=2)
    saved = json.loads((tmp_path / "depth.json").read_text())
    markdown = (tmp_path / "depth.md").read_text()
    assert (tmp_path / "depth.png").stat().st_size > 0 and saved["machine"]["cpu"]
    assert sorted((j["kind"], j["seed"]) for j in saved["jobs"]) == sorted(
        (kind, seed) for kind in reasoning_depth.KINDS for seed in range(2))
    plan = results["plan"]
    for job in results["jobs"]:
        assert set(job["sizes"]) == set(plan["examples"]) and job["train_s"] > 0 and job["eval_s"] > 0
        for m in job["sizes"].values():
            if job["kind"] in ("mor", "reflection"):
                assert set(m["fixed"]) == set(plan["depths"]) and m["best_accuracy"] == max(m["fixed"].values())
                assert all(0 < r["mean_steps"] <= max(plan["depths"]) for r in m["rules"].values())
            else:
                assert "fixed" not in m and 0 <= m["accuracy"] <= 1
    parameters = {j["kind"]: j["parameters"] for j in results["jobs"]}
    assert all(abs(p - parameters["mor"]) / parameters["mor"] < 0.15 for p in parameters.values()), parameters
    assert markdown.count("| MoR (2 experts, top-1) |") == 2 + 2 * len(plan["examples"])
    assert "## Against the goals" in markdown and "of 2 seeds" in markdown and "| train s | eval s |" in markdown
    assert "The accuracy goal under each adaptive rule" in markdown
    dense = next(j for j in results["jobs"] if j["kind"] == "dense")
    miss = dense["parameters"] / parameters["mor"] - 1  # the nearest whole width misses MoR's count: say by how much
    assert f"width {dense['dim']}, {dense['parameters']:,} parameters ({miss:+.1%})" in markdown


def test_the_accuracy_goal_is_counted_under_each_rule():
    def sized(a: float, b: float) -> dict:
        return {"rules": {"critic": {"accuracy": a}, "stable": {"accuracy": b}}}

    result = {"sizes": {32: sized(1.0, 0.99), 128: sized(0.99, 1.0), 512: sized(0.95, 1.0)}}
    assert reasoning_depth.meets_accuracy_goals(result)  # the first rule: exactly at every goal
    assert reasoning_depth.meets_accuracy_goals(result, "critic")
    assert not reasoning_depth.meets_accuracy_goals(result, "stable")  # 99 % at 32 bits, where 100 % is asked


def test_each_task_name_builds_its_task_with_the_training_sizes():
    from mor.cli import SUITES

    tasks = {name: reasoning_depth.task_of(reasoning_depth.config(name, 10, 0)) for name in reasoning_depth.DATA}
    assert [type(t).__name__ for t in tasks.values()] == ["PrefixSum", "Addition", "Addition"]
    assert not tasks["addition"].carry_chain and tasks["carry"].carry_chain
    assert all(tuple(t.sizes) == reasoning_depth.TRAIN_SIZES for t in tasks.values())
    assert SUITES["depth-carry"] == ("reasoning_depth", {"task": "carry"})
