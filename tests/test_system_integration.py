"""mor.system.integration: weighted, voting and stacking as pure functions, fit_stacking, and the requests built
for the sequential and ensemble modes."""

import numpy as np
import pytest

from mor.errors import ConfigError, MorError
from mor.system import Answer, Cost, Request
from mor.system.integration import (
    chained_request,
    ensemble,
    fit_stacking,
    sequential,
    stacking,
    synthesis_request,
    voting,
    weighted,
)
from mor.system.normalise import normalise
from mor.system.request import MAX_REQUEST_CHARS


def text(expert: str, content: str, confidence: float = 0.5, **fields) -> Answer:
    return Answer(expert=expert, text=content, confidence=confidence, **fields)


def number(expert: str, value: float, confidence: float = 0.5) -> Answer:
    return Answer(expert=expert, value=value, confidence=confidence)


def failed(expert: str, error: str = "RuntimeError: down") -> Answer:
    return Answer(expert=expert, error=error, confidence=0.0)


# ---- weighted ----

def test_weighted_picks_the_most_confident_answer_without_weights():
    combined = weighted([text("a", "one", 0.6), text("b", "two", 0.9), text("c", "three", 0.3)])
    assert (combined.expert, combined.text, combined.confidence) == ("b", "two", 0.9)
    assert combined.details["mode"] == "weighted"


def test_weighted_multiplies_router_weight_by_confidence():
    answers = [text("a", "one", 0.9), text("b", "two", 0.6)]
    combined = weighted(answers, {"b": 2.0})
    assert combined.expert == "b" and combined.confidence == 0.6  # 2.0 × 0.6 beats 1.0 × 0.9
    assert combined.details["scores"] == pytest.approx({"a": 0.9, "b": 1.2})


def test_weighted_keeps_every_other_answer_as_an_alternative_and_sums_costs():
    answers = [text("a", "one", 0.9, cost=Cost(tokens_in=3, latency_s=0.5), steps=2),
               text("b", "two", 0.4, cost=Cost(tokens_in=4, money=0.25)),
               failed("c")]
    combined = weighted(answers)
    assert combined.details["alternatives"] == [
        {"expert": "b", "answer": "two", "confidence": 0.4, "error": None},
        {"expert": "c", "answer": "", "confidence": 0.0, "error": "RuntimeError: down"}]
    assert combined.cost == Cost(tokens_in=7, latency_s=0.5, money=0.25)
    assert combined.steps == 2


def test_weighted_ignores_failed_answers_even_with_a_large_weight():
    combined = weighted([failed("a"), text("b", "fine", 0.1)], {"a": 100.0})
    assert combined.expert == "b" and combined.ok


# ---- voting ----

@pytest.mark.parametrize(("left", "right"), [("42", " 42.0 "), ("42", "42."), ("Paris.", "paris"), ("PARIS!", "Paris"),
                                             ("Café", "cafe"), ("$42", "42"), ("-3.50", "-3.5"), ("a  b", "a b"),
                                             (".5", "0.5"), ("$.50", "0.5"), ("-.5", "-0.5"), ("x = 2", "x=2"),
                                             ("**Paris**", "Paris"), ("# Paris", "Paris"), ("- Paris", "Paris"),
                                             ("(A)", "A"), ("2 * 3", "2*3"), ("50 %", "50%"), ("x != 1", "x ≠ 1"),
                                             ("12346370368.0", "12346370368"), ("1/2", "0.5"), ("2/4", "0.5"),
                                             ("6/3", "2"), ("-1/2", "-0.5"), ("1/-2", "-.5"), ("2/6", "1/3"),
                                             ("1\u202f000", "1000"), ("-1\u00a0000\u2009000.5", "-1000000.5")])
def test_normalise_makes_equivalent_answers_equal(left, right):
    assert normalise(left) == normalise(right)


@pytest.mark.parametrize(("left", "right"), [("42", "43"), ("-3", "3"), ("Paris", "Lyon"), ("1.5", "15"),
                                              (".5", "5"), ("x > 2", "x < 2"), ("x = 1", "x != 1"), ("2+3", "2*3"),
                                              ("x >= 0", "x <= 0"), ("C++", "C"), ("50%", "50"), ("C#", "C"),
                                              ("2*(3+4)", "2*3+4"), ("[2, 3]", "(2, 3)"),
                                              ("12346370368", "12346370369"), ("x ≠ 1", "x = 1"), ("x ≯ 1", "x > 1"),
                                              ("98765432101234567", "98765432101234568"), ("f(x)", "fx"),
                                              ("1/3", "0.333"), ("1/0", "0"), ("3 5", "35"), ("100 200", "100200"),
                                              ("1" * 5000 + "/3", "42"),
                                              ("123456789012345678901234567891/2", "61728394506172839450617283945")])
def test_normalise_keeps_different_answers_apart(left, right):
    assert normalise(left) != normalise(right)


@pytest.mark.parametrize(("left", "right"), [("\u22125", "-5"), ("½", "1/2"), ("x²", "x^2"), ("-0", "0"),
                                             ("Ｐａｒｉｓ", "paris"), ("ﬁve", "five"), ("Straße", "STRASSE")])
def test_normalise_reads_unicode_maths_and_compatibility_forms(left, right):
    assert normalise(left) == normalise(right)


@pytest.mark.parametrize(("left", "right"), [("\u22125", "5"), ("½", "12"), ("2³", "23"), ("10⁶", "106"), ("x²", "x2"),
                                             ("√2", "2"), ("2°", "2"), ("й", "и"), ("が", "か"), ("東京", "")])
def test_normalise_never_drops_non_ascii_characters_silently(left, right):
    assert normalise(left) != normalise(right)


def test_normalise_reads_thousands_separators():
    assert normalise("1,000") == normalise("1000") == "1000"


def test_voting_majority_over_normalised_answers_with_the_confidence_share():
    answers = [text("a", "42", 0.5), text("b", " 42.0 ", 0.4), text("c", "41", 0.8)]
    combined = voting(answers)
    assert combined.expert == "a" and combined.text == "42"  # the winner's most confident voter
    assert combined.details["share"] == pytest.approx(0.9 / 1.7)
    assert combined.confidence == pytest.approx(0.9 / 1.7 * 0.45)  # share × the winners' mean confidence
    assert combined.details["votes"] == pytest.approx({"42": 0.9, "41": 0.8})


def test_voting_weighs_votes_by_confidence_so_one_sure_voter_beats_two_unsure_ones():
    combined = voting([text("a", "yes", 0.2), text("b", "Yes.", 0.2), text("c", "no", 0.9)])
    assert combined.expert == "c" and combined.confidence == pytest.approx(0.9 / 1.3 * 0.9)


def test_voting_counts_numeric_values_and_skips_failures():
    answers = [number("a", 7, 0.5), number("b", 7.0, 0.5), number("c", 8, 0.6), failed("d")]
    combined = voting(answers)
    assert combined.value == 7 and combined.confidence == pytest.approx(1.0 / 1.6 * 0.5)
    assert {alt["expert"] for alt in combined.details["alternatives"]} == {"b", "c", "d"}


def test_unanimous_vote_has_the_full_share_and_its_voters_confidence():
    """Agreement is the full share, not certainty: unanimous voters are as sure as they are on average."""
    unsure = voting([text("a", "x", 0.3), text("b", "X", 0.7)])
    assert unsure.details["share"] == pytest.approx(1.0) and unsure.confidence == pytest.approx(0.5)
    assert voting([text("a", "x", 0.9), text("b", "X", 0.9)]).confidence == pytest.approx(0.9)
    assert voting([text("a", "x", 1.0), text("b", "X", 1.0)]).confidence == pytest.approx(1.0)


def test_a_lone_unsure_voter_is_as_unsure_as_its_answer():
    """A lone voter has the whole share; its vote must not be surer than its answer, or reflection never asks more."""
    assert voting([text("a", "Lyon", 0.1)]).confidence == pytest.approx(0.1)
    assert voting([text("a", "Lyon", 0.1), failed("b")]).confidence == pytest.approx(0.1)


def test_voting_keeps_a_unicode_minus_apart_from_a_plus():
    combined = voting([text("a", "\u22125", 0.3), text("b", "-5", 0.7), text("c", "5", 0.5)])
    assert (combined.expert, combined.text) == ("b", "-5")
    assert combined.details["votes"] == pytest.approx({"-5": 1.0, "5": 0.5})


# ---- stacking ----

def test_stacking_without_coefficients_is_the_confidence_weighted_mean():
    combined = stacking([number("a", 10.0, 0.25), number("b", 20.0, 0.75)])
    assert combined.value == pytest.approx(17.5) and combined.text is None
    assert combined.confidence == pytest.approx(0.5)  # the mean confidence
    assert combined.details["mode"] == "stacking"


def test_stacking_with_all_zero_confidences_is_the_plain_mean():
    assert stacking([number("a", 10.0, 0.0), number("b", 20.0, 0.0)]).value == pytest.approx(15.0)


def test_stacking_gives_a_zero_confidence_answer_no_weight():
    assert stacking([number("a", 10.0, 0.0), number("b", 20.0, 1.0)]).value == pytest.approx(20.0)


def test_stacking_applies_coefficients_and_intercept():
    combined = stacking([number("a", 10.0), number("b", 20.0)], {"a": 2.0, "b": -1.0}, intercept=3.0)
    assert combined.value == pytest.approx(3.0)


def test_stacking_uses_its_coefficients_only_when_the_experts_they_were_fitted_on_answered():
    """A fitted formula with a term missing is not a prediction: a failed expert's term would count as 0."""
    coefficients = {"a": 0.5, "b": 0.5}
    full = stacking([number("a", 10.0), number("b", 20.0)], coefficients)
    assert full.value == pytest.approx(15.0) and full.details["combined_by"] == "coefficients"
    one_failed = stacking([number("a", 10.0, 0.9), failed("b")], coefficients)
    assert one_failed.value == pytest.approx(10.0) and one_failed.details["combined_by"] == "confidence-weighted mean"
    stand_in = stacking([number("a", 10.0, 0.5), failed("b"), number("c", 30.0, 0.5)], coefficients)
    assert stand_in.value == pytest.approx(20.0)


def test_stacking_counts_an_answer_that_is_not_a_finite_number_as_failed():
    """One broken predictor must not fail every request: its answer is left out and shown with the reason."""
    assert stacking([number("a", 4.0, 1.0), failed("b")]).value == pytest.approx(4.0)
    combined = stacking([number("a", 4.0), text("b", "seven"), number("c", float("nan")), number("d", True)])
    assert combined.value == pytest.approx(4.0) and combined.expert == "a"
    errors = {alt["expert"]: alt["error"] for alt in combined.details["alternatives"]}
    assert errors["b"].startswith("answered 'seven', not a finite number") and "not a finite number" in errors["c"]
    with pytest.raises(MorError, match=r"every selected expert failed: a: answered 'nan', not a finite number"):
        stacking([number("a", float("nan"))])


def test_fit_stacking_recovers_known_linear_coefficients():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=40), rng.normal(size=40)
    coefficients, intercept = fit_stacking({"b": b.tolist(), "a": a.tolist()}, (2.0 * a - 0.5 * b + 3.0).tolist())
    assert coefficients == pytest.approx({"a": 2.0, "b": -0.5})
    assert intercept == pytest.approx(3.0)
    combined = stacking([number("a", 1.0), number("b", 4.0)], coefficients, intercept)
    assert combined.value == pytest.approx(2.0 - 2.0 + 3.0)


def test_fit_stacking_needs_more_targets_than_coefficients():
    with pytest.raises(ConfigError, match="2 targets cannot fit 3 coefficients"):
        fit_stacking({"a": [1.0, 2.0], "b": [0.0, 1.0]}, [1.0, 2.0])


# ---- every answer failed ----

@pytest.mark.parametrize("combine", [weighted, voting, stacking, lambda answers: synthesis_request(
    Request.of("q"), answers)])
def test_every_answer_failed_is_one_error_naming_each_expert(combine):
    with pytest.raises(MorError) as caught:
        combine([failed("a", "timed out after 1 s"), failed("b", "HTTP 500")])
    message = str(caught.value)
    assert message == "integration: every selected expert failed: a: timed out after 1 s; b: HTTP 500"


# ---- requests for ensemble and sequential ----

def test_synthesis_request_lists_the_question_and_every_usable_answer():
    request = Request(messages=({"role": "system", "content": "be brief"},
                                {"role": "user", "content": "What is 6 × 7?"}),
                      tools=({"type": "function", "function": {"name": "calc"}},))
    fused = synthesis_request(request, [text("a", "42", 0.9), failed("b"), number("c", 41, 0.25)])
    assert fused.messages[:2] == request.messages and fused.tools == request.tools  # the conversation, as asked
    assert len(fused.messages) == 3 and fused.messages[2]["role"] == "user"
    prompt = fused.messages[2]["content"]
    assert prompt.startswith("Several experts answered the request above.")
    assert "Answer 1 (from a, confidence 0.90):\n42" in prompt
    assert "Answer 2 (from c, confidence 0.25):\n41" in prompt
    assert "from b" not in prompt


def test_chained_request_appends_the_previous_answer_and_keeps_tools():
    tools = ({"type": "function", "function": {"name": "calc"}},)
    request = Request(messages=({"role": "user", "content": "draft a plan"},), tools=tools)
    chained = chained_request(request, text("planner", "step 1, step 2"))
    assert chained.messages[0] == {"role": "user", "content": "draft a plan"}
    assert chained.messages[1] == {"role": "assistant", "content": "step 1, step 2"}
    assert chained.messages[2]["role"] == "user"
    assert chained.messages[2]["content"].startswith("A previous expert (planner) answered:\nstep 1, step 2")
    assert chained.tools == tools and len(chained.messages) == 3


def long_question(chars: int) -> Request:
    return Request.of("q" * chars)


def test_a_follow_up_question_reaches_the_synthesizer_with_the_turns_it_refers_to():
    request = Request(messages=({"role": "user", "content": "What is the capital of France?"},
                                {"role": "assistant", "content": "Paris."},
                                {"role": "user", "content": "And what is its population?"}))
    fused = synthesis_request(request, [text("a", "About 2.1 million.", 0.6), text("b", "2,102,650", 0.7)])
    assert "capital of France" in fused.text and fused.messages[:3] == request.messages


def tool_call(expert: str, name: str, arguments: str, confidence: float = 0.6) -> Answer:
    """An LLM expert's answer that asks for a tool call and writes no text, as OpenAI endpoints return it."""
    call = {"id": f"call-{expert}", "type": "function", "function": {"name": name, "arguments": arguments}}
    return Answer(expert=expert, text=None, confidence=confidence, details={"tool_calls": [call]})


def test_voting_compares_the_tool_calls_answers_ask_for():
    """Answers that are only tool calls have no text: calls of different tools, or with other arguments, must not
    count as one answer, and the same call written with other key order or spacing must."""
    split = voting([tool_call("a", "get_weather", '{"city": "Paris"}', 0.5),
                    tool_call("b", "get_stock", '{"ticker": "ACME"}', 0.6),
                    tool_call("c", "get_weather", '{"city": "Lyon"}', 0.7)])
    assert split.details["share"] == pytest.approx(0.7 / 1.8) and split.expert == "c"
    agreed = voting([tool_call("a", "get_weather", '{"city": "Paris", "unit": "C"}', 0.5),
                     tool_call("b", "get_weather", '{"unit":"C","city":"Paris"}', 0.6),
                     tool_call("c", "get_stock", '{"ticker": "ACME"}', 0.9)])
    assert agreed.expert == "b" and agreed.details["share"] == pytest.approx(1.1 / 2.0)
    assert agreed.details["tool_calls"][0]["function"]["name"] == "get_weather"


def test_the_tool_calls_of_an_answer_reach_the_next_expert_and_the_synthesizer():
    previous = tool_call("planner", "get_weather", '{"city": "Paris"}')
    chained = chained_request(Request.of("weather in Paris?"), previous)
    assert chained.messages[1] == {"role": "assistant", "content": '[tool call] get_weather({"city": "Paris"})'}
    assert 'get_weather({"city": "Paris"})' in chained.messages[2]["content"]
    fused = synthesis_request(Request.of("weather in Paris?"), [previous, text("b", "sunny", 0.5)])
    assert 'Answer 1 (from planner, confidence 0.60):\n[tool call] get_weather({"city": "Paris"})' in fused.text


def test_synthesis_request_cuts_the_answers_to_fit_and_says_so():
    request = long_question(180_000)
    answers = [text("a", "X" * 20_000, 0.6), text("b", "short answer", 0.5), text("c", "Z" * 30_000, 0.4)]
    fused = synthesis_request(request, answers)
    prompt = fused.messages[-1]["content"]
    assert len(fused.text) <= MAX_REQUEST_CHARS and len(fused.text) > MAX_REQUEST_CHARS - 100
    assert fused.messages[0]["content"] == "q" * 180_000 and "(from b, confidence 0.50):\nshort answer\n" in prompt
    assert "[… cut: the answer has 20000 characters" in prompt and "[… cut: the answer has 30000 characters" in prompt
    assert abs(prompt.count("X") - prompt.count("Z")) <= 1 and prompt.count("X") > 9_000  # the rest shared equally


def test_synthesis_request_is_none_when_the_question_leaves_no_room_for_the_answers():
    assert synthesis_request(long_question(MAX_REQUEST_CHARS - 300), [text("a", "A" * 500), text("b", "B" * 500)]) \
        is None
    assert synthesis_request(long_question(1000), [text("a", "A" * 500)]).text.endswith("A" * 500)


def test_chained_request_cuts_the_previous_answer_to_fit_and_says_so():
    chained = chained_request(long_question(180_000), text("draft", "D" * 20_000))
    assert len(chained.text) <= MAX_REQUEST_CHARS and len(chained.text) > MAX_REQUEST_CHARS - 100
    kept = chained.messages[1]["content"]
    assert kept.startswith("D" * 9_000) and kept.endswith("only the first ones fit in the request]")
    assert chained.messages[2]["content"].startswith(f"A previous expert (draft) answered:\n{kept}\n\n")


def test_chained_request_is_none_when_the_conversation_leaves_no_room():
    assert chained_request(long_question(MAX_REQUEST_CHARS - 200), text("draft", "D" * 500)) is None
    fits = chained_request(long_question(MAX_REQUEST_CHARS - 200), text("draft", "x = 4"))
    assert fits.messages[1]["content"] == "x = 4"


# ---- sequential ----

def test_sequential_answer_is_the_chains_last_link_without_reflection():
    combined = sequential([text("draft", "x = 4", 0.9), text("review", "x = 5", 0.4), failed("last")])
    assert (combined.expert, combined.confidence, combined.details["mode"]) == ("review", 0.4, "sequential")
    assert {alt["expert"] for alt in combined.details["alternatives"]} == {"draft", "last"}


def test_sequential_reflection_answer_replaces_the_chain_only_when_surer():
    chain = [text("draft", "x = 4", 0.3), text("review", "x = 4 (checked)", 0.45)]
    assert sequential(chain, [text("other", "no idea", 0.05)]).expert == "review"
    assert sequential(chain, [text("other", "no idea", 0.05), text("sure", "x = 4", 0.9)]).expert == "sure"
    assert sequential([failed("draft")], [text("other", "x", 0.1)]).expert == "other"


# ---- ensemble ----

def test_ensemble_scores_the_fused_answer_apart_from_the_synthesizers_own():
    """The synthesizer answered directly (unsure) and fused (sure): its direct answer must not stand in for the
    fused one, as it did when both were scored under the expert's name."""
    fused = text("llm", "FUSED: Paris", 0.95)
    combined = ensemble(fused, [text("llm", "Lyon", 0.1), text("a", "Paris", 0.9)])
    assert (combined.expert, combined.text) == ("llm", "FUSED: Paris")
    assert combined.details["scores"] == pytest.approx({"llm (synthesis)": 1.9, "llm": 0.1, "a": 0.9})
    assert [alt["answer"] for alt in combined.details["alternatives"]] == ["Lyon", "Paris"]


def test_ensemble_keeps_a_far_surer_direct_answer():
    combined = ensemble(text("judge", "maybe", 0.2), [text("a", "42", 0.9), text("b", "41", 0.3)])
    assert (combined.expert, combined.text, combined.confidence) == ("a", "42", 0.9)
