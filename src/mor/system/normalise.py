"""Answer text as `voting` compares it: equivalent writings of one answer made equal (case, spacing, punctuation,
Markdown, Unicode forms, number formats), while anything that changes what the answer says (operators, brackets,
digits, letters of any script) is kept."""

import re
import unicodedata
from decimal import Decimal, InvalidOperation
from fractions import Fraction

_MINUS, _FRACTION_SLASHES = "\u2212", ("\u2044", "\u2215")  # − and ⁄ ∕: the minus and slashes of maths
_DIGRAPHS = {"!=": "≠", "<=": "≤", ">=": "≥", "==": "="}  # one sign each, so x != 1 does not read x = 1
_OPERATORS = ".-/^<>=+*%#≠≤≥"  # ASCII symbols that change what an answer says: 3.5, -3, 1/2, 2^3, x<2, C++, 50%
_BRACKETS = "()[]{}"
_KEPT_SYMBOLS = set(_OPERATORS + _BRACKETS)
_PLAIN_TOKEN = re.compile(r"(?<!\w)[(\[{]([^\s()\[\]{}<>=+*/^%≠≤≥]*)[)\]}]")  # (A), [1]; not f(x): a call
_LABEL = re.compile(r"^([^\s()\[\]{}<>=+*/^%≠≤≥]+) ?\)(?= |$)")  # B), 1) Paris: an option's label, as (B) and B
_PLAIN_EXPONENTS = range(-100, 101)  # numbers written out in full (1e20 → 100000000000000000000); others as 1e200
_SPACED = re.compile(r" ?([-<>=+*/^%≠≤≥()\[\]{}]) ?")
# SI thousands (1 000 000) written with a no-break or thin space, as typesetting does; a plain space may part two
# numbers ("100 200"), so it stays
_SI_THOUSANDS = re.compile(r"(?<=\d)[\u00a0\u2009\u202f](?=\d{3}(?!\d))")
_RATIO = re.compile(r"(-?\d+)/(-?\d+)")


def _superscripts_marked(text: str) -> str:
    """`text` with each run of superscripts written out after a caret, so that 2³ reads 2^3, not 23."""
    out, raised = [], False
    for c in text:
        is_super = unicodedata.decomposition(c).startswith("<super>")
        if is_super and not raised:
            out.append("^")
        out.append(unicodedata.normalize("NFKC", c) if is_super else c)
        raised = is_super
    return "".join(out)


def _latin_accents_dropped(text: str) -> str:
    """`text` without the accents on Latin letters (Café → Cafe); other scripts' marks (й, が) and the strokes of
    symbols (≠, ≯) are kept."""
    out, ascii_base = [], False
    for c in unicodedata.normalize("NFKD", text):
        if unicodedata.combining(c):
            if not ascii_base:
                out.append(c)
            continue
        out.append(c)
        ascii_base = c.isascii() and c.isalpha()
    return unicodedata.normalize("NFKC", "".join(out))


def _markdown_dropped(text: str) -> str:
    """`text` without Markdown's heading marks, list bullets and emphasis (`**Paris**`, `*x*`): the `*` of 2*3
    stays."""
    text = re.sub(r"(?m)^\s*(#+|[-*+])\s+", "", text)
    return " ".join(token.strip("*") if token.strip("*") else token for token in text.split(" "))


def _ignored(c: str) -> bool:
    """Characters votes do not compare: punctuation (quotes, commas, !, ?, «»), currency signs and ASCII symbols,
    except operators and brackets (`_KEPT_SYMBOLS`); letters, digits and other symbols (√, ∞, °, ×) count."""
    if c in _KEPT_SYMBOLS:
        return False
    category = unicodedata.category(c)
    return category[0] == "P" or category == "Sc" or (c.isascii() and category[0] == "S")


def _number(text: str) -> str | None:
    """`text` as a canonical number, exact (no rounding: 1.00000000001 is not 1): trailing zeros and exponents
    written one way (2.50 → 2.5, 1e20 → 100000000000000000000, 1e200 stays 1e200), -0 as 0; None if it is not one."""
    try:
        number = Decimal(text)
    except InvalidOperation:
        return _ratio(text)
    if not number.is_finite():
        return None
    sign, digits, exponent = number.as_tuple()
    written = "".join(map(str, digits)).lstrip("0")
    if not written:
        return "0"
    significant = written.rstrip("0")
    exponent += len(written) - len(significant)
    if exponent in _PLAIN_EXPONENTS:
        return format(Decimal((sign, tuple(map(int, significant)), exponent)), "f")
    return f"{'-' * sign}{significant}e{exponent}"


def _ratio(text: str) -> str | None:
    """A fraction of integers in lowest terms, exact, as a decimal where it has one (2/4 → 0.5, 6/3 → 2, 2/6 →
    1/3); None if `text` is not one or divides by zero."""
    match = _RATIO.fullmatch(text)
    if match is None or max(map(len, match.groups())) > 4000 or int(match[2]) == 0:  # past int()'s 4300 digits
        return None
    ratio = Fraction(int(match[1]), int(match[2]))
    places = _decimal_places(ratio.denominator)
    if places is None:
        return f"{ratio.numerator}/{ratio.denominator}"
    return _number(str(Decimal(ratio.numerator * 10**places // ratio.denominator).scaleb(-places)))


def _decimal_places(denominator: int) -> int | None:
    """How many digits 1/denominator has after the point, or None if they never end (a prime factor other than
    2 and 5)."""
    counts = []
    for factor in (2, 5):
        counts.append(0)
        while denominator % factor == 0:
            denominator //= factor
            counts[-1] += 1
    return max(counts) if denominator == 1 else None


def normalise(text: str) -> str:
    """Answer text reduced to what votes compare: case, spacing, punctuation, currency signs, Markdown emphasis
    and the accents on Latin letters removed; compatibility forms unified (NFKC: ﬁ → fi, full-width digits →
    digits); the minus sign − read as -, fraction slashes as / (½ → 1/2), superscripts as powers (2³ → 2^3);
    operators and brackets kept (x<2 is not x>2), without the spaces around them, and brackets around a single
    word dropped ((A) → a; a call's stay: f(x) is not fx), as is the lone bracket of a leading label (B) → b);
    numbers canonical and exact (42.0 → 42, 1e3 → 1000, 1 000 → 1000 with a no-break or thin space, -0 → 0,
    2/4 → 0.5, 2/6 → 1/3).
    No other character is dropped, so answers in any script stay apart."""
    text = _latin_accents_dropped(_superscripts_marked(_SI_THOUSANDS.sub("", text)))
    text = text.replace(_MINUS, "-")
    for slash in _FRACTION_SLASHES:
        text = text.replace(slash, "/")
    text = _markdown_dropped(text.casefold().strip())
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # thousands separators: 1,000 → 1000
    for pair, sign in _DIGRAPHS.items():
        text = text.replace(pair, sign)
    text = "".join(" " if _ignored(c) else c for c in text)
    text = " ".join(text.split())
    text = _LABEL.sub(r"\1", text)  # before unwrapping, which would make f(x)) read as a label fx)
    while (unwrapped := _PLAIN_TOKEN.sub(r"\1", text)) != text:
        text = unwrapped
    text = _SPACED.sub(r"\1", " ".join(text.split())).rstrip(" .")  # a final full stop; .5 is a decimal point
    return _number(text) or text
