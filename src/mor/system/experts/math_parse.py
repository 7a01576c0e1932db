"""Reading a math question into a `Problem` with SymPy's parser, never `eval`, refusing what could run away.

The question is cut into an operation ("solve", "simplify", "derivative of", "limit of", …), the expressions or
equations and an optional variable, interval or, for a limit, the point approached ("as x -> 0", "lim x->0+ …",
"as x approaches infinity", "from the left"). Numbers with thousands separators ("12,500") are read as one number before
anything is cut at commas. Only digits, letters, operators, brackets, '=', ',' and '!' (factorial) are accepted,
every word of two letters or more must be a known function (a question's variable is one letter, so "x^3 at x = 2"
or "2 to 3" is refused, not read as products of variables: write 'x*y', not 'xy'), and powers and factorials are
bounded before anything is evaluated: a numeric exponent above `max_exponent` (`max_degree` on a base with
variables), a power whose size (digits of a number, degree of a polynomial) or a factorial whose digits would pass
`max_size`, or an expression whose expansion would have more than `max_terms` terms, is refused, so "2^2^2^100",
"100000000!" and "expand (a+b+c+d+f)^30" fail at once instead of filling memory
or holding a thread for minutes. A number with more digits than Python converts between an integer and text
(`sys.get_int_max_str_digits()`, 4300 by default) is refused too, in the question or in what it evaluates to, and
so is a number in scientific notation past the range of a float or below 1e-4300 ("1e999999"), before SymPy spends a
minute building it; an exact power ("3*10^400") is bounded like any other.

A percentage is read as a fraction ("15% of 80" is 15/100*80, "x = 20%" is x = 20/100).

Two numbers side by side ("1 000 000", "3 1/2") are refused: a spaced number, a mixed number and a product read
alike. "÷" and "−" are read as "/" and "-". "6 x 7" and "6 × 7" are products when every variable 'x' of a question
to evaluate (not the x in 'exp') stands between two numbers and there is no '=' or named variable; otherwise 'x' is
the variable, as in "2 x 3 = 12" or "6 x 7 + x".
"""

import math
import re
import sys
from dataclasses import dataclass, field
from tokenize import TokenError

import sympy
from sympy.parsing.sympy_parser import (
    convert_xor,
    implicit_multiplication_application,
    parse_expr,
    standard_transformations,
)

from mor.system.experts.errors import RequestError

TRANSFORMATIONS = (*standard_transformations, implicit_multiplication_application, convert_xor)
FUNCTIONS = {name: getattr(sympy, name) for name in (
    "sin", "cos", "tan", "cot", "sec", "csc", "asin", "acos", "atan", "sinh", "cosh", "tanh", "exp", "log", "sqrt",
    "pi", "oo", "factorial")} | {"ln": sympy.log, "abs": sympy.Abs, "e": sympy.E, "inf": sympy.oo}
# For the unevaluated parse: evaluate=False stops arithmetic but not factorial(5000), which is bounded first.
UNEVALUATED = FUNCTIONS | {"factorial": lambda n: sympy.factorial(n, evaluate=False)}
# Powers and the functions that grow like them: their exponent is bounded before anything is evaluated.
GROWTH = (sympy.Pow, sympy.exp, sympy.sinh, sympy.cosh)
# What the parser's generated code may name: number and symbol constructors, arithmetic, and FUNCTIONS.
NAMESPACE = {name: getattr(sympy, name) for name in ("Integer", "Float", "Rational", "Symbol", "Add", "Mul", "Pow")}

PREFIX = re.compile(r"^(?:(?:please|can you|could you|what is|what's|whats|find|compute|calculate|evaluate|give|"
                    r"tell me|the|value of|result of)\s+)*", re.IGNORECASE)
OPERATION = re.compile(r"^(?P<op>solve|simplify|factori[sz]e|factor|expand|differentiate|derivative of|"
                       r"d/d(?P<dvar>[a-z])|integrate|integral of|antiderivative of|limit of|limit|lim)(?:\s+|(?=_))",
                       re.IGNORECASE)
OPERATIONS = {"solve": "solve", "simplify": "simplify", "factor": "factor", "factorise": "factor",
              "factorize": "factor", "expand": "expand", "differentiate": "diff", "derivative of": "diff",
              "integrate": "integrate", "integral of": "integrate", "antiderivative of": "integrate",
              "limit of": "limit", "limit": "limit", "lim": "limit"}
# Where a limit's variable goes: "as x -> 0", "as x approaches oo", "x→0+" after 'lim', "x -> 0 from the left".
_TENDS = r"(?P<var>[a-z])\s*(?:->|→|approaches|tends to|goes to)\s*(?P<point>-?(?:infinity|inf|oo|\S+?))"
_SIDE = r"(?:(?P<sign>[+-])|\s+from\s+(?:the\s+)?(?P<side>right|left|above|below))?"
APPROACH_AFTER = re.compile(r"\s+as\s+" + _TENDS + _SIDE + "$", re.IGNORECASE)
APPROACH_BEFORE = re.compile(r"^_?[({]?\s*" + _TENDS + _SIDE + r"\s*[)}]?\s+", re.IGNORECASE)
SIDES = {"+": "+", "right": "+", "above": "+", "-": "-", "left": "-", "below": "-"}
FOR_VARIABLE = re.compile(r"^for\s+(?P<var>[a-z])\s*:\s*|\s+for\s+(?P<end>[a-z])$", re.IGNORECASE)
RESPECT_TO = re.compile(r"\s*(?:with respect to|wrt)\s+(?P<var>[a-z])$|\s+d(?P<d>[a-z])$", re.IGNORECASE)
INTERVAL = re.compile(r"\s+from\s+(?P<a>\S+)\s+to\s+(?P<b>\S+)$", re.IGNORECASE)
ALLOWED = re.compile(r"[0-9a-zA-Z+\-*/^().,;=!\s]*")
# Digits in comma-separated groups of exactly three ("12,500", "1,000,000"): one number, not a list.
# Not right after a function's bracket: "log(2,512)" is log of 2 to base 512.
THOUSANDS = re.compile(r"(?<![\w.])(?<![a-zA-Z]\()\d{1,3}(?:,\d{3})+(?![\d,])")
# Two numbers side by side ("1 000 000", "3 1/2"): one number with spaced digits, a mixed number or a product?
SPACED = re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s+\.?\d")
SIGNS = str.maketrans({"×": "*", "÷": "/", "−": "-", "∞": "oo", "∫": "integrate "})  # typeset signs, as words
SPLIT = re.compile(r",|;|\band\b")
# A percentage, "15% of 80" or "2.5%" where a number ends; not "5 % 3" or "5 % -3", which may mean a remainder.
PERCENT = re.compile(r"(?<![\w.])(?=\.?\d)(\d*)(?:\.(\d+))?\s*%"
                     r"(?:\s*(?P<of>of)\b|(?=\s*(?:$|[*/^)=,;]|[-+](?!\s*[\d.]))))", re.IGNORECASE)
# An 'x' between two plain numbers ("6 x 7"): a times sign when nothing else marks x as a variable.
TIMES = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?) x (?=\d+(?:\.\d+)?(?![\w.]))")
# The variable x, not the letter inside a function name ("exp"); "2x" is 2 times x.
VARIABLE_X = re.compile(r"(?<![a-zA-Z])x(?![a-zA-Z])")
# A number in scientific notation ("6.02e23", ".5E-3", "1e+5"): SymPy builds it whole, so its exponent is read first:
# up to a float's range, which is what `bound` measures a Float's size in and what its answer is given as, and down to
# 1e-4300, which SymPy builds in milliseconds (1e-999999 took 8 s).
SCIENTIFIC = re.compile(r"(?<![\w.])(?:\d*\.)?\d+[eE](?P<exponent>[+-]?\d+)")
EXPONENTS = range(-4300, sys.float_info.max_10_exp + 1)


@dataclass
class Problem:
    """A parsed question: the operation, its expressions (equations as lhs − rhs), variable and bounds."""

    operation: str
    expressions: list[sympy.Expr]
    unevaluated: list[sympy.Expr]
    variable: sympy.Symbol | None = None
    bounds: tuple[sympy.Expr, sympy.Expr] | None = None
    approach: tuple[sympy.Expr, str] | None = None  # a limit's point and side: '+', '-' or '+-' (both)
    symbols: list[sympy.Symbol] = field(default_factory=list)


class Reader:
    """Parses questions for one expert, with its limits; `read(question) -> Problem` or a one-line RequestError."""

    def __init__(self, expert: str, max_chars: int, max_exponent: int, max_degree: int, max_size: int,
                 max_terms: int = 1000) -> None:
        self.expert, self.max_chars, self.max_size, self.max_terms = expert, max_chars, max_size, max_terms
        self.max_exponent, self.max_degree = max_exponent, max_degree

    def fail(self, why: str) -> RequestError:
        return RequestError(f"expert {self.expert}: {why}; ask e.g. 'solve 2x + 3 = 11' or 'integrate x^2 from 0 to 1'")

    def read(self, question: str) -> Problem:
        text = " ".join(question.split()).rstrip("?. ").translate(SIGNS)  # not '!': "what is 5!" is a factorial
        text = THOUSANDS.sub(lambda m: m.group().replace(",", ""), text)
        if len(text) > self.max_chars:
            raise self.fail(f"question of {len(text)} characters, more than the limit of {self.max_chars}")
        text = PERCENT.sub(percent, text)
        text = PREFIX.sub("", text)
        operation, variable = "evaluate", None
        if match := OPERATION.match(text):
            op = match["op"].lower()
            operation, variable = ("diff", match["dvar"]) if match["dvar"] else (OPERATIONS[op], None)
            text = text[match.end():]
        bounds = approach = None
        if operation == "integrate" and not INTERVAL.search(text) and (found := RESPECT_TO.search(text)):
            variable, text = found["var"] or found["d"], text[:found.start()]  # "… from 0 to 1 dx"
        if operation == "integrate" and (interval := INTERVAL.search(text)):
            bounds = (self.parse(interval["a"])[1], self.parse(interval["b"])[1])
            text = text[:interval.start()]
        if operation == "limit":
            text, variable, approach = self.approach(text)
        elif found := (FOR_VARIABLE if operation in ("solve", "evaluate") else RESPECT_TO).search(text):
            variable = next(v for v in found.groupdict().values() if v)
            text = text[:found.start()] + text[found.end():]
        if operation == "evaluate" and variable is None:
            text = times(text)
        if spaced := SPACED.search(text):
            raise self.fail(f"{spaced.group()!r} reads as two numbers side by side; write one number without spaces "
                            f"(1000000), a mixed number as 3 + 1/2, or a product with '*'")
        if "!=" in text:
            raise self.fail(f"cannot read {text[:60]!r} as math ('!=' is not an equation; for a factorial in an "
                            f"equation write 'n! = m' with a space)")
        parts = [p.strip() for p in self.split(text)]
        equations = "=" in text
        if equations or len(parts) > 1:
            operation = "solve"
        sides = [self.sides(p, equations) for p in parts]
        if not equations and len(parts) > 1 and (number := next((p for p, (_, u) in zip(parts, sides, strict=True)
                                                                  if not u.free_symbols), None)):
            raise self.fail(f"{number!r} is a number, not an equation, in {text[:60]!r}; ask about one expression, "
                            f"or give equations with '='")
        expressions = [lhs - rhs for (lhs, rhs), _ in sides]
        if why := too_long(max(map(digits, expressions))):
            raise self.fail(f"{text[:60]!r} gives a number too long to write out ({why})")
        unevaluated = [u for _, u in sides]
        symbols = sorted(set().union(*(e.free_symbols for e in unevaluated)), key=str)
        return Problem(operation, expressions, unevaluated, sympy.Symbol(variable) if variable else None, bounds,
                       approach, symbols)

    def approach(self, text: str) -> tuple[str, str, tuple[sympy.Expr, str]]:
        """A limit's expression, variable and (point, side) from 'E as x -> a' or 'x -> a E' (side '+' or '-' when
        written as 'a+', 'a-' or 'from the right/left', else '+-')."""
        found = APPROACH_AFTER.search(text) or APPROACH_BEFORE.search(text)
        if found is None:
            raise self.fail(f"cannot tell where the limit of {text[:60]!r} is taken (write 'as x -> 0' after it, "
                            f"or 'lim x->0+' before it)")
        point = re.sub(r"(?i)^(-?)(?:infinity|inf)$", r"\1oo", found["point"])
        side = SIDES.get((found["sign"] or found["side"] or "").lower(), "+-")
        return text[:found.start()] + text[found.end():], found["var"], (self.parse(point)[1], side)

    def split(self, text: str) -> list[str]:
        """`text` cut at ',', ';' and 'and' outside brackets (so 'log(x, 2)' stays whole)."""
        parts, depth, start = [], 0, 0
        for match in re.finditer(r"[()]|" + SPLIT.pattern, text):
            token = match.group()
            depth += {"(": 1, ")": -1}.get(token, 0)
            if depth == 0 and token not in "()":
                parts.append(text[start:match.start()])
                start = match.end()
        parts.append(text[start:])
        if not all(p.strip() for p in parts):
            raise self.fail(f"empty expression in {text!r}")
        return parts

    def sides(self, text: str, equation: bool) -> tuple[tuple[sympy.Expr, sympy.Expr], sympy.Expr]:
        """An equation's (lhs, rhs) (rhs 0 for an expression) and its unevaluated form (for an arithmetic check)."""
        pieces = text.split("=")
        if len(pieces) != (2 if equation else 1):
            raise self.fail(f"{text!r} should be one equation 'left = right'" if equation
                            else f"{text!r} mixes expressions and equations")
        (raw, lhs), *right = (self.parse(p) for p in pieces)
        if not right:
            return (lhs, sympy.Integer(0)), raw
        raw_right, rhs = right[0]
        return (lhs, rhs), sympy.Add(raw, sympy.Mul(-1, raw_right, evaluate=False), evaluate=False)

    def parse(self, text: str) -> tuple[sympy.Expr, sympy.Expr]:
        """One expression, unevaluated and evaluated: checked for characters and words, parsed unevaluated and
        bounded before it is evaluated."""
        if not text.strip():
            raise self.fail("an empty expression")
        if not ALLOWED.fullmatch(text) or re.search(r"\.(?!\d)", text):
            raise self.fail(f"cannot read {text[:60]!r} as math (unexpected characters)")
        if why := too_long(max(map(len, re.findall(r"\d+", text)), default=0)):
            raise self.fail(f"a number in {text[:60]!r} is too long to read ({why})")
        if far := next((m for m in SCIENTIFIC.finditer(text) if int(m["exponent"]) not in EXPONENTS), None):
            raise self.fail(f"{far.group()[:40]!r} is outside the range of numbers read in scientific notation "
                            f"(exponents {EXPONENTS.start} to {EXPONENTS.stop - 1}); write it as an exact power of 10, "
                            f"e.g. '3*10^400'")
        if re.search(r"(?:^|[^\w)])!", text):
            raise self.fail(f"cannot read {text[:60]!r} as math ('!' is read only as one factorial right "
                            f"after a number, a letter or ')', as in '5!' or '(n+1)!')")
        # Variables are one letter: a longer word that is not a function ("at", "to", "xy") is not math to guess at.
        words = [w for w in re.findall(r"[a-zA-Z]+", text) if w.lower() not in FUNCTIONS and len(w) > 1]
        if words:
            raise self.fail(f"cannot read {text[:60]!r} as math (unknown word {words[0]!r}; variables are single "
                            f"letters, a product is written 'x*y')")
        try:
            expr = parse_expr(text, local_dict=dict(UNEVALUATED), global_dict=dict(NAMESPACE),
                              transformations=TRANSFORMATIONS, evaluate=False)
            if not isinstance(expr, sympy.Expr):
                raise TypeError(type(expr).__name__)
            self.bound(expr)
            return expr, parse_expr(text, local_dict=dict(FUNCTIONS), global_dict=dict(NAMESPACE),
                                    transformations=TRANSFORMATIONS)
        except (SyntaxError, TokenError, TypeError, ValueError, AttributeError, NameError) as err:
            raise self.fail(f"cannot read {text[:60]!r} as math ({type(err).__name__})") from None

    def bound(self, expr: sympy.Expr) -> None:
        """Refuse powers too large to compute, innermost first, using only float estimates of sizes and of the
        number of terms an expansion would have."""
        size: dict[sympy.Basic, float] = {}
        terms: dict[sympy.Basic, float] = {}
        for node in sympy.postorder_traversal(expr):
            terms[node] = _terms(node, terms)
            if terms[node] > self.max_terms:
                raise self.fail(f"{str(node)[:60]} would expand to about {terms[node]:.3g} terms, more than the "
                                f"limit of {self.max_terms}")
            if isinstance(node, sympy.factorial):  # of a number: bounded; of variables: stays unevaluated
                arg = node.args[0]
                size[node] = size.get(arg, 0.0) + 1 if arg.free_symbols else self.factorial_digits(node)
            elif isinstance(node, sympy.Rational):
                size[node] = math.log10(max(abs(node.p), abs(node.q), 1))
            elif isinstance(node, sympy.Float):
                size[node] = max(math.log10(abs(float(node)) or 1.0), 0.0)
            elif isinstance(node, GROWTH) and not node.args[-1].free_symbols:
                base, power = (node.args[0], node.args[1]) if isinstance(node, sympy.Pow) else (sympy.E, node.args[0])
                exponent = sympy.Abs(power.evalf(15))
                limit = self.max_degree if base.free_symbols else self.max_exponent
                if not bool(exponent <= limit):
                    raise self.fail(f"exponent {power} is larger than the limit of {limit} (max_degree for "
                                    f"powers of variables, max_exponent for numbers)")
                size[node] = float(exponent) * max(size.get(base, 0.0), 1.0)
            else:
                args = [size.get(a, 0.0) for a in node.args]
                size[node] = sum(args) if isinstance(node, sympy.Mul) else max(args, default=0.0) + 1
            if size[node] > self.max_size:
                raise self.fail(f"{str(node)[:60]} is too large to compute (about {size[node]:.3g} digits or degree, "
                                f"limit {self.max_size})")

    def factorial_digits(self, node: sympy.factorial) -> float:
        """The digits of n! for a number n (log10 Γ(|n| + 1), from a float estimate of n), refused past max_size."""
        n = float(sympy.Abs(node.args[0].evalf(15)))
        digits = math.lgamma(n + 1) / math.log(10) if math.isfinite(n) else math.inf
        if not digits <= self.max_size:
            raise self.fail(f"{str(node)[:60]} is too large to compute (about {digits:.3g} digits, limit "
                            f"{self.max_size})")
        return max(digits, 0.0)


def _terms(node: sympy.Basic, terms: dict[sympy.Basic, float]) -> float:
    """An upper estimate of the terms `node` expands to, from its arguments' (`terms`): sums add, products multiply,
    a t-term base with variables to a whole power n gives C(n + t − 1, t − 1) (float: it may be astronomical)."""
    args = [terms.get(a, 1.0) for a in node.args]
    if isinstance(node, sympy.Add):
        return sum(args)
    if isinstance(node, sympy.Mul):
        return math.prod(args)
    if isinstance(node, sympy.Pow) and node.args[0].free_symbols and node.args[1].is_Integer and node.args[1] > 0:
        n, t = int(node.args[1]), args[0]
        return math.exp(math.lgamma(n + t) - math.lgamma(n + 1) - math.lgamma(t))
    return max(args, default=1.0)


def percent(match: re.Match) -> str:
    """A `PERCENT` match as an exact fraction ("2.5%" → "(25/1000)"), times what follows "of"."""
    whole, decimals = match[1], match[2] or ""
    if too_long(len(whole + decimals)):  # left as it is: the '%' is then refused in one line
        return match.group()
    fraction = f"({int(whole + decimals or '0')}/{100 * 10 ** len(decimals)})"
    return fraction + "*" if match["of"] else fraction


def times(text: str) -> str:
    """`text` with each 'x' between two numbers as '*' ("6 x 7" → "6*7"), when that leaves no variable x and no '='
    in it: an 'x' elsewhere ("6 x 7 + x", "x^2"; not the x in "exp") or an equation ("2 x 3 = 12") makes every 'x' the
    variable."""
    product = TIMES.sub(r"\1*", text)
    return text if "=" in text or VARIABLE_X.search(product) else product


def digits(expr: sympy.Basic) -> int:
    """The digits of the longest integer in `expr` (numerators and denominators; 0 when it has none), counted
    exactly without writing it out, which Python refuses past its limit."""
    largest = max((max(abs(r.p), r.q) for r in expr.atoms(sympy.Rational)), default=0)
    return sympy.integer_log(largest, 10)[0] + 1 if largest else 0


def too_long(count: int) -> str | None:
    """Why a number of `count` digits cannot be converted between an integer and text, or None when it can: Python
    refuses more than `sys.get_int_max_str_digits()` (0: no limit)."""
    limit = sys.get_int_max_str_digits()
    return f"{count} digits, more than Python's limit of {limit}" if limit and count > limit else None
