"""The service's YAML config: which routing system and trained models to serve, keys, limits, batching, server.

Relative paths inside the file are relative to the file. Errors name the field, e.g.
`configs/serve.yaml: rate_limit.requests_per_s: must be > 0, got 0`.
"""

import hashlib
import re
from pathlib import Path

from pydantic import Field, model_validator

from mor.config import Strict, read_yaml, validate
from mor.errors import ConfigError

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
# What a browser sends as Origin: scheme://host[:port], the host a name, an IPv4 address or a bracketed IPv6 one.
ORIGIN = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://(\[[0-9A-Fa-f:.]+\]|[^/?#:\s@\[\]]+)(:[0-9]{1,5})?")
MIN_RATE = 1e-6  # requests per second, about one in 12 days: slower is a typo, and at 1e-320 a 429's wait overflows


class RateLimit(Strict):
    """A token bucket per caller: `burst` requests at once, refilled at `requests_per_s`."""

    requests_per_s: float = Field(ge=MIN_RATE, allow_inf_nan=False,
                                  description=f"at least {MIN_RATE} (about one in 12 days)")
    burst: int = Field(ge=1)


class ApiKey(Strict):
    """A caller: its name (in metrics and logs), its key's SHA-256 (`mor serve hash-key`), an optional own limit."""

    name: str = Field(pattern=NAME)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the key; the key itself is never stored")
    rate_limit: RateLimit | None = Field(None, description="overrides the global rate_limit for this key")


class Batching(Strict):
    """Dynamic micro-batching of /v1/predict: concurrent inputs share one forward pass."""

    enabled: bool = True
    max_batch: int = Field(64, ge=1, le=65536, description="inputs in one forward pass at most")
    max_wait_ms: float = Field(2.0, ge=0, le=10_000, description="how long the first input waits for company")


class PredictModel(Strict):
    """A checkpoint written by `mor train`, served under `name` at /v1/predict."""

    name: str = Field(pattern=NAME)
    checkpoint: Path = Field(description="run folder, RUN/best or a step-* folder")
    description: str = ""
    max_inputs: int = Field(256, ge=1, description="inputs in one request at most")
    max_length: int = Field(4096, ge=1, description="positions of one sequence input at most")
    batching: Batching | None = Field(None, description="this model's own batching; none: the global one")


class Server(Strict):
    """uvicorn's settings; `mor serve --host/--port/--workers` override them."""

    host: str = Field("127.0.0.1", min_length=1, description="address to listen on; 0.0.0.0 for every interface")
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=256)
    graceful_shutdown_s: float = Field(30.0, ge=0, allow_inf_nan=False,
                                       description="how long in-flight requests may finish on shutdown; expert calls "
                                                   "still running then get as long again, then are cancelled")
    forwarded_allow_ips: str | None = Field(None, description="balancer addresses whose X-Forwarded-For is trusted")
    access_log: bool = Field(True, description="uvicorn's line per request on stdout; off where a proxy logs them")


class ServeSettings(Strict):
    """Everything `mor serve` needs; see configs/serve.yaml for a commented example."""

    system: Path | None = Field(None, description="mor.system YAML routed by /v1/chat/completions and /v1/route")
    model_name: str = Field("mor", pattern=NAME, description="the `model` chat clients name to reach the system")
    models: list[PredictModel] = Field(default_factory=list)
    batching: Batching = Batching()
    threads: int | None = Field(None, ge=1, description="torch CPU threads for /v1/predict; none: torch's default")
    api_keys: list[ApiKey] = Field(default_factory=list)
    allow_anonymous: bool = Field(False, description="serve callers without a key, rate-limited per address by "
                                                     "rate_limit (which it requires)")
    rate_limit: RateLimit | None = None
    failed_auth_limit: RateLimit = Field(RateLimit(requests_per_s=1, burst=20),
                                         description="per client address: requests with a missing or wrong key; "
                                                     "past it they get 429 instead of 401 (slows key guessing)")
    max_body_bytes: int = Field(1_000_000, ge=1024)
    cors_origins: list[str] = Field(default_factory=list, description="browser origins allowed; empty: CORS off")
    server: Server = Server()

    @model_validator(mode="after")
    def _consistent(self) -> "ServeSettings":
        if not self.api_keys and not self.allow_anonymous:
            raise ValueError("api_keys: empty, so every request would be refused; add a key's hash "
                             "(`mor serve hash-key`) or set allow_anonymous: true with a rate_limit")
        if self.allow_anonymous and self.rate_limit is None:
            raise ValueError("allow_anonymous: true without a rate_limit would let every address send unlimited "
                             "requests; set rate_limit (e.g. {requests_per_s: 5, burst: 20}) or allow_anonymous: false")
        for field, names in (("api_keys", [k.name for k in self.api_keys]),
                             ("models", [m.name for m in self.models] + [self.model_name] * (self.system is not None))):
            if len(set(names)) < len(names):
                raise ValueError(f"{field}: names must be unique (and differ from model_name), got {names}")
        _check_keys_differ(self.api_keys)
        _check_origins(self.cors_origins)
        return self


def _check_keys_differ(keys: list[ApiKey]) -> None:
    """Refuse two callers with one key: the key would identify only one of them (and be counted and limited so)."""
    owners: dict[str, str] = {}
    for key in keys:
        if key.sha256 in owners:
            raise ValueError(f"api_keys: {owners[key.sha256]} and {key.name} have the same sha256, so the key "
                             f"would name only one of them; give each caller its own key (`mor serve hash-key`)")
        owners[key.sha256] = key.name


def _check_origins(origins: list[str]) -> None:
    """Refuse CORS origins a browser's Origin header can never equal (a path, a trailing slash, no scheme)."""
    for i, origin in enumerate(origins):
        if origin != "*" and not ORIGIN.fullmatch(origin):
            raise ValueError(f"cors_origins[{i}]: {origin!r} is not an origin; write scheme://host[:port] without "
                             f"a path or trailing slash (e.g. https://app.example.com), or \"*\" for any")


def load_settings(path: str | Path) -> ServeSettings:
    """Read and validate a serve YAML file; relative paths inside it are resolved against its folder."""
    settings = validate(ServeSettings, read_yaml(path), str(path))
    base = Path(path).resolve().parent
    if settings.system is not None and not settings.system.is_absolute():
        settings.system = base / settings.system
    for model in settings.models:
        if not model.checkpoint.is_absolute():
            model.checkpoint = base / model.checkpoint
    return settings


def hash_key(key: str) -> str:
    """The hex SHA-256 of an API key: what the config stores in `api_keys[].sha256`."""
    if not key:
        raise ConfigError("hash-key: the key is empty; give a non-empty key or let `mor serve hash-key` make one")
    return hashlib.sha256(key.encode()).hexdigest()
