"""The error an expert raises when it cannot answer, so the system can record it and fall back."""

from mor.errors import MorError


class ExpertError(MorError):
    """An expert failed to answer (endpoint down, bad output, unreadable question); the message is one line
    naming the expert, where it failed and why."""


class RequestError(ExpertError):
    """The expert cannot answer this request (it cannot read it), though it works: the system falls back without
    counting it against the expert's health, so off-topic requests never open its circuit breaker."""

    request_error = True


class EndpointRefusal(RequestError):
    """A remote endpoint refused the request as malformed or too large (HTTP 400, 413, 422). Usually that is the
    request's fault, but a run of them for every request means the expert's own settings are wrong (a model name or
    parameter the endpoint rejects), so the system lets such a run open the breaker."""

    endpoint_refusal = True
