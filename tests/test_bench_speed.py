"""The speed suite's quick version writes well-formed results: positive finite timings, one row per model kind,
batches 1 and 256, and ratios that agree with the raw numbers (their values are not asserted)."""

import json
import math

import pytest
import torch
from benchmarks import speed

from mor.train.run import LABELS

KINDS = {"mor", "reflection", "moe", "dense"}
BATCHES = {str(b) for b in speed.BATCHES}


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[dict, str]:
    """One quick run for every test here: its JSON as written (not the returned dict) and its markdown."""
    out = tmp_path_factory.mktemp("speed")
    speed.run(quick=True, out_dir=str(out))
    assert (out / "speed.png").stat().st_size > 0
    return json.loads((out / "speed.json").read_text()), (out / "speed.md").read_text()


def positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def check_timing(t: dict, names: set[str], batch: int) -> None:
    """Per-example medians and p90s positive and ordered; examples/s their inverse; every paired ratio spans
    the ratio of medians (a median of a / b per round lies between its smallest and largest a / b)."""
    assert t["batch"] == batch and set(t["median_s"]) == set(t["p90_s"]) == set(t["examples_per_s"]) == names
    assert set(t["speedup"]) == names - {t["baseline"]}
    for name in names:
        assert positive(t["median_s"][name]) and t["p90_s"][name] >= t["median_s"][name]
        assert math.isclose(t["examples_per_s"][name] * t["median_s"][name], 1)
    for name, ratio in t["speedup"].items():
        of_medians = t["median_s"][t["baseline"]] / t["median_s"][name]
        assert ratio["min"] * (1 - 1e-9) <= of_medians <= ratio["max"] * (1 + 1e-9)
        assert ratio["min"] <= ratio["median"] <= ratio["max"]


def test_quick_run_times_training_and_inference_of_every_kind(quick):
    saved, markdown = quick
    assert saved["machine"]["cpu"] and saved["quick"] and positive(saved["wall_s"])
    assert set(saved["models"]) == KINDS and saved["recipe"]["matched"] == "FLOPs"
    assert all(positive(m["flops"]) and m["parameters"] > 0 for m in saved["models"].values())
    cuda = [["cuda", None]] if torch.cuda.is_available() else []
    assert [[s["device"], s["threads"]] for s in saved["settings"]] == [["cpu", 1], *cuda]
    for setting in saved["settings"]:
        check_timing(setting["training"], KINDS, saved["recipe"]["train_batch"])
        assert set(setting["latency"]) == BATCHES
        for batch, latency in setting["latency"].items():
            check_timing(latency, KINDS, int(batch))
    settings = len(saved["settings"])
    assert "## What this shows" in markdown and "matched FLOPs" in markdown
    for kind in KINDS:  # a model row; per setting a training row, and a latency and a halting row per batch size
        halting_rows = len(BATCHES) if kind in speed.REFLECTING else 0
        assert markdown.count(f"| {LABELS[kind]} |") == 1 + settings * (1 + len(BATCHES) + halting_rows)


def test_quick_run_times_adaptive_halting_against_fixed_depth(quick):
    saved, markdown = quick
    profiles = saved["halting_profile"]
    assert set(profiles) == {"mor", "reflection"}
    for kind, profile in profiles.items():
        assert saved["models"][kind]["trained_steps"] > 0
        assert all(0 <= a <= 1 for a in profile["accuracy"].values())
        assert set(profile["step_fraction"]) == BATCHES
        assert all(0 < f <= 1 for f in profile["step_fraction"].values())
        for setting in saved["settings"]:
            for batch, h in setting["halting"][kind].items():
                check_timing(h, {"adaptive", "fixed"}, int(batch))
                paired = h["speedup"]["adaptive"]  # total-time fraction = a weighted mean of the per-round ones
                assert 1 / paired["max"] * (1 - 1e-9) <= h["wall_fraction"] <= 1 / paired["min"] * (1 + 1e-9)
    assert "## Adaptive halting (trained models)" in markdown and "saving realised" in markdown


def test_quick_run_includes_the_layer_benchmark(quick):
    saved, markdown = quick
    assert saved["layer"] and {row["pass"] for row in saved["layer"]} == {"forward", "forward+backward"}
    for row in saved["layer"]:
        assert {"mor", "dense"} <= set(row["tokens_per_s"]) and all(map(positive, row["tokens_per_s"].values()))
    assert "## Layer: MoRLayer vs dense SwiGLU" in markdown


def test_a_verdict_does_not_pick_a_side_the_medians_contradict():
    agree = {"baseline": "dense", "median_s": {"dense": 2.0, "mor": 1.0}, "speedup": {"mor": {"median": 1.8}}}
    assert speed.versus(agree, "mor") == "1.80× faster than dense"
    torn = {"baseline": "dense", "median_s": {"dense": 0.151, "mor": 0.144}, "speedup": {"mor": {"median": 0.73}}}
    assert speed.versus(torn, "mor") == ("level with dense within this run's noise (paired rounds 0.73×, "
                                         "ratio of medians 1.05×)")
