"""The one exception family of mor: every message says what was wrong, where, and how to fix it."""


class MorError(Exception):
    """Base class of every error mor raises on purpose; the CLI prints its message as one line."""


class ConfigError(MorError, ValueError):
    """A constructor argument or config value is out of range or inconsistent with another."""


class ShapeError(MorError, ValueError):
    """A tensor passed to a mor module has the wrong shape or dtype for that module."""


def first_line(error: BaseException | str) -> str:
    """An exception's message or a text cut to its first line, for one-line errors (an exception without a message
    gives its type name, an empty text "failed")."""
    text = str(error).strip()
    if text:
        return text.splitlines()[0]
    return "failed" if isinstance(error, str) else type(error).__name__


def check(condition: bool, message: str, error: type[MorError] = ConfigError) -> None:
    """Raise `error(message)` unless `condition` holds; keeps argument validation to one line each."""
    if not condition:
        raise error(message)


class CheckpointError(MorError):
    """A checkpoint is missing, truncated, corrupt, or does not match the model it is loaded into."""
