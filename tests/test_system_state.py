"""State that must survive a crash, a restart or a second process: expert statistics in SQLite, the trained router
folder, the data a router can be trained on, and the config values that would silently change routing."""

import asyncio
import json
import math
import os
import shutil
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mor.errors import ConfigError, MorError
from mor.system.config import load_system
from mor.system.head import HeadConfig, LabelHead
from mor.system.router import Selection
from mor.system.stats import ExpertStats
from mor.system.store import StateStore
from routing_data import generated, write_jsonl
from test_system_config import base, one_line_error, write_yaml
from test_system_core import ask, expert, make_system, run
from test_system_router import mor

# ---- expert statistics in SQLite ----

OLD_SCHEMA = """
CREATE TABLE expert_stats (
    name TEXT PRIMARY KEY, calls INTEGER NOT NULL, successes INTEGER NOT NULL, failures INTEGER NOT NULL,
    errors INTEGER NOT NULL, latency_ewma_s REAL NOT NULL);
CREATE TABLE feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, expert TEXT NOT NULL, success INTEGER NOT NULL,
    request TEXT);
INSERT INTO expert_stats VALUES ('a', 10, 2, 1, 1, 0.5);
INSERT INTO feedback (time, expert, success, request) VALUES (0, 'a', 1, 'hello');
"""


def saved(path) -> dict[str, tuple]:
    """The expert_stats rows as another process reads them: (calls, successes, failures, errors, samples)."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT name, calls, successes, failures, errors, latency_samples FROM expert_stats")
        return {name: tuple(values) for name, *values in rows}


def test_two_processes_sharing_a_state_file_keep_each_others_counts(tmp_path):
    path = tmp_path / "state.db"
    first, second = (make_system(expert("a"), store=StateStore(path)) for _ in range(2))  # e.g. two serve workers
    for _ in range(3):
        ask(first, "q")
    for _ in range(5):
        ask(second, "q")
    first.feedback("a", True)
    second.feedback("a", False)
    second.feedback("a", False)
    for system in (first, second):
        run(system.aclose())  # saves again after feedback did: only what is new since then is added
        system.store.close()
    assert saved(path) == {"a": (8, 1, 2, 0, 8)}


def test_a_restarted_system_blends_new_calls_into_the_saved_latency(tmp_path):
    store = StateStore(tmp_path / "state.db")
    store.save({"a": ExpertStats(calls=4, latency_ewma_s=5.0, latency_samples=4)})
    store.close()
    restarted = make_system(expert("a"), store=StateStore(tmp_path / "state.db"))
    ask(restarted, "q")  # a call of about a millisecond
    assert restarted.stats["a"].latency_ewma_s == pytest.approx(0.8 * 5.0, abs=0.01)
    restarted.store.close()


def test_statistics_are_saved_periodically_on_the_event_loop_not_only_on_a_clean_shutdown(tmp_path):
    config = write_yaml(tmp_path / "system.yaml", {**base(), "state": {"path": "state.db", "save_every_s": 0.3}})
    threads = threading.active_count()
    system = load_system(config)
    assert threading.active_count() == threads  # no saver thread: saves run where the statistics change

    async def serve() -> list[int]:  # one long-lived loop, as under `mor serve`
        calls = []
        for _ in range(2):
            await system.ask("q")
            calls.append(sum(row[0] for row in saved(tmp_path / "state.db").values()))
        await asyncio.sleep(0.8)
        return [*calls, sum(row[0] for row in saved(tmp_path / "state.db").values())]  # no aclose(): as after a crash

    counts = run(serve())
    assert counts[0] == 0 and counts[-1] == 2, counts  # saved save_every_s after the first call, with the second
    system.store.close()


def test_a_save_due_on_a_loop_that_closed_is_set_up_again_on_the_next_loop(tmp_path):
    system = make_system(expert("a"), store=StateStore(tmp_path / "state.db", save_every_s=0.05))
    ask(system, "q")  # on a loop of its own, closed before the save was due (as `mor route ask` does)

    async def later() -> dict:
        await system.ask("q")
        await asyncio.sleep(0.5)
        return saved(tmp_path / "state.db")

    assert run(later())["a"][0] == 2
    system.store.close()


def test_a_failed_save_keeps_its_increments_for_the_next_one(tmp_path):
    path = tmp_path / "state.db"
    store = StateStore(path)
    stats = store.load()
    stats["a"] = ExpertStats(calls=2)
    store._db.execute("PRAGMA busy_timeout = 50")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    with pytest.raises(MorError, match="cannot write"):
        store.save(stats)
    other.execute("ROLLBACK")
    other.close()
    stats["a"].calls += 1
    store.save(stats)
    store.save(stats)
    assert saved(path)["a"][0] == 3
    store.close()


def test_a_state_file_from_before_latency_samples_loads_and_keeps_working(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)
    store = StateStore(path)
    stats = store.load()
    a = stats["a"]
    assert (a.calls, a.successes, a.failures, a.errors, a.latency_ewma_s) == (10, 2, 1, 1, 0.5)
    assert a.latency_samples == 10  # the saved EWMA counts as measured, so new calls blend into it
    assert store.feedback() == [("a", True, "hello")]
    a.calls += 1
    a.latency_samples += 1
    store.save(stats)
    store.close()
    assert saved(path) == {"a": (11, 2, 1, 1, 11)}


# ---- the trained router folder ----

@pytest.fixture(scope="module")
def two_routers() -> tuple[LabelHead, LabelHead]:
    """Two small TF-IDF routers trained on different data (different labels and feature widths)."""
    first, second = generated(12), [r for r in generated(12, seed=5) if r["label"] in ("math", "code", "tool")]
    return tuple(LabelHead.fit([r["text"] for r in rows], [r["label"] for r in rows], HeadConfig(encoder="tfidf"))
                 for rows in (first, second))


def assert_one_line(err: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(err.value)
    assert "\n" not in message and all(p in message for p in parts), message


def test_an_interrupted_save_leaves_the_previous_router_working(two_routers, tmp_path, monkeypatch):
    old, new = two_routers
    folder = tmp_path / "router"
    old.save(folder)
    import mor.system.head as head_module
    real = head_module.save_file

    def disk_full(tensors, path, *args, **kwargs):
        if str(path).endswith("head.safetensors"):
            raise OSError(28, "No space left on device")
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(head_module, "save_file", disk_full)
    with pytest.raises(MorError) as caught:
        new.save(folder)
    assert_one_line(caught, str(folder), "No space left on device", "unchanged")
    loaded = LabelHead.load(folder)
    assert loaded.labels == old.labels
    assert np.allclose(loaded.proba(["Solve 2x + 3 = 11"]), old.proba(["Solve 2x + 3 = 11"]), atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["router"]  # no temporary folder left behind


def test_ctrl_c_between_the_renames_of_a_save_puts_the_previous_router_back(two_routers, tmp_path, monkeypatch):
    old, new = two_routers
    folder = tmp_path / "router"
    old.save(folder)
    import mor.system.head as head_module
    real, calls = head_module.os.replace, []

    def interrupted(source, target):
        calls.append(target)
        if len(calls) == 2:  # the old router has just been moved aside
            raise KeyboardInterrupt
        return real(source, target)

    monkeypatch.setattr(head_module.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        new.save(folder)
    monkeypatch.setattr(head_module.os, "replace", real)
    assert LabelHead.load(folder).labels == old.labels


def test_a_save_killed_between_its_renames_still_loads_and_is_completed_by_the_next(two_routers, tmp_path):
    old, new = two_routers
    folder = tmp_path / "router"
    old.save(folder)
    os.replace(folder, tmp_path / ".router.old")  # where a kill right after the first rename leaves it
    assert LabelHead.load(folder).labels == old.labels
    new.save(folder)
    assert LabelHead.load(folder).labels == new.labels and [p.name for p in tmp_path.iterdir()] == ["router"]


def test_saving_over_a_router_replaces_it_whole(two_routers, tmp_path):
    old, new = two_routers
    old.save(tmp_path / "router")
    new.save(tmp_path / "router")
    assert LabelHead.load(tmp_path / "router").labels == new.labels
    assert [p.name for p in tmp_path.iterdir()] == ["router"]


def test_saving_refuses_a_folder_that_holds_more_than_a_router(two_routers, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(MorError) as caught:
        two_routers[0].save(tmp_path)
    assert_one_line(caught, "notes.txt", "choose a new or empty one")
    assert (tmp_path / "notes.txt").read_text() == "mine" and not (tmp_path / "head.json").exists()


def test_a_folder_mixing_two_routers_is_refused_on_load(two_routers, tmp_path):
    for name, head in zip(("old", "new"), two_routers, strict=True):
        head.save(tmp_path / name)
    for part in ("tfidf.json", "tfidf.safetensors"):  # a save cut off after the encoder, as before the fix
        shutil.copy(tmp_path / "new" / part, tmp_path / "old" / part)
    with pytest.raises(MorError) as caught:
        LabelHead.load(tmp_path / "old")
    assert_one_line(caught, "head.safetensors", "different training runs", "mor route train")


def _edit_json(name: str, change: Callable[[Any], Any]) -> Callable[[Path], None]:
    def edit(folder):
        path = folder / name
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return edit


BROKEN_FILES = {
    "head.json not JSON": ("head.json", lambda f: (f / "head.json").write_text("{labels")),
    "head.json without labels": ("head.json", _edit_json("head.json", lambda m: {**m, "labels": None})),
    "head.json with an unknown config key": ("head.json", _edit_json(
        "head.json", lambda m: {**m, "config": {**m["config"], "colour": "red"}})),
    "head.json with a bad temperature": ("head.json", _edit_json("head.json", lambda m: {**m, "temperature": -1})),
    "head.json with an unknown encoder": ("head.json", _edit_json("head.json", lambda m: {**m, "encoders": ["x"]})),
    "head.safetensors missing": ("head.safetensors", lambda f: (f / "head.safetensors").unlink()),
    "tfidf.json truncated": ("tfidf.json", lambda f: (f / "tfidf.json").write_text("[{")),
    "tfidf.json not two vocabularies": ("tfidf.json", _edit_json("tfidf.json", lambda v: v[:1])),
    "tfidf.json vocabulary shifted": ("tfidf.safetensors", _edit_json(
        "tfidf.json", lambda v: [{t: i + 1 for t, i in v[0].items()}, v[1]])),
    "tfidf.safetensors corrupt": ("tfidf.safetensors", lambda f: (f / "tfidf.safetensors").write_bytes(b"\0" * 9)),
}


@pytest.mark.parametrize(("named", "damage"), BROKEN_FILES.values(), ids=BROKEN_FILES.keys())
def test_a_damaged_router_file_is_a_one_line_error_naming_it(two_routers, tmp_path, named, damage):
    two_routers[0].save(tmp_path / "router")
    damage(tmp_path / "router")
    with pytest.raises(MorError) as caught:
        LabelHead.load(tmp_path / "router")
    assert_one_line(caught, f"router {tmp_path / 'router'}: {named}", "mor route train")


# ---- training data too small to calibrate on ----

def rows_of(counts: dict[str, int]) -> list[dict]:
    return [{"text": f"{label} request number {i}", "label": label} for label, n in counts.items() for i in range(n)]


@pytest.mark.parametrize(("counts", "needed"), [
    ({"math": 10, "knowledge": 1}, "every label needs at least 2"),
    ({"math": 6, "code": 5, "tool": 5}, "at least 21 are needed"),
])
def test_route_train_on_too_little_data_is_one_line_saying_how_much_is_needed(tmp_path, counts, needed):
    data = write_jsonl(tmp_path / "small.jsonl", rows_of(counts))
    result = mor("route", "train", "--data", str(data), "--out", str(tmp_path / "router"), "--encoder", "tfidf")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert needed in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "router").exists()


def test_the_smallest_data_the_error_allows_trains():
    rows = rows_of({"math": 7, "code": 7, "tool": 7})
    head = LabelHead.fit([r["text"] for r in rows], [r["label"] for r in rows], HeadConfig(encoder="tfidf"))
    assert head.labels == ["code", "math", "tool"]
    with pytest.raises(ConfigError, match="at least 21 are needed"):
        LabelHead.fit([r["text"] for r in rows[1:]], [r["label"] for r in rows[1:]], HeadConfig(encoder="tfidf"))


# ---- config values that would silently change routing ----

def test_a_stacking_coefficient_naming_no_expert_is_refused(tmp_path):
    content = {**base(), "integration": {"mode": "stacking", "coefficients": {"a": 0.5, "modle_b": 0.5}}}
    one_line_error(ConfigError, write_yaml(tmp_path / "system.yaml", content),
                   within="integration.coefficients.modle_b: no expert of that name; experts are: a, b")
    from mor.system.router import SystemRouter
    from mor.system.system import Combine, MoRSystem

    experts = [expert("a"), expert("b")]
    with pytest.raises(ConfigError, match=r"^integration\.coefficients\.modle_b: no expert of that name"):
        MoRSystem(experts, SystemRouter([e.info for e in experts]),
                  Combine("stacking", coefficients={"a": 0.5, "modle_b": 0.5}))


@pytest.mark.parametrize(("section", "values", "field"), [
    ("router", {"threshold": math.nan}, "router.threshold"),
    ("router", {"threshold": math.inf}, "router.threshold"),
    ("router", {"weights": {"head": math.inf}}, "router.weights.head"),
    ("integration", {"mode": "stacking", "intercept": math.nan}, "integration.intercept"),
    ("integration", {"mode": "stacking", "coefficients": {"a": -math.inf}}, "integration.coefficients.a"),
])
def test_a_value_that_is_not_a_finite_number_is_refused(tmp_path, section, values, field):
    path = write_yaml(tmp_path / "system.yaml", {**base(), section: values})
    one_line_error(ConfigError, path, within=f"{field}: must be a finite number")


def test_a_router_threshold_that_is_not_a_number_is_refused_in_code_too():
    with pytest.raises(ConfigError, match=r"router\.threshold must be a finite number, got nan"):
        Selection(threshold=math.nan)
