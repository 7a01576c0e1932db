"""GET /: a small page (plain HTML and JavaScript, no build step) that shows live routing and answers."""

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from mor.serve.errors import ApiError, shown

router = APIRouter(include_in_schema=False)
STATIC = files("mor.serve") / "static"
# The page runs only its own script and talks only to this service.
HEADERS = {"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                                      "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


@router.get("/")
async def page() -> HTMLResponse:
    return HTMLResponse((STATIC / "index.html").read_text(), headers=HEADERS)


@router.get("/static/{name}")
async def asset(name: str) -> Response:
    kinds = {"app.js": "text/javascript", "style.css": "text/css"}
    if name not in kinds:
        raise ApiError(404, f"no static file {shown(name)}", code="not_found")
    return Response((STATIC / name).read_text(), media_type=kinds[name], headers=HEADERS)
