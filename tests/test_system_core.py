"""The orchestration of mor.system without a trained head: statistics and circuit breaker, the SQLite state store,
the router's hints/tools/load/threshold logic, and MoRSystem's fallbacks, reflection, integration modes, run-time
registration, feedback and load spreading, with real CallableExperts and a real HTTP server on loopback."""

import asyncio
import json
import sqlite3
import statistics
import threading
import time
from collections import Counter

import pytest

from mor.errors import ConfigError, MorError
from mor.system import ExpertInfo, Hints, Request
from mor.system.experts.callable import CallableExpert
from mor.system.experts.errors import ExpertError, RequestError
from mor.system.experts.openai_chat import OpenAIChatExpert
from mor.system.integration import ExpertsFailed
from mor.system.request import MAX_REQUEST_CHARS
from mor.system.router import RouterWeights, Selection, SystemRouter
from mor.system.stats import Breaker, ExpertStats
from mor.system.store import StateStore
from mor.system.system import Combine, MoRSystem, Reflection

TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}]


def replying(text: str, confidence: float = 0.5):
    async def fn(question: str):
        return text, confidence
    return fn


async def broken(question: str):
    raise RuntimeError("down")


def info(name: str, *, keywords=(), patterns=(), capabilities=("general",), timeout_s: float = 5.0,
         max_concurrency: int = 4, cost_per_call: float = 0.0) -> ExpertInfo:
    return ExpertInfo(name, capabilities=list(capabilities), timeout_s=timeout_s, max_concurrency=max_concurrency,
                      cost_per_call=cost_per_call, hints=Hints(keywords=list(keywords), patterns=list(patterns)))


def expert(name: str, fn=None, **fields) -> CallableExpert:
    """A callable expert; answers its own name with confidence 0.5 unless `fn` says otherwise."""
    return CallableExpert(info(name, **fields), fn or replying(name))


def make_system(*experts, top_k: int = 1, threshold: float | None = None, default: str | None = None,
                mode: str = "weighted", synthesizer: str | None = None, rounds: int = 0, min_confidence: float = 0.5,
                breaker: Breaker | None = None, store: StateStore | None = None, seed: int = 0) -> MoRSystem:
    router = SystemRouter([e.info for e in experts], selection=Selection(top_k, threshold, 0.0, default), seed=seed)
    return MoRSystem(list(experts), router, Combine(mode, synthesizer), Reflection(rounds, min_confidence),
                     breaker, store)


def run(coroutine, within_s: float = 10.0):
    """Run `coroutine`, failing the test instead of hanging when it takes longer than `within_s`."""
    return asyncio.run(asyncio.wait_for(coroutine, within_s))


def ask(system: MoRSystem, query, within_s: float = 10.0):
    return run(system.ask(query), within_s)


def ask_concurrently(system: MoRSystem, query: str, n: int, within_s: float = 10.0) -> list:
    async def together():
        return await asyncio.gather(*(system.ask(query) for _ in range(n)))
    return run(together(), within_s)


def answered_by(reply) -> list[tuple[str, bool]]:
    return [(a.expert, a.ok) for a in reply.answers]


# ---- statistics and circuit breaker ----

def call(stats: ExpertStats, breaker: Breaker, error: str | None = None, latency_s: float = 0.1) -> None:
    stats.started()
    stats.finished(latency_s, error, breaker)


def test_breaker_opens_after_n_consecutive_failures():
    stats, breaker = ExpertStats(), Breaker(failures_to_open=3, cooldown_s=60)
    call(stats, breaker, "boom")
    call(stats, breaker, "boom")
    assert stats.available()
    call(stats, breaker, "boom")
    assert not stats.available() and stats.errors == 3 and stats.last_error == "boom"


def test_a_success_resets_the_consecutive_failure_count():
    stats, breaker = ExpertStats(), Breaker(failures_to_open=2, cooldown_s=60)
    for error in ("boom", None, "boom", None, "boom"):
        call(stats, breaker, error)
    assert stats.available() and stats.errors == 3 and stats.consecutive_failures == 1


def test_breaker_half_opens_after_cooldown_then_a_failure_reopens_and_a_success_closes():
    stats, breaker = ExpertStats(), Breaker(failures_to_open=2, cooldown_s=5.0)
    call(stats, breaker, "boom")
    call(stats, breaker, "boom")
    reopens_at = stats.open_until
    assert not stats.available(reopens_at - 0.01) and stats.available(reopens_at)
    call(stats, breaker, "boom")  # the trial call after the cooldown fails: open again at once
    assert stats.open_until > reopens_at and not stats.available(reopens_at)
    call(stats, breaker, None)
    assert stats.available() and stats.consecutive_failures == 0 and stats.open_until == 0.0


def test_a_refusal_is_recorded_but_neither_opens_nor_closes_the_breaker():
    stats, breaker = ExpertStats(), Breaker(failures_to_open=2, cooldown_s=60)
    call(stats, breaker, "boom")
    for _ in range(3):
        stats.started()
        stats.finished(0.1, "cannot read this", breaker, refused=True)
    assert stats.available() and (stats.errors, stats.refusals, stats.consecutive_failures) == (1, 3, 1)
    assert stats.last_error == "cannot read this" and stats.as_dict()["refusals"] == 3
    call(stats, breaker, "boom")
    assert not stats.available()


def refuse(stats: ExpertStats, breaker: Breaker, by_endpoint: bool = True) -> None:
    stats.started()
    stats.finished(0.1, "HTTP 400: unknown parameter", breaker, refused=True, by_endpoint=by_endpoint)


def test_a_run_of_endpoint_refusals_opens_the_breaker_and_a_success_between_them_resets_it():
    stats, breaker = ExpertStats(), Breaker(failures_to_open=2, cooldown_s=60, refusals_to_open=3)
    for _ in range(2):
        refuse(stats, breaker)
    call(stats, breaker, None)
    for _ in range(2):
        refuse(stats, breaker)
    assert stats.available() and stats.refusals == 4 and stats.errors == 0
    refuse(stats, breaker)
    assert not stats.available() and stats.consecutive_failures == 0
    with pytest.raises(ConfigError, match="refusals_to_open must be ≥ 1"):
        Breaker(refusals_to_open=0)


def test_a_local_experts_refusals_never_open_its_breaker_however_many_a_client_sends():
    stats, breaker = ExpertStats(), Breaker(cooldown_s=60, refusals_to_open=3)
    for _ in range(10):
        refuse(stats, breaker, by_endpoint=False)
    assert stats.available() and stats.refusals == 10


def test_success_rate_is_the_beta_posterior_mean_of_feedback():
    stats = ExpertStats()
    assert stats.success_rate == 0.5
    for verdict in (True, True, True, False):
        stats.feedback(verdict)
    assert stats.success_rate == pytest.approx(4 / 6)
    assert stats.as_dict()["success_rate"] == pytest.approx(0.6667)


def test_latency_is_an_exponentially_weighted_moving_average():
    stats, breaker = ExpertStats(), Breaker()
    call(stats, breaker, latency_s=1.0)
    assert stats.latency_ewma_s == pytest.approx(1.0)
    call(stats, breaker, latency_s=2.0)
    assert stats.latency_ewma_s == pytest.approx(0.2 * 2.0 + 0.8 * 1.0)
    assert (stats.calls, stats.in_flight) == (2, 0)


def test_first_latency_sample_is_taken_as_is_when_calls_overlap():
    stats, breaker = ExpertStats(), Breaker()
    stats.started()
    stats.started()
    stats.finished(1.0, None, breaker)
    assert stats.latency_ewma_s == pytest.approx(1.0)


def test_breaker_settings_are_checked():
    with pytest.raises(ConfigError, match="failures_to_open must be ≥ 1"):
        Breaker(failures_to_open=0)
    with pytest.raises(ConfigError, match="cooldown_s must be ≥ 0"):
        Breaker(cooldown_s=-1)


# ---- SQLite state store ----

@pytest.fixture
def store_path(tmp_path):
    return tmp_path / "state" / "mor.db"


def test_stats_and_feedback_persist_across_store_instances(store_path):
    first = StateStore(store_path)
    first.save({"llm": ExpertStats(calls=3, successes=2, failures=1, errors=1, latency_ewma_s=0.25)})
    first.record_feedback("llm", True, "what is 2+2")
    first.record_feedback("llm", False, None)
    first.close()
    second = StateStore(store_path)
    loaded = second.load()["llm"]
    assert (loaded.calls, loaded.successes, loaded.failures, loaded.errors, loaded.latency_ewma_s) == (3, 2, 1, 1, 0.25)
    assert (loaded.in_flight, loaded.open_until) == (0, 0.0)  # cooldowns and load start fresh
    assert second.feedback() == [("llm", True, "what is 2+2"), ("llm", False, None)]
    second.close()


def test_store_uses_write_ahead_logging(store_path):
    StateStore(store_path).close()
    with sqlite3.connect(store_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_failed_save_rolls_back_and_leaves_the_last_committed_state(store_path):
    store = StateStore(store_path)
    store.save({"a": ExpertStats(calls=3)})
    with pytest.raises(sqlite3.IntegrityError):  # the second row breaks NOT NULL after the first was written
        store.save({"a": ExpertStats(calls=99), "b": ExpertStats(calls=None)})
    assert {name: s.calls for name, s in store.load().items()} == {"a": 3}
    store.save({"a": ExpertStats(calls=4)})  # the store is usable again
    store.close()
    reopened = StateStore(store_path)
    assert reopened.load()["a"].calls == 4
    reopened.close()


def test_a_save_that_finds_the_database_locked_does_not_block_later_saves(store_path):
    store = StateStore(store_path)
    store._db.execute("PRAGMA busy_timeout = 50")
    other = sqlite3.connect(store_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    with pytest.raises(MorError, match="locked"):
        store.save({"a": ExpertStats(calls=1)})
    other.execute("ROLLBACK")
    other.close()
    later = threading.Thread(target=store.save, args=({"a": ExpertStats(calls=2)},), daemon=True)
    later.start()
    later.join(timeout=1)
    assert not later.is_alive(), "save() hung after an earlier save failed to begin its transaction"
    assert store.load()["a"].calls == 2


def test_a_corrupt_state_file_is_a_one_line_error_and_is_not_overwritten(tmp_path):
    path = tmp_path / "mor.db"
    garbage = b"this is not an SQLite database\n" * 40
    path.write_bytes(garbage)
    with pytest.raises(MorError) as caught:
        StateStore(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and "cannot open it as SQLite" in message
    assert path.read_bytes() == garbage


def test_a_state_path_that_is_a_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(MorError, match="cannot open it as SQLite") as caught:
        StateStore(tmp_path)
    assert "\n" not in str(caught.value)


def test_system_feedback_and_call_counts_survive_a_restart(store_path):
    system = make_system(expert("a"), store=StateStore(store_path))
    ask(system, "hello")
    system.feedback("a", True, "hello")
    system.feedback("a", False)
    run(system.aclose())
    system.store.close()
    store = StateStore(store_path)
    assert store.feedback() == [("a", True, "hello"), ("a", False, None)]
    restarted = make_system(expert("a"), store=store)
    stats = restarted.stats["a"]
    assert (stats.calls, stats.successes, stats.failures, stats.errors) == (1, 1, 1, 0)
    assert stats.latency_ewma_s > 0
    store.close()


# ---- router without a trained head ----

def route(experts: list[ExpertInfo], query, stats=None, **selection):
    return SystemRouter(experts, selection=Selection(**selection)).route(Request.of(query), stats)


def test_keyword_hints_decide_without_a_head():
    experts = [info("coder", keywords=["python", "function"]), info("poet", keywords=["poem", "rhyme"])]
    assert route(experts, "Write a Python function that sorts a list").selected == ["coder"]
    assert route(experts, "Write a poem where every line rhymes").selected == ["poet"]


def test_a_matching_pattern_is_a_full_hint():
    experts = [info("chat", keywords=["what"]), info("calc", patterns=[r"\d+\s*[-+*/]\s*\d+"])]
    decision = route(experts, "what is 12 * 7")
    assert decision.selected == ["calc"]
    assert decision.scores[0].hints == 1.0 and decision.scores[0].total == pytest.approx(0.2)


def test_example_requests_are_a_hint_by_their_word_overlap():
    """`hints.examples` was accepted and never read: an expert described by examples alone scored 0."""
    sheets = ExpertInfo("sheets", hints=Hints(examples=["Sum column B of the budget sheet", "Sort rows by date"]))
    decision = route([sheets, info("other")], "sum column B of the budget sheet")
    assert decision.selected == ["sheets"] and decision.scores[0].hints == 1.0
    partly = Hints(examples=["Sum column B of the budget sheet"]).score("sum column C")
    assert partly == pytest.approx(2 / 8)  # {sum, column} shared of {sum, column, b, c, of, the, budget, sheet}


def test_a_capability_listed_twice_is_refused_as_it_would_count_twice():
    with pytest.raises(ConfigError, match=r"expert m: capabilities list math more than once"):
        ExpertInfo("m", capabilities=["math", "code", "math"])


def test_explain_lists_the_winner_of_a_tie_first():
    for seed in range(6):
        decision = SystemRouter([info("a"), info("b")], seed=seed).route(Request.of("anything"))
        assert decision.explain().splitlines()[1].split()[0] == decision.selected[0]


def test_a_request_with_tools_goes_to_a_tool_capable_expert():
    experts = [info("chat", keywords=["weather"]), info("agent", capabilities=["tool"])]
    assert route(experts, "What is the weather in Paris?").selected == ["chat"]
    decision = SystemRouter(experts).route(Request.of("What is the weather in Paris?", TOOLS))
    assert decision.selected == ["agent"]
    assert "request carries tools" in decision.explain()


def test_top_k_selects_the_k_best_in_order():
    experts = [info("none"), info("one", keywords=["alpha", "beta", "gamma", "delta"]), info("two", keywords=["alpha"])]
    decision = route(experts, "alpha", top_k=2)
    assert decision.selected == ["two", "one"]  # hints 1.0 (one keyword of one) before 0.5 (one of four)


@pytest.fixture
def three_experts() -> list[ExpertInfo]:
    return [info("a", keywords=["alpha"]), info("b", keywords=["alpha"]), info("c", keywords=["gamma"])]


def test_threshold_with_a_large_top_k_selects_every_expert_above_it(three_experts):
    decision = route(three_experts, "alpha", threshold=0.1, top_k=10)
    assert sorted(decision.selected) == ["a", "b"]


def test_threshold_alone_selects_every_expert_above_it(three_experts):
    assert sorted(route(three_experts, "alpha", threshold=0.1).selected) == ["a", "b"]


def test_threshold_nobody_reaches_still_selects_the_best(three_experts):
    assert route(three_experts, "gamma rays", threshold=0.5).selected == ["c"]


def test_the_router_avoids_a_loaded_expert():
    experts = [info("busy", max_concurrency=4), info("idle", max_concurrency=4)]  # equal but for their load
    request, loaded = Request.of("hello"), {"busy": ExpertStats(in_flight=2)}
    # unloaded they tie, and the seeded tie-break picks each of them for some seeds ...
    assert {SystemRouter(experts, seed=seed).route(request).selected[0] for seed in range(10)} == {"busy", "idle"}
    # ... so only the load can make every seed pick `idle`
    decisions = [SystemRouter(experts, seed=seed).route(request, loaded) for seed in range(10)]
    assert [d.selected for d in decisions] == [["idle"]] * 10
    scores = {s.name: s for s in decisions[0].scores}
    assert (scores["busy"].load, scores["idle"].load) == (0.5, 0.0)
    assert scores["idle"].total - scores["busy"].total == pytest.approx(RouterWeights().load * 0.5)


def test_an_expert_at_its_concurrency_limit_is_passed_over_even_with_better_hints():
    experts = [info("full", keywords=["hello"], max_concurrency=1), info("free")]
    assert route(experts, "hello", {"full": ExpertStats(in_flight=1)}).selected == ["free"]


def test_experts_in_cooldown_are_skipped_and_explained():
    experts = [info("cold", keywords=["hello"]), info("warm")]
    decision = route(experts, "hello", {"cold": ExpertStats(open_until=time.monotonic() + 60)})
    assert decision.selected == ["warm"] and not decision.fallback
    assert "in cooldown" in next(line for line in decision.explain().splitlines() if "cold" in line)


def test_every_expert_in_cooldown_falls_back_to_the_default_or_fails_in_one_line():
    experts = [info("a"), info("b")]
    cold = {"a": ExpertStats(open_until=time.monotonic() + 60), "b": ExpertStats(open_until=time.monotonic() + 60)}
    decision = route(experts, "hello", cold, default="b")
    assert decision.selected == ["b"] and decision.fallback and decision.reason == "every expert is in cooldown"
    assert "(fallback: every expert is in cooldown)" in decision.explain()
    with pytest.raises(ConfigError, match=r"no default expert is configured; set router\.default"):
        route(experts, "hello", cold)


def test_without_a_head_min_confidence_does_not_force_the_default():
    decision = route([info("a", keywords=["hello"]), info("b")], "hello", min_confidence=0.9, default="b")
    assert decision.selected == ["a"] and not decision.fallback


def test_explain_mentions_every_expert_with_its_score():
    experts = [info(f"expert{i}", keywords=[f"word{i}"]) for i in range(6)]
    decision = route(experts, "word3 and word5", top_k=2)
    explanation = decision.explain()
    assert explanation.splitlines()[0] in ("chose expert3, expert5", "chose expert5, expert3")
    for e in experts:
        line = next(line for line in explanation.splitlines() if line.strip().startswith(e.name))
        assert "score" in line and "hints" in line and "success rate 0.50" in line
    assert len(explanation.splitlines()) == 1 + len(experts)
    assert json.loads(json.dumps(decision.as_dict()))["selected"] == decision.selected


def test_router_registration_errors_are_config_errors():
    router = SystemRouter([info("a")])
    with pytest.raises(ConfigError, match="registered already"):
        router.add(info("a"))
    with pytest.raises(ConfigError, match="no such expert"):
        router.remove("b")
    router.remove("a")
    with pytest.raises(ConfigError, match="no experts registered"):
        router.route(Request.of("hello"))


def test_routing_stays_fast_with_fifty_experts():
    infos = [info(f"e{i}", keywords=[f"kw{i}", "shared"], patterns=[rf"\bpat{i}\b"]) for i in range(50)]
    router, request = SystemRouter(infos), Request.of("a request that mentions kw7 and shared things")
    times = []
    for _ in range(100):
        start = time.perf_counter()
        router.route(request)
        times.append(time.perf_counter() - start)
    assert statistics.median(times) < 0.005  # loose: the 50-vs-5 ratio is reported by the benchmark


# ---- system: fallbacks ----

def test_fallback_when_the_chosen_expert_raises():
    system = make_system(expert("flaky", broken, keywords=["capital"]), expert("backup"))
    reply = ask(system, "capital of France")
    assert reply.decision.selected == ["flaky"] and reply.fallback
    assert answered_by(reply) == [("flaky", False), ("backup", True)]
    assert reply.answers[0].error == "RuntimeError: down" and reply.answer.text == "backup"
    assert system.stats["flaky"].errors == 1 and system.stats["flaky"].last_error == "RuntimeError: down"


def test_fallback_when_the_chosen_expert_times_out():
    async def sleepy(question: str):
        await asyncio.sleep(30)
        return "too late"

    system = make_system(expert("slow", sleepy, keywords=["capital"], timeout_s=0.2), expert("backup"))
    start = time.perf_counter()
    reply = ask(system, "capital of France", within_s=5)
    assert time.perf_counter() - start < 2.0
    assert answered_by(reply) == [("slow", False), ("backup", True)]
    assert reply.answers[0].error == "timed out after 0.2 s" and reply.answers[0].cost.latency_s >= 0.2
    assert system.stats["slow"].in_flight == 0


def test_the_default_expert_answers_when_every_other_expert_fails():
    system = make_system(expert("a", broken, keywords=["hello"]), expert("b", broken), expert("safe"), default="safe")
    reply = ask(system, "hello")
    assert reply.answer.expert == "safe" and reply.fallback
    assert all(not a.ok for a in reply.answers[:-1]) and {a.expert for a in reply.answers} == {"a", "b", "safe"}


def test_the_default_expert_is_the_last_resort_even_in_cooldown():
    system = make_system(expert("a", broken, keywords=["hello"]), expert("safe"), default="safe")
    system.stats["safe"].open_until = time.monotonic() + 60
    reply = ask(system, "hello")
    assert answered_by(reply) == [("a", False), ("safe", True)]


def test_when_every_expert_fails_the_error_names_each_one():
    system = make_system(expert("a", broken), expert("b", broken), default="b")
    with pytest.raises(MorError, match=r"^integration: every selected expert failed: ") as caught:
        ask(system, "hello")
    assert "a: RuntimeError: down" in str(caught.value) and "b: RuntimeError: down" in str(caught.value)


def test_an_empty_or_oversized_request_is_a_one_line_error():
    system = make_system(expert("a"))
    for query in ("   ", "x" * 200_001):
        with pytest.raises(ConfigError) as caught:
            ask(system, query)
        assert "\n" not in str(caught.value) and str(caught.value).startswith("request: ")


def test_the_question_is_the_last_user_message_that_says_something():
    def request(*turns: tuple[str, object]) -> Request:
        return Request(tuple({"role": role, "content": content} for role, content in turns))

    assert request(("system", "be brief"), ("user", "solve 2x = 4"), ("assistant", "x = 2"),
                   ("user", [{"type": "text", "text": "and 3x = 9?"}])).question == "and 3x = 9?"
    assert request(("user", "solve 2x = 4"), ("assistant", "x = 2"), ("user", "  ")).question == "solve 2x = 4"
    assert request(("system", "Translate to French: good morning"), ("user", None)).question \
        == "Translate to French: good morning"


def test_the_breaker_skips_a_failing_expert_during_its_cooldown():
    system = make_system(expert("flaky", broken, keywords=["capital"]), expert("backup"),
                         breaker=Breaker(failures_to_open=2, cooldown_s=60))

    async def three_requests():
        return [await system.ask("capital of France") for _ in range(3)]

    replies = run(three_requests())
    assert system.stats["flaky"].calls == 2 and system.stats["backup"].calls == 3
    assert replies[2].decision.selected == ["backup"] and answered_by(replies[2]) == [("backup", True)]
    assert not next(s for s in replies[2].decision.scores if s.name == "flaky").available


def test_after_the_cooldown_the_expert_is_tried_again_and_a_success_closes_the_breaker():
    outcomes = iter([RuntimeError("down"), None, None])

    async def recovering(question: str):
        if error := next(outcomes):
            raise error
        return "recovered", 0.9

    system = make_system(expert("flaky", recovering, keywords=["capital"]), expert("backup"),
                         breaker=Breaker(failures_to_open=1, cooldown_s=0.3))

    async def scenario():
        first = await system.ask("capital of France")
        during = await system.ask("capital of France")
        await asyncio.sleep(0.35)
        after = await system.ask("capital of France")
        return first, during, after

    first, during, after = run(scenario())
    assert answered_by(first) == [("flaky", False), ("backup", True)]
    assert answered_by(during) == [("backup", True)]
    assert answered_by(after) == [("flaky", True)] and after.answer.text == "recovered"
    assert system.stats["flaky"].available() and system.stats["flaky"].consecutive_failures == 0


def test_requests_an_expert_cannot_read_fall_back_without_tripping_its_breaker():
    async def picky(question: str):
        if "2x" not in question:
            raise RequestError("expert sympy: cannot read 'solve my printer'")
        return "x = 4", 1.0

    system = make_system(expert("sympy", picky, keywords=["solve"]), expert("llm", replying("some text", 0.6)),
                         breaker=Breaker(failures_to_open=3, cooldown_s=60, refusals_to_open=2))

    async def requests():  # a local expert's refusals never open its breaker, however many come in a row
        off_topic = [await system.ask(f"solve my problem number {i}") for i in range(3)]
        return off_topic, await system.ask("solve 2x = 8")

    off_topic, on_topic = run(requests())
    assert all(answered_by(r) == [("sympy", False), ("llm", True)] for r in off_topic)
    assert off_topic[0].answers[0].details == {"request_error": True}
    stats = system.stats["sympy"]
    assert stats.available() and (stats.errors, stats.refusals, stats.consecutive_failures) == (0, 3, 0)
    assert answered_by(on_topic) == [("sympy", True)] and on_topic.answer.text == "x = 4"


def test_an_expert_error_without_the_request_marker_still_counts_towards_the_breaker():
    async def down(question: str):
        raise ExpertError("expert sympy: endpoint down")

    system = make_system(expert("sympy", down, keywords=["solve"]), expert("llm"),
                         breaker=Breaker(failures_to_open=2, cooldown_s=60))
    for _ in range(2):
        ask(system, "solve 2x = 8")
    assert not system.stats["sympy"].available() and system.stats["sympy"].errors == 2


# ---- system: fallbacks over real HTTP ----

@pytest.fixture
def llm_system(llm_server):
    """An OpenAI-compatible expert on loopback preferred for 'capital' questions, with a local backup."""
    llm_server.state.reset()
    llm = OpenAIChatExpert(info("llm", keywords=["capital"], timeout_s=0.4), llm_server.url, "tiny-model",
                           retries=1, backoff_s=0.01)
    return make_system(llm, expert("backup"))


def ask_and_close(system: MoRSystem, query: str, within_s: float = 5.0):
    async def go():
        try:
            return await asyncio.wait_for(system.ask(query), within_s)
        finally:
            await system.aclose()
    return asyncio.run(go())


def test_the_http_expert_answers_through_the_system(llm_system, llm_server):
    reply = ask_and_close(llm_system, "What is the capital of France?")
    assert answered_by(reply) == [("llm", True)] and reply.answer.text == "Paris"
    assert reply.cost.tokens_in > 0 and len(llm_server.state.bodies) == 1


def test_http_5xx_falls_back_to_the_next_expert(llm_system, llm_server):
    llm_server.state.reset("500", "500")
    reply = ask_and_close(llm_system, "What is the capital of France?")
    assert answered_by(reply) == [("llm", False), ("backup", True)]
    assert "after 2 attempt(s): HTTP 500" in reply.answers[0].error and len(llm_server.state.bodies) == 2


def test_a_slow_http_expert_falls_back_and_nothing_hangs(llm_system, llm_server):
    llm_server.state.reset("sleep:5", "sleep:5")
    start = time.perf_counter()
    reply = ask_and_close(llm_system, "What is the capital of France?")
    assert time.perf_counter() - start < 2.5
    assert answered_by(reply) == [("llm", False), ("backup", True)] and len(llm_server.state.bodies) == 2
    assert "failed after 2 attempt(s): timed out after 0.4 s" in reply.answers[0].error  # the retry ran too


# ---- system: reflection and integration modes ----

def test_reflection_escalates_to_the_next_expert_while_unsure():
    system = make_system(expert("unsure", replying("maybe Lyon", 0.3), keywords=["capital"]),
                         expert("sure", replying("Paris", 0.9)), rounds=2, min_confidence=0.5)
    reply = ask(system, "capital of France")
    assert reply.rounds == 1 and answered_by(reply) == [("unsure", True), ("sure", True)]
    assert reply.answer.text == "Paris" and not reply.fallback


def test_reflection_stops_after_the_configured_rounds():
    experts = [expert(f"e{i}", replying(f"guess {i}", 0.2), keywords=["capital"] if i == 0 else ()) for i in range(4)]
    system = make_system(*experts, rounds=2, min_confidence=0.5)
    reply = ask(system, "capital of France")
    assert reply.rounds == 2 and len(reply.answers) == 3
    assert sum(s.calls for s in system.stats.values()) == 3


@pytest.mark.parametrize(("rounds", "confidence"), [(0, 0.2), (3, 0.8)])
def test_no_reflection_without_rounds_or_when_already_sure(rounds, confidence):
    system = make_system(expert("first", replying("x", confidence), keywords=["capital"]), expert("second"),
                         rounds=rounds, min_confidence=0.5)
    reply = ask(system, "capital of France")
    assert reply.rounds == 0 and answered_by(reply) == [("first", True)]


def test_sequential_feeds_the_previous_answer_to_the_next_expert():
    seen: list[Request] = []

    async def reviewer(request: Request):
        seen.append(request)
        return f"checked: {request.messages[1]['content']}", 0.8

    system = make_system(expert("draft", replying("x = 4", 0.6), keywords=["solve"]), expert("review", reviewer),
                         top_k=2, mode="sequential")
    reply = ask(system, "solve 2x = 8")
    (received,) = seen
    assert [m["role"] for m in received.messages] == ["user", "assistant", "user"]
    assert received.messages[0]["content"] == "solve 2x = 8" and received.messages[1]["content"] == "x = 4"
    assert received.messages[2]["content"].startswith("A previous expert (draft) answered:\nx = 4")
    assert (reply.answer.expert, reply.answer.text) == ("review", "checked: x = 4")


def sequential_system(extra_confidence: float):
    """A chain draft → review (draft's pattern outranks review's keywords) and an escalation expert."""
    return make_system(expert("draft", replying("x = 4", 0.3), patterns=["solve"]),
                       expert("review", replying("x = 4 (checked)", 0.45), keywords=["solve", "a", "b", "c"]),
                       expert("other", replying("no idea", extra_confidence)),
                       top_k=2, mode="sequential", rounds=1, min_confidence=0.5)


def test_sequential_reflection_keeps_the_chains_answer_over_a_less_sure_extra_one():
    reply = ask(sequential_system(0.05), "solve 2x = 8")
    assert reply.rounds == 1 and answered_by(reply) == [("draft", True), ("review", True), ("other", True)]
    assert (reply.answer.expert, reply.answer.text, reply.answer.confidence) == ("review", "x = 4 (checked)", 0.45)


def test_sequential_reflection_takes_the_extra_answer_when_it_is_surer():
    reply = ask(sequential_system(0.9), "solve 2x = 8")
    assert reply.rounds == 1 and (reply.answer.expert, reply.answer.confidence) == ("other", 0.9)


def test_sequential_skips_a_failed_link():
    seen: list[Request] = []

    async def reviewer(request: Request):
        seen.append(request)
        return "fresh answer", 0.8

    system = make_system(expert("draft", broken, keywords=["solve"]), expert("review", reviewer),
                         top_k=2, mode="sequential")
    reply = ask(system, "solve 2x = 8")
    assert seen[0].messages == ({"role": "user", "content": "solve 2x = 8"},)
    assert reply.answer.text == "fresh answer"


def synthesis_system(prompts: list[str], **costs):
    async def judge(request: Request):
        prompts.append(request.text)
        return "fused: 42", 0.8

    return make_system(expert("a", replying("42", 0.6), keywords=["answer"], cost_per_call=costs.get("a", 0.0)),
                       expert("b", replying("41", 0.5), keywords=["answer"], cost_per_call=costs.get("b", 0.0)),
                       expert("judge", judge, cost_per_call=costs.get("judge", 0.0)),
                       top_k=2, mode="ensemble", synthesizer="judge")


def test_ensemble_asks_the_synthesizer_to_fuse_the_answers():
    prompts: list[str] = []
    system = synthesis_system(prompts)
    reply = ask(system, "answer this: what is 6 x 7")
    (prompt,) = prompts
    assert prompt.startswith("answer this: what is 6 x 7\nSeveral experts answered the request above.")
    assert "(from a, confidence 0.60):\n42" in prompt and "(from b, confidence 0.50):\n41" in prompt
    assert (reply.answer.expert, reply.answer.text) == ("judge", "fused: 42")
    assert {alt["expert"] for alt in reply.answer.details["alternatives"]} == {"a", "b"}
    assert system.stats["judge"].calls == 1


def long_answers_system(mode: str, seen: dict[str, list[Request]]):
    def recording(name: str, answer: str, confidence: float):
        async def fn(request: Request):
            seen.setdefault(name, []).append(request)
            return answer, confidence
        return expert(name, fn, keywords=["summarise"] if name != "judge" else ())

    return make_system(recording("a", "word " * 4000, 0.6), recording("b", "word " * 4000, 0.5),
                       recording("judge", "fused", 0.8), top_k=2, mode=mode,
                       synthesizer="judge" if mode == "ensemble" else None)


@pytest.mark.parametrize(("mode", "answered_by_expert"), [("sequential", {"a", "b"}), ("ensemble", {"judge"})])
def test_a_long_valid_request_is_answered_with_the_derived_request_cut_to_fit(mode, answered_by_expert):
    seen: dict[str, list[Request]] = {}
    reply = ask(long_answers_system(mode, seen), "summarise this: " + "x " * 90_000)  # 180k characters: valid
    assert reply.answer.expert in answered_by_expert and all(a.ok for a in reply.answers)
    derived = seen["judge"][0] if mode == "ensemble" else seen[reply.answers[1].expert][0]
    assert len(derived.text) <= MAX_REQUEST_CHARS and "[… cut: the answer has 20000 characters" in derived.text


@pytest.mark.parametrize("mode", ["sequential", "ensemble"])
def test_a_request_that_leaves_no_room_for_the_answers_falls_back_to_the_plain_modes(mode):
    seen: dict[str, list[Request]] = {}
    question = "summarise this: " + "x" * (MAX_REQUEST_CHARS - 200)
    reply = ask(long_answers_system(mode, seen), question)
    assert "judge" not in seen and reply.answer.expert in {"a", "b"} and all(a.ok for a in reply.answers)
    assert all(r.question == question for name in ("a", "b") for r in seen[name])  # the chain's link asked afresh


def test_ensemble_reply_cost_includes_the_synthesis_call():
    reply = ask(synthesis_system([], a=0.1, b=0.1, judge=0.5), "answer this: what is 6 x 7")
    assert reply.answer.cost.money == pytest.approx(0.7)
    assert reply.cost.money == pytest.approx(0.7)


def test_removing_an_expert_while_a_request_is_in_flight_moves_its_fallback_on():
    async def slow_fail(question: str):
        await asyncio.sleep(0.2)
        raise RuntimeError("down")

    system = make_system(expert("a", slow_fail, keywords=["x"]), expert("b", replying("b's answer")),
                         expert("c", replying("c's answer")))

    async def remove_b_meanwhile():
        task = asyncio.create_task(system.ask("x"))
        await asyncio.sleep(0.05)
        system.remove("b")  # a's fallbacks were ranked b, c when the request was routed
        return await task

    reply = run(remove_b_meanwhile())
    assert reply.answer.expert == "c" and reply.answer.text == "c's answer"
    assert system.stats["b"].in_flight == 0 and system.stats["b"].calls == 0


def test_ensemble_scores_the_synthesizers_fused_answer_apart_from_its_direct_one():
    async def llm(request: Request):
        return ("FUSED: Paris", 0.95) if "Several experts answered" in request.question else ("Lyon", 0.1)

    system = make_system(expert("llm", llm, keywords=["capital"]), expert("a", replying("Paris", 0.9),
                                                                         keywords=["capital"]),
                         top_k=2, mode="ensemble", synthesizer="llm")
    reply = ask(system, "capital of France")
    assert (reply.answer.expert, reply.answer.text) == ("llm", "FUSED: Paris")


def test_ensemble_with_one_usable_answer_skips_the_synthesizer():
    prompts: list[str] = []

    async def judge(request: Request):
        prompts.append(request.question)
        return "fused", 0.8

    system = make_system(expert("a", replying("42", 0.6), keywords=["answer"]),
                         expert("b", broken, keywords=["answer"]), expert("judge", judge),
                         top_k=2, mode="ensemble", synthesizer="judge")
    reply = ask(system, "answer this")
    assert prompts == [] and reply.answer.text == "42"


def test_voting_mode_through_the_system():
    system = make_system(expert("a", replying("Paris", 0.6)), expert("b", replying("paris.", 0.4)),
                         expert("c", replying("Lyon", 0.9)), top_k=3, mode="voting")
    reply = ask(system, "capital of France")
    assert reply.answer.text == "Paris" and reply.answer.confidence == pytest.approx(1.0 / 1.9 * 0.5)


def test_voting_reflection_escalates_past_a_lone_unsure_voter():
    system = make_system(expert("unsure", replying("Lyon", 0.1), keywords=["capital"]),
                         expert("sure", replying("Paris", 0.9)), mode="voting", rounds=2, min_confidence=0.5)
    reply = ask(system, "capital of France")
    assert reply.rounds == 1 and answered_by(reply) == [("unsure", True), ("sure", True)]
    assert reply.answer.text == "Paris" and reply.answer.confidence == pytest.approx(0.9 * 0.9)


def test_stacking_mode_through_the_system():
    system = make_system(expert("a", replying(10.0, 1.0)), expert("b", replying(20.0, 1.0)), top_k=2, mode="stacking")
    system.combine.coefficients, system.combine.intercept = {"a": 0.5, "b": 0.25}, 1.0
    assert ask(system, "predict").answer.value == pytest.approx(11.0)


def test_reply_as_dict_is_json():
    reply = ask(make_system(expert("a", broken, keywords=["hi"]), expert("b")), "hi")
    data = json.loads(json.dumps(reply.as_dict()))
    assert data["expert"] == "b" and data["fallback"] and [a["expert"] for a in data["answers"]] == ["a", "b"]
    assert data["routing"]["selected"] == ["a"]


# ---- system: management, feedback, ranking, load ----

def test_register_and_remove_experts_at_run_time():
    system = make_system(expert("general"))
    system.register(expert("poet", keywords=["poem"]))
    assert ask(system, "write a poem").answer.expert == "poet"
    removed = system.remove("poet")
    assert removed.name == "poet" and "poet" not in system.router.experts
    assert ask(system, "write a poem").answer.expert == "general"
    assert [name for name, _ in system.ranking()] == ["general"]


def test_management_errors_are_one_line_config_errors():
    system = make_system(expert("a"), expert("b"), expert("judge"), default="a", mode="ensemble", synthesizer="judge")
    with pytest.raises(ConfigError, match="'b' is registered already"):
        system.register(expert("b"))
    with pytest.raises(ConfigError, match="no such expert; registered: a, b, judge"):
        system.remove("nobody")
    for name in ("a", "judge"):
        with pytest.raises(ConfigError, match="is the default or synthesis expert"):
            system.remove(name)
    with pytest.raises(ConfigError, match="feedback: unknown expert 'nobody'"):
        system.feedback("nobody", True)


def test_feedback_moves_traffic_to_the_expert_that_succeeds():
    system = make_system(expert("a"), expert("b"))
    before = Counter(system.route("hello").selected[0] for _ in range(40))
    assert set(before) == {"a", "b"}  # equal experts share the traffic
    for _ in range(10):
        system.feedback("a", False)
        system.feedback("b", True)
    after = Counter(system.route("hello").selected[0] for _ in range(40))
    assert after == {"b": 40}
    assert [name for name, _ in system.ranking()] == ["b", "a"]


def test_ranking_orders_by_success_rate_and_calls_without_error_then_errors_then_latency():
    system = make_system(*(expert(name) for name in ("broken", "bad", "erring", "slow", "best")))
    stats = system.stats
    for name in ("broken", "erring", "slow", "best"):
        stats[name].successes, stats[name].calls = 9, 50
    stats["bad"].failures = 9
    stats["erring"].errors, stats["broken"].errors = 3, 50  # every call of `broken` failed: its feedback is old news
    stats["slow"].latency_ewma_s, stats["best"].latency_ewma_s = 2.0, 0.5
    ranking = system.ranking()
    assert [name for name, _ in ranking] == ["best", "slow", "erring", "bad", "broken"]
    assert ranking[0][1]["success_rate"] == pytest.approx(10 / 11, abs=1e-4)
    assert ranking[2][1]["reliability"] == pytest.approx(10 / 11 * 47 / 50, abs=1e-4)


def test_an_expert_s_error_is_one_line_whatever_its_exception_says():
    async def failing(question: str):
        raise ValueError("upstream said:\n  Traceback (most recent call last):\n    File x.py line 3")

    with pytest.raises(ExpertsFailed) as caught:
        ask(make_system(expert("orders", failing)), "hello")
    assert str(caught.value) == "integration: every selected expert failed: orders: ValueError: upstream said:"


def test_each_expert_runs_at_most_max_concurrency_calls_at_once():
    running, peak = 0, 0

    async def tracked(question: str):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return "done"

    system = make_system(expert("only", tracked, max_concurrency=2))
    replies = ask_concurrently(system, "hello", 8)
    assert peak == 2 and all(r.answer.text == "done" for r in replies)
    assert (system.stats["only"].calls, system.stats["only"].in_flight) == (8, 0)


def test_a_system_can_be_used_from_one_event_loop_after_another():
    async def slow(question: str):
        await asyncio.sleep(0.01)
        return "done"

    system = make_system(expert("only", slow, max_concurrency=1))
    assert len(ask_concurrently(system, "hello", 3)) == 3
    assert len(ask_concurrently(system, "hello", 3)) == 3


def equal_experts_calls(seed: int) -> list[int]:
    async def work(question: str):
        await asyncio.sleep(0.005)
        return "done", 0.9

    system = make_system(*(expert(f"e{i}", work, capabilities=["general"]) for i in range(4)), seed=seed)
    replies = ask_concurrently(system, "hello", 64)
    assert all(r.answer.ok for r in replies)
    return [system.stats[f"e{i}"].calls for i in range(4)]


def test_equal_experts_share_requests_sent_one_at_a_time_through_random_tie_breaks():
    async def one_at_a_time(system: MoRSystem) -> None:
        for _ in range(64):
            assert (await system.ask("hello")).answer.ok

    for seed in range(2):  # nothing is in flight when each request is routed: the load term cannot spread them
        system = make_system(*(expert(f"e{i}") for i in range(4)), seed=seed)
        run(one_at_a_time(system))
        calls = [system.stats[f"e{i}"].calls for i in range(4)]
        assert sum(calls) == 64 and min(calls) >= 8, f"seed {seed}: calls per expert {calls}"


def test_load_over_four_equal_experts_has_a_coefficient_of_variation_below_20_percent():
    for seed in range(5):
        calls = equal_experts_calls(seed)
        assert statistics.pstdev(calls) / statistics.mean(calls) < 0.2, f"seed {seed}: calls per expert {calls}"


@pytest.mark.parametrize("mode", ["weighted", "sequential"])
def test_a_cancelled_ask_gives_back_the_load_it_reserved(mode):
    async def slow(question: str):
        await asyncio.sleep(10)
        return "late"

    system = make_system(expert("a", slow), expert("b", slow), top_k=2, mode=mode)

    async def cancel_midway():
        task = asyncio.create_task(system.ask("anything"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(cancel_midway())
    assert {n: s.in_flight for n, s in system.stats.items()} == {"a": 0, "b": 0}
    assert all(s.errors == 0 and s.available() for s in system.stats.values())


def test_a_busy_expert_still_gets_requests_that_only_it_fits():
    async def slow_math(question: str):
        await asyncio.sleep(0.05)
        return "4", 1.0

    experts = [expert("math", slow_math, keywords=["solve"], max_concurrency=1), expert("docs")]
    router = SystemRouter([e.info for e in experts], weights=RouterWeights(hints=1.0, load=0.3))
    system = MoRSystem(experts, router)  # the fit (1.0) outweighs a full load (0.3): math queues, no detour
    replies = ask_concurrently(system, "solve 2x = 8", 3)
    assert [r.answer.expert for r in replies] == ["math"] * 3
