"""A SymPy tool expert that works offline: it solves, simplifies, factors, expands, evaluates, differentiates,
integrates and takes limits, then checks its own answer by another route.

Confidence: 1.0 when the check covers the whole answer (solutions substituted back give exactly 0,
simplify(original − result) == 0, an integral differentiates back to the integrand, a derivative integrates back
to the function, a number agrees with an independent high-precision recomputation or quadrature, a divergent
integral's antiderivative, differentiated back, is unbounded at a bound or a pole); 0.9 when the
answer only agrees at sample points (a numeric identity check, finite differences, a limit against the function's
values ever closer to the point); 0.5 when it could not be checked, as for the solutions of a periodic equation
(sin(x) = 0), of which SymPy lists only a few, of a polynomial equation with roots it cannot write out
(x^5 - x + 1 = 0), a limit approached too slowly to tell (1/log(x) as x → ∞) or an oscillation (sin(1/x) at 0);
0 when the check failed. A question it cannot read, or whose answer holds a number longer than Python writes out
(`sys.get_int_max_str_digits()`), raises a RequestError.

SymPy runs in a child process killed at `time_limit_s` (`sandbox`): a thread could not be stopped, and one question
that runs on for hours ("solve sin(x)^5 + cos(x)^3 + tan(x) = 1") would keep a core and a concurrency slot. The
reader's limits on length, exponents and sizes refuse what would fill memory before SymPy starts.
"""

import math
import random
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import sympy
from sympy.calculus.singularities import singularities
from sympy.functions.elementary.trigonometric import TrigonometricFunction
from sympy.solvers.solvers import denoms

from mor.errors import check
from mor.system.experts.base import Expert, ExpertInfo
from mor.system.experts.errors import ExpertError
from mor.system.experts.math_parse import Problem, Reader, digits, too_long
from mor.system.experts.sandbox import preload, run_killable
from mor.system.request import Answer, Request

EXACT, SAMPLED, UNCHECKED, FAILED = 1.0, 0.9, 0.5, 0.0
CHECKS = {EXACT: "exact", SAMPLED: "sampled", UNCHECKED: "unchecked", FAILED: "failed"}
# What SymPy gives for a definite integral that diverges: infinite, undefined (oo - oo), or oscillating bounds.
DIVERGENT = (sympy.oo, -sympy.oo, sympy.zoo, sympy.nan, sympy.AccumBounds)
# Functions undefined where a cosine vanishes: written over cos (tan(x) = cos(x - pi/2)/cos(x)), the denominator shows.
POLES = (sympy.tan, sympy.cot, sympy.sec, sympy.csc)


@dataclass
class Result:
    """An operation's answer: text to show, a plain value, the confidence its check earned and what was checked."""

    text: str
    value: Any
    confidence: float
    checked: str


class TooLong(Exception):
    """An answer holding a number longer than Python converts to text; the message says how long."""


class MathExpert(Expert):
    """Answers questions like 'solve 2x + 3 = 11', 'x^2 - 5x + 6 = 0', 'solve x + y = 3, x - y = 1',
    'simplify (x^2-1)/(x-1)', 'factor x^2 - 1', 'what is 17*23 + 4', 'derivative of sin(x)*x',
    'integrate x^2', 'integrate x^2 from 0 to 1' and 'limit of sin(x)/x as x -> 0'; see
    `mor.system.experts.math_parse` for the limits."""

    def __init__(self, info: ExpertInfo, *, time_limit_s: float = 5.0, max_chars: int = 500,
                 max_exponent: int = 1000, max_degree: int = 200, max_size: int = 10_000,
                 max_terms: int = 1000) -> None:
        super().__init__(info)
        check(time_limit_s > 0 and min(max_chars, max_exponent, max_degree, max_size, max_terms) >= 1,
              f"expert {info.name}: time_limit_s must be > 0 and max_chars, max_exponent, max_degree, max_size, "
              "max_terms ≥ 1")
        self.time_limit_s = time_limit_s
        self.reader = Reader(info.name, max_chars, max_exponent, max_degree, max_size, max_terms)

    async def _answer(self, request: Request) -> Answer:
        try:
            problem, result = await run_killable(work, self.reader, request.question, timeout_s=self.time_limit_s)
        except TimeoutError:
            raise self.reader.fail(f"SymPy took longer than {self.time_limit_s:g} s") from None
        return Answer(expert=self.name, text=result.text, value=result.value, confidence=result.confidence,
                      details={"operation": problem.operation, "check": CHECKS[result.confidence],
                               "checked": result.checked, "input": [str(e) for e in problem.expressions]})


def work(reader: Reader, question: str) -> tuple[Problem, Result]:
    """Read, compute and check `question` (blocking; `MathExpert` runs it in a child process)."""
    problem = reader.read(question)
    try:
        return problem, OPERATIONS[problem.operation](problem)
    except ExpertError:
        raise
    except TooLong as err:
        raise reader.fail(str(err)) from None
    except Exception as err:  # SymPy raises many types (NotImplementedError, PolynomialError, …)
        raise reader.fail(f"SymPy could not {problem.operation} it ({type(err).__name__}: "
                          f"{' '.join(str(err).split())[:120]})") from None


def solve(problem: Problem) -> Result:
    """Solutions of the equations, each substituted back; those that do not check are dropped. Those of a periodic
    equation (sin(x) = 0) stay unchecked: SymPy lists a few of its infinitely many, which substituting back misses."""
    reduced = [sympy.simplify(e) for e in problem.expressions]
    if all(r == 0 for r in reduced):
        return identity(problem)
    if any(r.is_number and r != 0 for r in reduced):
        text, value = ("no solution", []) if problem.symbols else ("false", False)
        return Result(text, value, EXACT, "an equation simplifies to a contradiction")
    unknowns = ([problem.variable] if problem.variable else
                problem.symbols if len(problem.expressions) > 1 else [default_variable(problem)])
    kept = []
    for solution in sympy.solve(problem.expressions, unknowns, dict=True):
        confidence = min(same(e.subs(solution), sympy.Integer(0)) for e in problem.expressions)
        if confidence > FAILED:
            kept.append((solution, confidence))
    if not kept:
        return Result("no solution found", [], UNCHECKED, "no solution to substitute back")
    text = " or ".join(", ".join(f"{k} = {shown(v)}" for k, v in s.items()) for s, _ in kept)
    confidence, checked = min(c for _, c in kept), "solutions substituted back into the equations"
    if periodic(problem.expressions, unknowns, [s for s, _ in kept]):
        confidence, checked = min(confidence, UNCHECKED), f"{checked}; the set may be incomplete (periodic equation)"
    expected, last = distinct_solutions(problem.expressions, unknowns), unknowns[-1]
    if expected is not None and len({s.get(last) for s, _ in kept}) < expected:
        confidence = min(confidence, UNCHECKED)
        checked = f"{checked}; incomplete: {expected} distinct values of {last} solve it, SymPy wrote out fewer"
    return Result(text, [{str(k): plain(v) for k, v in s.items()} for s, _ in kept], confidence, checked)


def identity(problem: Problem) -> Result:
    """An equation whose sides simplify equal: true for every value except where the question is undefined. x/x = 1
    fails at x = 0, which the evaluated parse (x/x is 1 at once) and simplify lose, so the unevaluated one is read."""
    excluded = exclusions(problem.unevaluated)
    if not excluded:
        return Result("true for every value" if problem.symbols else "true", True, EXACT, "both sides simplify equal")
    return Result(f"true for every value except where {' or '.join(excluded)}", {"except": excluded}, EXACT,
                  "both sides simplify equal; excluded where a denominator or a logarithm's argument is 0")


def exclusions(expressions: list[sympy.Expr]) -> list[str]:
    """Where the (unevaluated) expressions are undefined: a denominator (tan, cot, sec, csc written over cos) or a
    logarithm's argument is 0. Each zero as 'x = 0' where it has one variable and finitely many written out, else
    as 'cos(x) = 0'."""
    vanishing = set()
    for e in expressions:
        vanishing |= denoms(e) | {f.args[0] for f in e.atoms(sympy.log)}
        vanishing |= set().union(*(denoms(f.rewrite(sympy.cos)) for f in e.atoms(*POLES)))
    excluded = []
    for d in sorted({sympy.simplify(d) for d in vanishing if d.free_symbols}, key=str):
        symbol = next(iter(d.free_symbols)) if len(d.free_symbols) == 1 else None
        zeros = sympy.solveset(d, symbol) if symbol else None
        if isinstance(zeros, sympy.FiniteSet) and not zeros.has(sympy.CRootOf):  # roots it can write out
            excluded += [f"{symbol} = {shown(z)}" for z in zeros]
        elif zeros != sympy.S.EmptySet:
            excluded.append(f"{shown(d)} = 0")
    return list(dict.fromkeys(excluded))


def periodic(expressions: list[sympy.Expr], unknowns: list[sympy.Symbol], solutions: list[dict]) -> bool:
    """Whether the equations have infinitely many solutions of which SymPy lists a few: a trigonometric function of
    an unknown, or a complex solution of an unknown in an exponent (exp(x) = -1: x = iπ + 2πik)."""
    if any(f.has(*unknowns) for e in expressions for f in e.atoms(TrigonometricFunction)):
        return True
    exponent = any(p.exp.has(*unknowns) for e in expressions for p in e.atoms(sympy.Pow, sympy.exp))
    return exponent and any(not v.is_real for s in solutions for v in s.values())


def distinct_solutions(expressions: list[sympy.Expr], unknowns: list[sympy.Symbol]) -> int | None:
    """How many distinct values the last unknown takes over the complex numbers, for polynomial equations with
    finitely many solutions and no other symbols (the squarefree degree of a lex Gröbner basis's last polynomial);
    None where that cannot be told. SymPy's solve drops roots it cannot write in radicals without a word."""
    if set().union(*(e.free_symbols for e in expressions)) - set(unknowns) or \
            not all(e.is_polynomial(*unknowns) for e in expressions):
        return None
    basis = sympy.groebner(expressions, *unknowns, order="lex")
    last = basis.exprs[-1] if basis.exprs else None
    if last is None or not basis.is_zero_dimensional or last.free_symbols != {unknowns[-1]}:
        return None
    return sympy.degree(sympy.sqf_part(last), unknowns[-1])


def evaluate(problem: Problem) -> Result:
    """A number, recomputed in 30-digit floating point from the unevaluated input; an expression, simplified."""
    (expr,), (raw,) = problem.expressions, problem.unevaluated
    if expr.free_symbols or problem.operation == "simplify":
        return transform(problem, sympy.simplify(expr))
    if expr.has(sympy.nan, sympy.zoo):
        raise ValueError(f"{raw} is undefined")
    agree = close(expr, raw)
    return Result(number_text(expr), plain(expr), EXACT if agree else FAILED, "recomputed in floating point")


def transform(problem: Problem, result: sympy.Expr) -> Result:
    """A rewritten expression (simplified, factored, expanded), checked equal to the original."""
    return Result(shown(result), plain(result), same(problem.expressions[0], result),
                  "simplify(original - result) == 0")


def differentiate(problem: Problem) -> Result:
    """The derivative, checked by finite differences, then exactly by integrating it back to the function."""
    f, v = problem.expressions[0], default_variable(problem)
    d, h = sympy.diff(f, v), sympy.Float("1e-10", 40)
    confidence = sampled((f.subs(v, v + h) - f.subs(v, v - h)) / (2 * h), d)
    back = sympy.integrate(d, v)
    if confidence > FAILED and not back.has(sympy.Integral) and v not in sympy.simplify(back - f).free_symbols:
        confidence = EXACT
    return Result(shown(d), plain(d), confidence, "finite differences, then integrated back to the function")


def integrate(problem: Problem) -> Result:
    """An antiderivative differentiated back, or a definite integral compared with numeric quadrature."""
    f, v = problem.expressions[0], default_variable(problem)
    if problem.bounds:
        value = sympy.integrate(f, (v, *problem.bounds))
        if value.has(sympy.Integral):
            raise ValueError("no closed form")
        if value.has(*DIVERGENT):
            return diverges(value, unbounded(f, v, problem.bounds))
        quadrature = sympy.Integral(f, (v, *problem.bounds))  # the less reliable side: a miss leaves it unchecked
        if value.free_symbols:  # bounds or integrand with other variables: quadrature at sample points
            return Result(shown(value), plain(value), max(sampled(value, quadrature), UNCHECKED), "numeric quadrature")
        numeric = quadrature_value(quadrature)
        if numeric is None and (confirmed := unbounded(f, v, problem.bounds)) > UNCHECKED:  # a principal value
            return diverges(sympy.nan, confirmed)  # SymPy gives li(2) for 1/log(x) from 0 to 2, a pole at 1
        agree = numeric is not None and close(value, numeric, 1e-6)
        return Result(number_text(value), plain(value), EXACT if agree else UNCHECKED, "numeric quadrature")
    antiderivative = sympy.integrate(f, v)
    if antiderivative.has(sympy.Integral):
        raise ValueError("no closed-form antiderivative")
    return Result(f"{shown(antiderivative)} + C", plain(antiderivative), same(sympy.diff(antiderivative, v), f),
                  "differentiated back to the integrand")


def quadrature_value(integral: sympy.Integral) -> sympy.Expr | None:
    """A definite integral by 30-digit numeric quadrature, or None where a node lands on a pole (1/sqrt(abs(x)) from
    -1 to 1 at 0), for which SymPy's evalf raises TypeError or ZeroDivisionError."""
    try:
        return integral.evalf(30)
    except (TypeError, ZeroDivisionError):
        return None


def diverges(value: sympy.Expr, confidence: float) -> Result:
    """A divergent definite integral (SymPy's value oo, -oo, zoo, nan or AccumBounds) as a one-line answer, with the
    confidence `unbounded` gives it: quadrature cannot check a divergence."""
    infinite = value in (sympy.oo, -sympy.oo)
    checked = ("an antiderivative, differentiated back, is unbounded at a bound or a singular point" if
               confidence > UNCHECKED else "SymPy's value; quadrature cannot check a divergence")
    return Result(f"the integral diverges to {value}" if infinite else "the integral diverges",
                  plain(value) if infinite else "diverges", confidence, checked)


def unbounded(f: sympy.Expr, v: sympy.Symbol, bounds: tuple[sympy.Expr, sympy.Expr]) -> float:
    """How surely the integral of f over real bounds diverges: what differentiating an antiderivative back earns,
    when it has an infinite or no limit at a bound or on a side of a singular point of f between them; else
    UNCHECKED (symbolic bounds, singular points SymPy cannot list, no antiderivative, or only finite limits)."""
    if not all(b.is_extended_real for b in bounds):
        return UNCHECKED
    low, high = sorted(bounds, key=lambda b: sympy.N(b, 30))
    antiderivative = sympy.integrate(f, v)
    points = singularities(f, v, sympy.Interval(low, high))
    if antiderivative.has(sympy.Integral) or not points.is_finite_set:
        return UNCHECKED
    sides = [(low, "+"), (high, "-"), *((p, side) for p in points for side in "+-" if low < p < high)]
    limits = [sympy.limit(antiderivative, v, p, side) for p, side in sides]
    if not any(lim.is_infinite or isinstance(lim, sympy.AccumBounds) for lim in limits):
        return UNCHECKED
    return max(same(sympy.diff(antiderivative, v), f), UNCHECKED)


def limit(problem: Problem) -> Result:
    """A limit: from the side asked, or from both, which must agree (else the answer names each side's), checked
    against the function's values ever closer to the point. An oscillation (sin(1/x) at 0) is named with its bounds
    and left unchecked."""
    f, v, (point, side) = problem.expressions[0], problem.variable, problem.approach
    if point.is_infinite:  # one way to approach ±∞: from below oo, from above -oo
        side = "-" if point == sympy.oo else "+"
    sides = {s: sympy.limit(f, v, point, s) for s in (("+", "-") if side == "+-" else (side,))}
    if any(value.has(sympy.nan) for value in sides.values()):
        raise ValueError(f"SymPy gives {next(iter(sides.values()))}")
    sides = {s: unbounded_oscillation(value) for s, value in sides.items()}
    confidence = min(UNCHECKED if isinstance(value, sympy.AccumBounds) else approached(f, v, point, s, value)
                     for s, value in sides.items())
    checked = "the function's values ever closer to the point"
    value = next(iter(sides.values()))
    if len(set(sides.values())) > 1:
        text = ", ".join(f"from the {SIDE_NAMES[s]} {limit_text(value)}" for s, value in sides.items())
        return Result(f"the limit does not exist: {text}", {SIDE_NAMES[s]: plain(value) for s, value in sides.items()},
                      confidence, checked)
    if isinstance(value, sympy.AccumBounds):
        return Result(f"the limit does not exist: {limit_text(value)}", "does not exist", confidence,
                      "SymPy's bounds; sampling cannot check an oscillation")
    return Result(limit_text(value), plain(value), confidence, checked)


def unbounded_oscillation(value: sympy.Expr) -> sympy.Expr:
    """SymPy's limit of x*sin(x) at oo, oo*sign(AccumBounds(-1, 1)), as the unbounded oscillation it is."""
    if value.has(sympy.AccumBounds) and not isinstance(value, sympy.AccumBounds):
        return sympy.AccumBounds(-sympy.oo, sympy.oo)
    return value


def limit_text(value: sympy.Expr) -> str:
    """A one-sided limit as text: a number or expression, or an oscillation with its bounds."""
    if isinstance(value, sympy.AccumBounds):
        if value.min.is_infinite and value.max.is_infinite:
            return "it oscillates without bound"
        return f"it oscillates within [{shown(value.min)}, {shown(value.max)}]"
    return number_text(value) if value.is_number else shown(value)


def approached(f: sympy.Expr, v: sympy.Symbol, point: sympy.Expr, side: str, value: sympy.Expr) -> float:
    """How f's values at 1e-8, 1e-12 and 1e-16 from `point` on `side` (or at ±1e8, ±1e12, ±1e16 for ±∞), other
    symbols at a seeded random value, bear `value` out: SAMPLED when the last is within 1e-6 of a finite value, or
    the values grow past 1e6 in its direction for an infinite one; UNCHECKED when they move towards it too slowly
    to tell (1/log(x) as x → ∞) or cannot be evaluated; FAILED when they settle elsewhere or move away."""
    rng = random.Random(0)
    at = {s: sympy.Float(rng.uniform(0.3, 2.7), 60) for s in sorted((f.free_symbols | value.free_symbols) - {v},
                                                                      key=str)}
    f, value, point = f.subs(at), value.subs(at), point.subs(at)
    if point.is_infinite:
        points = [(1 if point == sympy.oo else -1) * sympy.Integer(10) ** k for k in (8, 12, 16)]
    else:
        points = [point + (1 if side == "+" else -1) * sympy.Rational(1, 10 ** k) for k in (8, 12, 16)]
    # exact points, evaluated to 30 digits with the working precision raised as cancellation needs: (cos(x) - 1 +
    # x^2/2)/x^4 near 0 loses 64 digits at 1e-16
    samples = [f.evalf(30, subs={v: p}, maxn=600) for p in points]
    if not all(s.is_number and s.is_finite for s in samples):
        return UNCHECKED
    if value.is_real and any(abs(sympy.im(s)) > 1e-20 * max(1, abs(s)) for s in samples):
        return UNCHECKED  # complex values on this side (sqrt(x) left of 0): no real limit to confirm
    if value.is_infinite:
        growing = all(abs(b) > abs(a) for a, b in pairwise(samples))
        direction = {sympy.oo: 1, -sympy.oo: -1}.get(value)  # zoo: complex infinity, any direction
        right_way = direction is None or all(sympy.sign(sympy.re(s)) == direction for s in samples)
        if not (growing and right_way):
            return FAILED
        return SAMPLED if abs(samples[-1]) > 1e6 else UNCHECKED
    if close(samples[-1], value, 1e-6):
        return SAMPLED
    if close(samples[-1], samples[-2], 1e-6):  # settled, elsewhere
        return FAILED
    distances = [abs(s - value) for s in samples]
    return UNCHECKED if all(b < a for a, b in pairwise(distances)) else FAILED


SIDE_NAMES = {"+": "right", "-": "left"}
OPERATIONS = {"solve": solve, "evaluate": evaluate, "simplify": evaluate, "diff": differentiate,
              "integrate": integrate, "limit": limit, "factor": lambda p: transform(p, sympy.factor(p.expressions[0])),
              "expand": lambda p: transform(p, sympy.expand(p.expressions[0]))}
preload([__name__])  # the fork server imports SymPy and this module once, not each child


def default_variable(problem: Problem) -> sympy.Symbol:
    """The variable the question names, else x when present, else its first symbol, else x."""
    x = sympy.Symbol("x")
    return problem.variable or (x if x in problem.symbols or not problem.symbols else problem.symbols[0])


def same(a: sympy.Expr, b: sympy.Expr) -> float:
    """EXACT when simplify(a − b) == 0, else what comparing them at sample points says."""
    return EXACT if sympy.simplify(a - b) == 0 else sampled(a, b)


def sampled(a: sympy.Expr, b: sympy.Expr, points: int = 3) -> float:
    """Compare a and b at seeded random points in [0.3, 2.7]: SAMPLED if they agree at ≥ 2 points where both are
    finite, FAILED if they differ at one, UNCHECKED if too few points could be evaluated."""
    symbols, rng, agreed = sorted((a - b).free_symbols, key=str), random.Random(0), 0
    for _ in range(points):
        at = {s: sympy.Float(rng.uniform(0.3, 2.7), 30) for s in symbols}
        x, y = a.subs(at).evalf(30), b.subs(at).evalf(30)
        if not all(v.is_number and v.is_finite for v in (x, y)):  # a pole, or a function it cannot evaluate
            continue
        if not close(x, y):
            return FAILED
        agreed += 1
    return SAMPLED if agreed >= 2 else UNCHECKED


def close(x: sympy.Expr, y: sympy.Expr, tolerance: float = 1e-9) -> bool:
    """Whether two numbers agree to `tolerance`, relative to their size, in 30-digit arithmetic (no float overflow)."""
    x, y = sympy.N(x, 30), sympy.N(y, 30)
    return bool(sympy.Abs(x - y) <= tolerance * sympy.Max(1, sympy.Abs(x), sympy.Abs(y)))


def number_text(value: sympy.Expr) -> str:
    """A number as text: as it is when rational, a float or infinite, else its exact form and 15 digits."""
    plain_enough = value.is_Rational or value.is_Float or value.is_infinite
    return shown(value) if plain_enough else f"{shown(value)} ≈ {sympy.N(value, 15)}"


def shown(value: sympy.Expr) -> str:
    """`value` as text, or TooLong when it holds an integer with more digits than Python writes out."""
    if why := too_long(digits(value)):
        raise TooLong(f"the answer holds a number too long to write out ({why})")
    return str(value)


def plain(value: sympy.Expr) -> Any:
    """A SymPy value as JSON-friendly Python: int for integers, float for floats a float can hold (1e600 would
    become inf, which JSON cannot carry), else its text."""
    if value.is_Integer:
        return int(value)
    if value.is_Float and math.isfinite(float(value)):
        return float(value)
    return str(value)
