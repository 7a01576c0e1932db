"""The serving load test's quick version (`mor bench serve --quick`) runs in the test pass, so it never rots: a real
`mor serve` process, a second process of clients, every request answered (its speed numbers are not asserted)."""

import json

from benchmarks import serve_load


def test_serve_load_quick_run_answers_every_request_and_writes_its_tables(tmp_path):
    results = serve_load.run(quick=True, out_dir=str(tmp_path), clients=16)
    saved = json.loads((tmp_path / "serve.json").read_text())
    markdown = (tmp_path / "serve.md").read_text()
    assert saved["machine"]["cpu"] and saved["failed"] == results["failed"] == 0
    assert set(saved["served"]) == {f"{m}-{mode}" for m in serve_load.MODELS for mode in serve_load.MODES}
    for name, served in saved["served"].items():
        assert served["requests"] > 0 and served["failed"] == 0 and not served["errors"]
        assert 0 < served["p50_ms"] <= served["p99_ms"]
        assert (served["mean_batch"] > 1) if name.endswith("-batched") else served["mean_batch"] == 1
        assert f"| {name} | {served['requests']} | 0 |" in markdown
    assert set(saved["ratio"]) == set(serve_load.MODELS) and "Failed requests: 0." in markdown
