"""Credentials cut from text that leaves the process: the keys mor itself read from the environment, and text shaped
like a credential (a bearer token, `api_key=…`, a provider's key prefix), so an upstream's careless error message
cannot hand a key to a client."""

import re

SHOWN = "<secret>"
BEARER = re.compile(r"(?i)\b(bearer)\s+[\w.~+/\-]+=*")
ASSIGNED = re.compile(r"(?i)\b((?:api|access|auth|secret|private)[_\- ]?(?:key|token)|token|secret|password|passwd)"
                      r"(\s*[:=]\s*['\"]?)[^\s'\",;&]+")
PREFIXED = re.compile(r"\b(?:sk|rk|pk)[_\-][\w\-]{6,}|\b(?:ghp|gho|ghs|hf|xox[abp])[_\-][\w\-]{10,}"
                      r"|\bAKIA[0-9A-Z]{16}\b")
_known: set[str] = set()


def remember(secret: str) -> None:
    """Cut `secret` (a key read from the environment, say) wherever it appears in text passed to `redact`."""
    if len(secret) >= 4:
        _known.add(secret)


def redact(text: str) -> str:
    """`text` with every remembered secret and every credential-shaped run replaced by `<secret>`."""
    for secret in sorted(_known, key=len, reverse=True):
        text = text.replace(secret, SHOWN)
    text = BEARER.sub(rf"\1 {SHOWN}", text)
    text = ASSIGNED.sub(rf"\1\2{SHOWN}", text)
    return PREFIXED.sub(SHOWN, text)
