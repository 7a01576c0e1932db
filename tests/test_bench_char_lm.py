"""The char-LM suite's quick version writes well-formed results: one row per FFN kind at matched FLOPs, finite
bits/char that training lowered below chance, a curve monotone in compute, MoR's depths and the verdict."""

import itertools
import json
import math

from benchmarks import char_lm


def test_char_lm_quick_run_writes_matched_models_and_a_quality_vs_compute_curve(tmp_path):
    char_lm.run(quick=True, out_dir=str(tmp_path))
    saved = json.loads((tmp_path / "chars.json").read_text())
    markdown = (tmp_path / "chars.md").read_text()
    assert (tmp_path / "chars.png").stat().st_size > 0 and saved["machine"]["cpu"] and saved["quick"]
    models, recipe = saved["models"], saved["recipe"]
    assert list(models) == list(char_lm.KINDS)
    chance = math.log2(recipe["vocab"])
    for kind, m in models.items():
        assert markdown.count(f"| {char_lm.LABELS[kind]} |") == 1
        assert math.isclose(m["flops_per_token"], models["mor"]["flops_per_token"], rel_tol=0.02)
        assert math.isclose(m["train_flops_per_step"], models["mor"]["train_flops_per_step"], rel_tol=0.03)
        assert m["steps"] == recipe["steps"] == char_lm.QUICK.steps and m["train_s"] > 0
        assert (m["active_parameters"] == m["parameters"]) == (kind == "dense")
        assert 0 < m["active_parameters"] <= m["parameters"]
        curve = m["curve"]
        assert len(curve) == char_lm.QUICK.points and curve[-1]["bits_per_char"] == m["bits_per_char"]
        for before, after in itertools.pairwise(curve):
            assert before["step"] < after["step"] and before["train_flops"] < after["train_flops"]
            assert before["train_s"] < after["train_s"]
        assert all(0 < p["bits_per_char"] < chance and math.isfinite(p["bits_per_char"]) for p in curve)
    depths = models["mor"]["depths"]
    assert models["mor"]["mean_steps"] == char_lm.MODEL["train_steps"]
    assert [d["mean_steps"] for d in depths.values()] == list(char_lm.DEPTHS)
    flops = [d["flops_per_token"] for d in depths.values()]
    assert flops == sorted(flops) and all(0 < d["bits_per_char"] < chance for d in depths.values())
    curve_table = markdown.split("## Quality vs compute")[1].split("##")[0]
    assert sum(line.startswith("| ") for line in curve_table.splitlines()) == char_lm.QUICK.points + 1
    assert "## Against the goals" in markdown and "Matched FLOPs per token" in markdown
