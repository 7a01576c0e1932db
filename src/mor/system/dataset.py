"""Labeled requests from JSONL: one object per line with `text` (or OpenAI `messages`), `label`, optional `tools`
(or the legacy `functions`)."""

import json
from pathlib import Path

from mor.errors import ConfigError, MorError
from mor.system.request import Request, as_tools


def read_labeled(path: str | Path) -> tuple[list[Request], list[str]]:
    """Requests and their labels; a bad line is a one-line error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise MorError(f"{path}: no such file; give a JSONL file with one {{\"text\": …, \"label\": …}} per line")
    requests, labels = [], []
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, 1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise MorError(f"{where}: not UTF-8 text; save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise MorError(f"{where}: not valid JSON ({err.msg}); each line must be one JSON object") from None
            if not isinstance(row, dict) or not isinstance(row.get("label"), str):
                raise MorError(f"{where}: expected an object with a string 'label', got {line.strip()[:80]!r}")
            try:
                tools = as_tools(row.get("tools"), row.get("functions"))
                if "messages" in row:
                    requests.append(Request(tuple(row["messages"]), tools))
                else:
                    requests.append(Request.of(row.get("text"), list(tools)))
            except (ConfigError, TypeError) as err:
                raise MorError(f"{where}: {err}") from None
            labels.append(row["label"])
    if not requests:
        raise MorError(f"{path}: no labeled requests in the file")
    return requests, labels
