"""The math expert's limits: two-sided, one-sided and at infinity, read in the ways people write them, each checked
against the function's values ever closer to the point."""

import asyncio

import pytest
import sympy

from mor.system import ExpertInfo, Request
from mor.system.experts.errors import RequestError
from mor.system.experts.math_tool import FAILED, SAMPLED, UNCHECKED, MathExpert, approached


@pytest.fixture(scope="module")
def math_expert() -> MathExpert:
    return MathExpert(ExpertInfo("math"))


def ask(expert: MathExpert, question: str):
    return asyncio.run(asyncio.wait_for(expert.answer(Request.of(question)), timeout=120))


@pytest.mark.parametrize(("question", "text", "confidence"), [
    ("limit of sin(x)/x as x -> 0", "1", SAMPLED),
    ("What is the limit of (1 - cos(x))/x^2 as x approaches 0?", "1/2", SAMPLED),
    ("lim_{x->0} (1-cos(x))/x^2", "1/2", SAMPLED),
    ("lim x->0+ x*log(x)", "0", SAMPLED),
    ("limit (1+1/x)^x as x approaches infinity", "E ≈ 2.71828182845905", SAMPLED),
    ("lim x→∞ x/(x+1)", "1", SAMPLED),
    ("limit of exp(x) as x -> -oo", "0", SAMPLED),
    ("limit of 1/x as x -> 0 from the left", "-oo", SAMPLED),
    ("lim (x->2) (x^2-4)/(x-2)", "4", SAMPLED),
    ("limit of (x^2-a^2)/(x-a) as x -> a", "2*a", SAMPLED),
    ("limit of 1/x as x -> 0", "the limit does not exist: from the right oo, from the left -oo", SAMPLED),
    ("lim x->0 abs(x)/x", "the limit does not exist: from the right 1, from the left -1", SAMPLED),
    ("limit of 1/log(x) as x -> oo", "0", UNCHECKED),  # 0.027 at x = 1e16: moving towards 0, too slowly to tell
    ("lim x->0 sin(1/x)", "the limit does not exist: it oscillates within [-1, 1]", UNCHECKED),
    ("limit of x*sin(x) as x -> oo", "the limit does not exist: it oscillates without bound", UNCHECKED),
    ("limit of (cos(x) - 1 + x^2/2)/x^4 as x -> 0", "1/24", SAMPLED),  # 64 digits cancel at 1e-16
    ("limit of tan(x) as x -> pi/2 from the left", "oo", SAMPLED),
    ("limit of sqrt(x) as x -> 0 from the left", "0", UNCHECKED),  # complex left of 0: no real limit to confirm
])
def test_math_takes_limits_and_checks_them_against_values_near_the_point(math_expert, question, text, confidence):
    answer = ask(math_expert, question)
    assert (answer.text, answer.confidence, answer.details["operation"]) == (text, confidence, "limit")


def test_a_limit_value_the_functions_values_move_away_from_fails_its_check():
    x = sympy.Symbol("x")
    assert approached(sympy.sin(x) / x, x, sympy.Integer(0), "+", sympy.Integer(1)) == SAMPLED
    assert approached(sympy.sin(x) / x, x, sympy.Integer(0), "+", sympy.Integer(2)) == FAILED
    assert approached(1 / x, x, sympy.Integer(0), "-", sympy.oo) == FAILED  # -1e8, -1e12, …: the other way
    assert approached(x, x, sympy.oo, "-", sympy.Integer(5)) == FAILED


def test_a_limit_without_its_point_is_one_line_saying_how_to_write_it(math_expert):
    with pytest.raises(RequestError, match=r"cannot tell where the limit of '1/x' is taken \(write 'as x -> 0'"):
        ask(math_expert, "limit of 1/x")
