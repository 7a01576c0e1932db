"""The benchmarks' quick versions run in the test pass, so they never rot (their numbers are not asserted)."""

import json

import torch
import torch.nn.functional as F
from benchmarks import layer_speed
from benchmarks.common import flop_counter

from mor.nn import MoRLayer


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


def test_the_flop_counter_counts_a_fused_mixtures_backward_and_attention_on_cpu():
    torch.manual_seed(0)
    layer, x = MoRLayer.swiglu(16, 32, 4, k=2), torch.randn(64, 16, requires_grad=True)
    with flop_counter() as forward:
        layer(x)
    with flop_counter() as step:
        layer(x)[0].sum().backward()
    assert step.get_total_flops() == 3 * forward.get_total_flops()  # each product: once forward, twice backward
    q = torch.randn(2, 4, 8, 16)
    with flop_counter() as attention:
        F.scaled_dot_product_attention(q, q, q, is_causal=True)
    assert attention.get_total_flops() == 2 * (2 * 2 * 4 * 8 * 8 * 16)  # QKᵀ and AV, 2·b·h·s·s·d each
