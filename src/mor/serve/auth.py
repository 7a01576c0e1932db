"""API keys: callers send `Authorization: Bearer KEY`; the service keeps only SHA-256 hashes and compares them in
constant time. `authorize` is the FastAPI dependency every /v1 endpoint takes; it also applies the rate limit."""

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mor.serve.errors import ApiError
from mor.serve.limits import RateLimiter
from mor.serve.settings import ApiKey

bearer = HTTPBearer(auto_error=False, description="an API key whose SHA-256 is in the config's api_keys")
CHALLENGE = {"WWW-Authenticate": "Bearer"}


class Keyring:
    """The configured keys' hashes; `identify` names the key a caller presented, or None."""

    def __init__(self, keys: list[ApiKey], allow_anonymous: bool) -> None:
        self.keys, self.allow_anonymous = keys, allow_anonymous

    def identify(self, presented: str) -> ApiKey | None:
        """The key whose hash matches; every configured hash is compared, so timing reveals nothing."""
        digest = hashlib.sha256(presented.encode()).hexdigest()
        found = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.sha256):
                found = key
        return found


def authorize(request: Request,
              credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
    """The caller's name (the key's name, or `anonymous@ADDRESS` where allowed), after its rate limit; else 401/429."""
    keyring: Keyring = request.app.state.service.keyring
    limiter: RateLimiter = request.app.state.service.limiter
    if credentials is None:
        if not keyring.allow_anonymous:
            raise ApiError(401, "missing API key; send the header 'Authorization: Bearer YOUR_KEY'",
                           code="missing_api_key", headers=CHALLENGE)
        caller, limit = f"anonymous@{request.client.host if request.client else 'unknown'}", None
    else:
        key = keyring.identify(credentials.credentials)
        if key is None:
            raise ApiError(401, "invalid API key; check the key you send in 'Authorization: Bearer …'",
                           code="invalid_api_key", headers=CHALLENGE)
        caller, limit = key.name, key.rate_limit
    wait = limiter.take(caller, limit)
    if wait > 0:
        raise ApiError(429, f"rate limit exceeded for {caller}; retry after {wait:.2f} s",
                       code="rate_limit_exceeded", headers={"Retry-After": str(max(1, round(wait + 0.5)))})
    return caller


Caller = Annotated[str, Depends(authorize)]
