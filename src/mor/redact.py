"""Credentials cut from text that leaves the process: the keys mor itself read from the environment, and text shaped
like a credential (a bearer token, `api_key=…`, a provider's key prefix), so an upstream's careless error message
cannot hand a key to a client."""

import re

SHOWN = "<secret>"
BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[\w.~+/\-]{8,}=*")
# a credential's name, possibly quoted (`"api_key": "…"`), then : or = and a value of at least 4 characters
ASSIGNED = re.compile(r"(?i)\b([\w\-]*(?:api[_\- ]?key|access[_\-]?key|secret|password|passwd|token))"
                      r"(['\"]?\s*[:=]\s*['\"]?)[^\s'\",;&<>]{4,}")
# keys shaped as providers issue them: a prefix, then letters and digits (a digit somewhere: not a plain word)
PREFIXED = re.compile(r"\b(?:sk|rk|pk)[_\-](?=[\w\-]*\d)[\w\-]{8,}|\bsk-[\w\-]{20,}|\bgh[pousr]_[A-Za-z0-9]{30,}"
                      r"|\bhf_[A-Za-z0-9]{30,}|\bxox[abp]-[\w\-]{10,}|\bAKIA[0-9A-Z]{16}\b")
SHORTEST = 8  # remembered secrets shorter than this are too likely to be ordinary words ("none", a dummy key)
_known: set[str] = set()


def remember(secret: str) -> None:
    """Cut `secret` (a key read from the environment, say) wherever it appears in text passed to `redact`."""
    if len(secret) >= SHORTEST:
        _known.add(secret)


def redact(text: str) -> str:
    """`text` with every remembered secret and every credential-shaped run replaced by `<secret>`."""
    for secret in sorted(_known, key=len, reverse=True):
        text = text.replace(secret, SHOWN)
    text = BEARER.sub(rf"\1 {SHOWN}", text)
    text = ASSIGNED.sub(rf"\1\2{SHOWN}", text)
    return PREFIXED.sub(SHOWN, text)
