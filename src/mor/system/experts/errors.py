"""The error an expert raises when it cannot answer, so the system can record it and fall back."""

from mor.errors import MorError


class ExpertError(MorError):
    """An expert failed to answer (endpoint down, bad output, unreadable question); the message is one line
    naming the expert, where it failed and why."""
