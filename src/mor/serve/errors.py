"""Error responses in the OpenAI format (`{"error": {"message", "type", "param", "code"}}`), never a traceback.

Validation errors become 400 naming the field and the reason; a bug becomes a 500 that says only that it is
one (the traceback goes to the server log); credentials, absolute file paths and URLs (such as an upstream model
server's) are cut from every message a client sees.
"""

import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from mor.config import error_line
from mor.redact import redact
from mor.serve.schemas import ErrorBody

# Folder names may hold single spaces, @, +, ~ and the like: all of them are cut, up to the path's last "/".
PATH = re.compile(r"(?<![\w.:/])/(?:[\w.\-+@~%,=]+(?: [\w.\-+@~%,=]+)*/)+([\w.\-+@~%,=]+)")
# A scheme starts only where a run of scheme characters starts: matching could otherwise start at each character of a
# long run such as "a.a.a.…" and scan to its end every time, quadratic time on text a caller chose.
URL = re.compile(r"(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*://(?:\[[\w:.%]+\])?[^\s'\"<>()\[\]{}]*(?<![.,;:!?])")
SERVICE_PATHS = ("/v1/", "/static/")
UNION_MEMBERS = {"int", "float", "str", "bool"}
TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
         405: "invalid_request_error", 413: "request_too_large", 422: "invalid_request_error", 429: "rate_limit_error",
         502: "upstream_error", 503: "unavailable_error"}
REASON_CHARS = 200  # an expert's failure as a client sees it: at most this many characters of its first line
PARSE_ERROR = "There was an error parsing the body"  # FastAPI's detail for a body its JSON reader gave up on


class ApiError(Exception):
    """An error to send to the client: HTTP status, one-line message, the offending field and a code."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def public(message: str) -> str:
    """`message` with credentials replaced by `<secret>`, URLs by `<url>` and absolute paths cut to their last part,
    so clients never see a key, internal hosts or the server's file layout (the service's own URL paths, such as
    /v1/models, stay)."""
    message = redact(URL.sub("<url>", message))  # URLs first: a key in a query goes with its URL
    return PATH.sub(lambda m: m[0] if m[0].startswith(SERVICE_PATHS) else f"…/{m[1]}", message)


def brief(text: str, limit: int = REASON_CHARS) -> str:
    """A failure's text as a client sees it: its first line only (a traceback or an upstream's dump below it stays
    in the server log), made `public` and cut to `limit` characters."""
    lines = text.strip().splitlines()
    line = public(lines[0].strip().rstrip(":")[:2 * limit]) if lines else "failed"
    return line if len(line) <= limit else f"{line[:limit - 1]}…"


def error_body(err: ApiError) -> ErrorBody:
    """What a client sees of `err`: its message made public, the type its status has, its field and code."""
    return ErrorBody.of(public(err.message), TYPES.get(err.status, "error"), err.param, err.code)


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = error_body(ApiError(status, message, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def internal_error() -> ApiError:
    """The 500 a bug becomes: it says only that there was one (the traceback goes to the server log)."""
    return ApiError(500, "internal error; it has been logged, try again or tell the operator", code="internal_error")


def field_name(loc: tuple[Any, ...]) -> str:
    """A pydantic location as a field path: ('body', 'inputs', 0, 'list[float]', 2) → 'inputs[0][2]' (the names
    pydantic gives the members of a union are left out)."""
    parts = [p for p in loc if p != "body" and not (isinstance(p, str) and ("[" in p or p in UNION_MEMBERS))]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def unparsable(cause: BaseException | None) -> str:
    """Why FastAPI could not read a body as JSON, which its own error does not say."""
    if isinstance(cause, RecursionError):
        return "nested too deeply"
    if isinstance(cause, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(cause, ValueError):  # Python's limit on the digits of an integer
        return f"a number of more than {sys.get_int_max_str_digits()} digits"
    return "cannot be parsed"


def install(app: FastAPI, authenticate: Callable[[Request], Awaitable[None]]) -> None:
    """Register the handlers that turn every failure into an OpenAI-format error body; `authenticate` checks the
    caller of a request whose body could not be parsed, as FastAPI parses bodies before running any dependency."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError) -> JSONResponse:
        return error_response(err.status, err.message, param=err.param, code=err.code, headers=err.headers)

    async def not_json(request: Request, reason: str) -> JSONResponse:
        """400 for a body that is not JSON, only once its caller is authenticated (else its 401 or 429): a caller
        without a key learns nothing of the service, and counts against its address's failure limit."""
        try:
            await authenticate(request)
        except ApiError as err:
            return await api_error(request, err)
        return error_response(400, f"body: not valid JSON ({reason})", param="body", code="invalid_json")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        first = max(err.errors(), key=lambda e: len(e["loc"]))  # of a union's members, the one that got furthest
        field = field_name(tuple(first["loc"]))
        if first["type"] == "json_invalid":
            return await not_json(request, first["ctx"].get("error", "parse error"))
        more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
        if first["type"] == "too_short":
            need = first["ctx"]["min_length"]
            line = f"{field}: empty; send at least {need}" if first["ctx"]["actual_length"] == 0 else \
                f"{field}: {first['ctx']['actual_length']} items, fewer than the {need} needed"
        else:
            line = error_line({**first, "loc": (field,), "input": shown(first.get("input"))})
        return error_response(400, line + more, param=field, code="invalid_value")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        if err.status_code == 400 and err.detail == PARSE_ERROR:
            return await not_json(request, unparsable(err.__cause__))
        message = {404: "no such endpoint; see /docs for the API", 405: "method not allowed on this endpoint"}
        return error_response(err.status_code, message.get(err.status_code, str(err.detail)),
                              headers=getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def bug(request: Request, err: Exception) -> JSONResponse:  # Starlette logs the traceback after this
        return await api_error(request, internal_error())


class _Shown(str):
    """Text that shows as itself in an f-string's `!r`."""

    def __repr__(self) -> str:
        return str(self)


def shown(value: Any) -> str:
    """A caller's value as an error quotes it: its repr, cut after 60 characters, so messages stay one short line
    (and `public` never works through a long text a caller chose)."""
    text = repr(value)
    return _Shown(text if len(text) <= 60 else f"{text[:57]}…")


DESCRIPTIONS = {400: "Invalid request: the message names the field and the reason", 401: "Missing or invalid API key",
                404: "Unknown model", 413: "Request body over the size limit",
                422: "An input the model gives no finite output for", 429: "Rate limit exceeded",
                502: "Every expert failed to answer",
                503: "Not available now: a model not loaded (see /readyz) or every expert in cooldown; see Retry-After"}


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error statuses an endpoint can return, all with the `ErrorBody` schema."""
    return {status: {"model": ErrorBody, "description": DESCRIPTIONS[status]} for status in statuses}
