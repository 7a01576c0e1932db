"""The FastAPI app: `create_app(settings)`, or `app_from_env()` for uvicorn's `--factory` (and its workers)."""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware import Middleware
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi

from mor.memory import frozen_heap
from mor.serve import auth, catalog, chat, errors, health, page, predict, routing
from mor.serve.limits import BodyLimit
from mor.serve.metrics import RequestMetrics
from mor.serve.service import Service
from mor.serve.settings import ServeSettings, load_settings

CONFIG_ENV = "MOR_SERVE_CONFIG"
LIMITS_ENV = "MOR_RATE_LIMITS"  # a SQLite file whose rate-limit buckets the workers share (`mor serve` sets it)


def create_app(settings: ServeSettings, shared_limits: Path | None = None) -> FastAPI:
    """An app serving `settings`; the system and models load when it starts (lifespan) and close when it stops.
    With `shared_limits`, rate limits are kept in that SQLite file, shared with every app that names it."""
    service = Service(settings, shared_limits)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            with frozen_heap():  # the loaded models and libraries: out of the garbage collector's way
                yield
        finally:
            await service.stop()

    modules = (chat, routing, predict, catalog, health, page)
    paths = [route.path for module in modules for route in module.router.routes]
    middleware = [Middleware(RequestMetrics, metrics=service.metrics, paths=paths)]
    if settings.cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                                     allow_headers=["Authorization", "Content-Type"]))
    middleware.append(Middleware(BodyLimit, max_bytes=settings.max_body_bytes))
    app = FastAPI(title="mor serve", version="1", lifespan=lifespan, middleware=middleware,  # version: of the /v1 API
                  description="Mixture of Reflection: OpenAI-compatible chat over routed experts, routing "
                              "explanations, and micro-batched predictions from trained mor.nn models.")
    app.state.service = service
    errors.install(app, auth.authenticate)
    for module in modules:
        app.include_router(module.router)
    app.openapi = lambda: _openapi(app)
    return app


def app_from_env() -> FastAPI:
    """The app for the serve config named by $MOR_SERVE_CONFIG (what `mor serve` sets for its workers), sharing
    rate limits through the file $MOR_RATE_LIMITS names, when set."""
    limits = os.environ.get(LIMITS_ENV)
    return create_app(load_settings(os.environ.get(CONFIG_ENV, "configs/serve.yaml")), Path(limits) if limits else None)


def _openapi(app: FastAPI) -> dict:
    """The OpenAPI schema without FastAPI's default 422 responses (validation errors here are 400 `ErrorBody`s); a
    422 an endpoint documents itself stays."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for path in schema["paths"].values():
            for operation in path.values():
                responses = operation.get("responses", {})
                if _fastapis_422(responses.get("422", {})):
                    del responses["422"]
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema


def _fastapis_422(response: dict) -> bool:
    """Whether `response` is the 422 FastAPI documents for every endpoint with inputs (an `HTTPValidationError`)."""
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return schema.get("$ref") == "#/components/schemas/HTTPValidationError"
