"""The routing benchmark's quick run (numbers not asserted: they belong to docs/BENCHMARKS.md, not to tests)."""

import json

import pytest
from benchmarks import routing

from mor.system.encoders import minilm_path
from mor.system.minilm import native_bf16
from routing_data import SHARED


@pytest.mark.skipif(not (SHARED / "train.jsonl").is_file(), reason="the shared routing dataset is not present")
def test_routing_benchmark_quick_run_writes_its_tables(tmp_path):
    routing.run(quick=True, out_dir=str(tmp_path), data=SHARED)
    saved = json.loads((tmp_path / "route.json").read_text())
    routers = saved["quality"]["routers"]
    fp32_row = {"mor default, fp32 routing"} if native_bf16() and minilm_path() is not None else set()
    chat = {"mor default, after a system prompt", "mor default, as the third turn"}
    assert set(routers) == {"tfidf + LR (reference)", "mor default"} | chat | fp32_row
    assert all(routers[row]["accuracy"] == routers["mor default"]["accuracy"] for row in chat)
    assert all(0 <= r["accuracy"] <= 1 and r["latency_ms"]["p50"] > 0 for r in routers.values())
    assert saved["scaling"]["experts"] == [5, 50] and sum(saved["load"]["calls"].values()) == 64
    encoder = saved["encoder"]
    assert (encoder is not None) == (minilm_path() is not None)
    if encoder is not None:  # as shipped; with plain weights; with transformers' forward; fp32 packed and plain
        assert len(encoder["ms_per_request"]) == (5 if fp32_row else 3)
        assert len(encoder["ratios"]) == (4 if fp32_row else 2)
    startup = saved["startup"]
    assert (startup is not None) == (minilm_path() is not None)
    if startup is not None:
        assert set(startup["s"]) == {"router", "router + transformers"} and startup["ratio"]["median"] > 0
    assert "coefficient of variation" in (tmp_path / "route.md").read_text()
