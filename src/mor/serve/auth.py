"""API keys: callers send `Authorization: Bearer KEY`; the service keeps only SHA-256 hashes and compares them in
constant time. `authorize` is the FastAPI dependency every /v1 endpoint takes; it also applies the rate limits: the
caller's, and per address one for requests without a valid key, so guessing keys is slow. An address past that one
gets 429 for every request, the right key included, until its bucket refills: were the key still checked, a 200
among the 429s would tell the right guess at full speed."""

import hashlib
import hmac
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mor.serve.errors import ApiError
from mor.serve.limits import RateLimiter
from mor.serve.settings import ApiKey, RateLimit

bearer = HTTPBearer(auto_error=False, description="an API key whose SHA-256 is in the config's api_keys")
CHALLENGE = {"WWW-Authenticate": "Bearer"}
# The key's place in the hint is not a run of letters: `errors.public` would take "Bearer YOUR_KEY" for a credential.
MISSING = "missing API key; send the header 'Authorization: Bearer <your key>'"


class Keyring:
    """The configured keys' hashes; `identify` names the key a caller presented, or None."""

    def __init__(self, keys: list[ApiKey], allow_anonymous: bool, failure_limit: RateLimit | None = None) -> None:
        self.keys, self.allow_anonymous, self.failure_limit = keys, allow_anonymous, failure_limit

    def identify(self, presented: str) -> ApiKey | None:
        """The key whose hash matches; every configured hash is compared, so timing reveals nothing."""
        digest = hashlib.sha256(presented.encode()).hexdigest()
        found = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.sha256):
                found = key
        return found


async def authorize(request: Request,
                    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
    """The caller's name (the key's name, or `anonymous@ADDRESS` where allowed), after its rate limit; else 401/429.
    Async because it never blocks: FastAPI would run a plain `def` in its thread pool, a thread hop per request."""
    keyring: Keyring = request.app.state.service.keyring
    limiter: RateLimiter = request.app.state.service.limiter
    address = request.client.host if request.client else "unknown"
    _failures(limiter.wait, keyring, address)  # before any key is checked: see the module's docstring
    if credentials is None:
        if not keyring.allow_anonymous:
            _refuse(limiter, keyring, address, MISSING, "missing_api_key")
        caller, limit = f"anonymous@{address}", None
    else:
        key = keyring.identify(credentials.credentials)
        if key is None:
            _refuse(limiter, keyring, address, "invalid API key; check the key you send in 'Authorization: Bearer …'",
                    "invalid_api_key")
        caller, limit = key.name, key.rate_limit
    _limit(limiter.take(caller, limit), f"rate limit exceeded for {caller}")
    return caller


async def authenticate(request: Request) -> None:
    """`authorize` for a /v1 request refused before FastAPI ran its dependencies (a body that is not JSON): a caller
    without a valid key gets its 401, counted against its address, or 429, never a word about its body."""
    if request.url.path.startswith("/v1/"):
        await authorize(request, await bearer(request))


def _refuse(limiter: RateLimiter, keyring: Keyring, address: str, message: str, code: str) -> None:
    """401, counted against `address`'s failure limit (429 once that is spent)."""
    _failures(limiter.take, keyring, address)
    raise ApiError(401, message, code=code, headers=CHALLENGE)


def _failures(use: Callable[[str, RateLimit | None], float], keyring: Keyring, address: str) -> None:
    """429 when `address` has sent more requests without a valid key than the failure limit allows; `use` is the
    limiter's `wait` (only look) or `take` (count this request as one of them)."""
    _limit(use(f"unauthenticated@{address}", keyring.failure_limit),
           f"too many requests without a valid API key from {address}")


def _limit(wait: float, reason: str) -> None:
    """429 with Retry-After when a bucket is `wait` seconds from its next token."""
    if wait > 0:
        raise ApiError(429, f"{reason}; retry after {wait:.2f} s",
                       code="rate_limit_exceeded", headers={"Retry-After": str(max(1, round(wait + 0.5)))})


Caller = Annotated[str, Depends(authorize)]
