"""Rate limits kept in a SQLite file that several processes share (`mor serve --workers N`): the same buckets as in
one process, one bucket per caller across every limiter on the file, and a failing file that still limits."""

import logging
import multiprocessing
import os
import random
import subprocess
import sys

import pytest

from mor.errors import MorError
from mor.serve import limits
from mor.serve.limits import RateLimiter, SharedRateLimiter
from mor.serve.settings import RateLimit
from test_serve_support import ROOT, Clock

LIMIT = RateLimit(requests_per_s=2.0, burst=3)


def test_shared_buckets_decide_like_buckets_in_memory(tmp_path):
    clock, rng = Clock(), random.Random(0)
    alone, shared = RateLimiter(LIMIT, clock), SharedRateLimiter(tmp_path / "limits.sqlite", LIMIT, clock)
    own = RateLimit(requests_per_s=0.5, burst=1)
    waits = []
    for _ in range(400):
        clock.now += rng.choice([0.0, 0.0, 0.1, 0.3, 1.7])
        caller, limit = rng.choice([("a", None), ("b", None), ("c", own)])
        waits.append((alone.take(caller, limit), shared.take(caller, limit)))
    assert [a for a, _ in waits] == pytest.approx([s for _, s in waits], abs=1e-9)
    assert 0.2 < sum(a > 0 for a, _ in waits) / len(waits) < 0.8  # both outcomes are exercised


@pytest.mark.parametrize("shared", [False, True], ids=["in memory", "shared"])
def test_wait_answers_what_take_would_without_spending(tmp_path, shared):
    clock = Clock()
    limiter = SharedRateLimiter(tmp_path / "limits.sqlite", LIMIT, clock) if shared else RateLimiter(LIMIT, clock)
    assert [limiter.wait("a") for _ in range(5)] == [0] * 5
    assert [limiter.take("a") for _ in range(3)] == [0, 0, 0]  # the whole burst: the waits spent nothing
    assert limiter.wait("a") == pytest.approx(0.5) and limiter.take("a") == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.wait("a") == limiter.wait("a") == 0 and limiter.take("a") == 0 and limiter.wait("a") > 0
    assert limiter.wait("b") == 0 and RateLimiter(None, clock).wait("a") == 0  # another bucket; no limit at all


def test_limiters_on_one_file_share_each_callers_bucket(tmp_path):
    clock = Clock()
    first, second = (SharedRateLimiter(tmp_path / "limits.sqlite", LIMIT, clock) for _ in range(2))
    assert [limiter.take("a") for limiter in (first, second, first)] == [0, 0, 0]
    assert second.take("a") == pytest.approx(0.5)  # the burst of 3 is spent, whichever limiter spent it
    assert first.take("b") == 0  # another caller has its own bucket
    clock.now += 0.5
    assert second.take("a") == 0 and first.take("a") > 0


def _burst(path: str, start, results) -> None:
    """One process: wait for the others, then ask for 20 requests of caller 'a'; put how many were allowed."""
    limiter = SharedRateLimiter(path, RateLimit(requests_per_s=1e-6, burst=25))
    start.wait()
    results.put(sum(limiter.take("a") == 0 for _ in range(20)))


def test_processes_taking_at_once_never_spend_a_token_twice(tmp_path):
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(4), context.Queue()
    processes = [context.Process(target=_burst, args=(str(tmp_path / "limits.sqlite"), start, results))
                 for _ in range(4)]
    for process in processes:
        process.start()
    allowed = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    assert sum(allowed) == 25, allowed  # 80 asked at once, exactly the burst allowed across all four


def test_buckets_full_again_are_pruned_and_a_clock_gone_back_refills(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "PRUNE_EVERY", 10)
    clock = Clock()
    shared = SharedRateLimiter(tmp_path / "limits.sqlite", LIMIT, clock)
    for caller in range(9):
        shared.take(f"caller{caller}")
    clock.now += 0.1
    shared.take("busy"), shared.take("busy")  # the 10th and 11th takes: the 10th pruned nobody (none full yet)
    assert shared._db.execute("SELECT COUNT(*) FROM buckets").fetchone()[0] == 10
    clock.now += 1.0  # the nine single-request buckets are full again; "busy" (two spent) is not
    for _ in range(9):
        shared.take("busy")
    assert [row[0] for row in shared._db.execute("SELECT caller FROM buckets")] == ["busy"]
    clock.now -= 500  # a reboot: the monotonic clock starts again below the saved times
    assert [shared.take("busy") for _ in range(4)][:3] == [0, 0, 0]


def test_a_failing_file_logs_and_still_limits_in_this_process(tmp_path, caplog):
    clock = Clock()
    shared = SharedRateLimiter(tmp_path / "limits.sqlite", LIMIT, clock)
    shared._db.close()
    with caplog.at_level(logging.WARNING, logger="mor.serve"):
        waits = [shared.take("a") for _ in range(4)]
        looked = shared.wait("a")
    assert waits[:3] == [0, 0, 0] and waits[3] > 0 and looked == pytest.approx(waits[3])
    assert "counting in this process" in caplog.text


def test_an_unusable_file_is_a_one_line_error(tmp_path):
    with pytest.raises(MorError, match=r"rate limits: cannot use .* set MOR_RATE_LIMITS to a writable file"):
        SharedRateLimiter(tmp_path / "missing" / "limits.sqlite", LIMIT)
    done = subprocess.run([sys.executable, "-m", "mor", "serve", "--config", str(ROOT / "configs" / "serve.yaml")],
                          env={**os.environ, "MOR_RATE_LIMITS": str(tmp_path / "missing" / "limits.sqlite")},
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "set MOR_RATE_LIMITS to a writable file" in done.stderr
