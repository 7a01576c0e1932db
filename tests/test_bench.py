"""The benchmarks' quick versions run in the test pass, so they never rot (their numbers are not asserted)."""

import json

from benchmarks import layer_speed


def test_layer_benchmark_quick_run_writes_its_tables(tmp_path):
    results = layer_speed.run(quick=True, out_dir=str(tmp_path))
    saved = json.loads((tmp_path / "layer.json").read_text())
    markdown = (tmp_path / "layer.md").read_text()
    assert saved["layers"] and {"mor", "dense"} <= set(saved["layers"][0]["tokens_per_s"])
    assert "MoRLayer vs dense" in markdown and "Reflection with halting" in markdown
    assert "## Activation memory" in markdown
    kept = saved["memory"][0]["saved_bytes"]
    assert 0 < kept["mor"] < kept["dense"]  # the fused mixture keeps less for backward than dense SwiGLU
    halting = results["halting"]
    assert halting["min_steps"] < halting["max_steps"] and 0 < halting["step_fraction"] < 1
