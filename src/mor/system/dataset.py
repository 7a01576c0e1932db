"""Labeled requests from JSONL: one object per line with `text` (or OpenAI `messages`), `label`, optional `tools`
(or the legacy `functions`) and an optional `source` (where the request came from; evaluation scores each one)."""

import json
from pathlib import Path
from typing import NamedTuple

from mor.errors import ConfigError, MorError
from mor.system.request import Request, as_tools


class Labeled(NamedTuple):
    """Requests, their labels, and each one's source (None where a line has none)."""

    requests: list[Request]
    labels: list[str]
    sources: list[str | None]


def read_labeled(path: str | Path) -> Labeled:
    """Requests, labels and sources; a bad line is a one-line error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise MorError(f"{path}: no such file; give a JSONL file with one {{\"text\": …, \"label\": …}} per line")
    requests, labels, sources = [], [], []
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, 1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a BOM (Windows editors) is no text
            except UnicodeDecodeError:
                raise MorError(f"{where}: not UTF-8 text; save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise MorError(f"{where}: not valid JSON ({err.msg.removesuffix(' at')} at column {err.colno}); each "
                               "line must be one JSON object") from None
            except RecursionError:
                raise MorError(f"{where}: nested too deeply to read; each line must be one JSON object with "
                               "'text' (or 'messages') and 'label'") from None
            if not isinstance(row, dict) or not isinstance(row.get("label"), str):
                raise MorError(f"{where}: expected an object with a string 'label', got {line.strip()[:80]!r}")
            if not row["label"] or row["label"] != row["label"].strip():
                raise MorError(f"{where}: label {row['label']!r} is empty or has spaces around it, which would make "
                               f"it a label of its own; write it as the other lines do")
            given = [key for key in ("text", "messages") if row.get(key) is not None]
            if len(given) != 1:
                raise MorError(f"{where}: give the request as 'text' (a string) or 'messages' (OpenAI's array), "
                               + ("not both" if given else "found neither"))
            if not isinstance(row.get("source", ""), str):
                raise MorError(f"{where}: 'source' must be a string naming where the request came from, got "
                               f"{row['source']!r}; quote it or leave it out")
            for key in ("messages", "tools", "functions"):
                if row.get(key) is not None and not isinstance(row[key], list):
                    raise MorError(f"{where}: '{key}' must be a JSON array (OpenAI's form), got "
                                   f"{type(row[key]).__name__} {json.dumps(row[key])[:60]}")
            try:
                tools = as_tools(row.get("tools"), row.get("functions"))
                if given == ["messages"]:
                    requests.append(Request(tuple(row["messages"]), tools))
                else:
                    requests.append(Request.of(row["text"], list(tools)))
            except (ConfigError, TypeError) as err:
                raise MorError(f"{where}: {err}") from None
            labels.append(row["label"])
            sources.append(row.get("source"))
    if not requests:
        raise MorError(f"{path}: no labeled requests in the file")
    return Labeled(requests, labels, sources)
