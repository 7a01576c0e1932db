"""The error an expert raises when it cannot answer, so the system can record it and fall back."""

from mor.errors import MorError


class ExpertError(MorError):
    """An expert failed to answer (endpoint down, bad output, unreadable question); the message is one line
    naming the expert, where it failed and why."""


class RequestError(ExpertError):
    """The expert cannot answer this request (it cannot read it), though it works: the system falls back without
    counting it against the expert's health, so off-topic requests never open its circuit breaker."""

    request_error = True
