"""Prometheus metrics of one app, in its own registry: requests, latency, errors, expert activations, reflection
depth and batch sizes. Under several workers (`PROMETHEUS_MULTIPROC_DIR` set, as `mor serve --workers N` does)
/metrics adds up every worker's values."""

import os
import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mor.serve.asgi import HttpMiddleware

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
STEP_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # others share the label "other"
CLIENT_CLOSED = 499  # nginx's "client closed request": the client left before any response started


class Metrics:
    """The service's instruments; `render()` is the /metrics body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("mor_requests", "HTTP requests by endpoint, method and status.",
                                ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("mor_request_seconds", "Time to the end of the response, by endpoint.",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("mor_errors", "Error responses (4xx and 5xx) by endpoint and status.",
                              ["endpoint", "status"], registry=r)
        self.stream_errors = Counter("mor_stream_errors", "Streamed responses that failed after their 200 was sent "
                                                          "(ended by an error event), by endpoint and error code.",
                                     ["endpoint", "code"], registry=r)
        self.expert_calls = Counter("mor_expert_activations", "Expert calls of the routing system by outcome.",
                                    ["expert", "outcome"], registry=r)
        self.selected = Counter("mor_expert_selected", "Times the router selected each expert.", ["expert"],
                                registry=r)
        self.reflection_steps = Histogram("mor_reflection_steps", "Reflection steps of each answer, by model.",
                                          ["model"], buckets=STEP_BUCKETS, registry=r)
        self.reflection_rounds = Histogram("mor_reflection_rounds", "Escalation rounds of each chat answer.",
                                           buckets=(0, 1, 2, 3, 4, 6, 8), registry=r)
        self.model_experts = Counter("mor_model_expert_activations", "Inputs each expert of a trained model answered.",
                                     ["model", "expert"], registry=r)
        self.batch_size = Histogram("mor_batch_size", "Inputs per forward pass of /v1/predict, by model.",
                                    ["model"], buckets=BATCH_BUCKETS, registry=r)

    def render(self) -> bytes:
        """The text exposition of every metric (of all workers under multiprocess mode)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


class RequestMetrics(HttpMiddleware):
    """ASGI middleware: counts and times every HTTP request by its route template, also when a middleware answered
    before routing (413, or a client gone mid-body); unmatched paths share one label, and so do non-standard
    methods. A request that ends without a response counts as 500, or as 499 when the client left first, so that
    clients hanging up are not taken for failures of the service."""

    def __init__(self, app: ASGIApp, metrics: Metrics, paths: Iterable[str] = ()) -> None:
        super().__init__(app)
        self.metrics = metrics
        self.paths = [(compile_path(path)[0], path) for path in paths]  # the app's route templates

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        start, status, left = time.perf_counter(), None, False

        async def receiving() -> Message:
            nonlocal left
            message = await receive()
            left = left or message["type"] == "http.disconnect"
            return message

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receiving, sending)
        finally:
            if status is None:
                status = CLIENT_CLOSED if left else 500
            self._record(scope, status, time.perf_counter() - start)

    def _endpoint(self, scope: Scope) -> str:
        """The template of the route that served the request, or of the one that would have when a middleware
        answered first; "unmatched" for a path no route takes."""
        route = getattr(scope.get("route"), "path", None)
        return route or next((path for regex, path in self.paths if regex.match(scope["path"])), "unmatched")

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        """Count a finished request under its route template, method and status, and time it."""
        endpoint = self._endpoint(scope)
        m = self.metrics
        m.requests.labels(endpoint, method_label(scope["method"]), str(status)).inc()
        m.latency.labels(endpoint).observe(seconds)
        if status >= 400:
            m.errors.labels(endpoint, str(status)).inc()


def method_label(method: str) -> str:
    """The request's method as a metric label: a standard method, else "other", so that clients inventing methods
    cannot grow the label set (and /metrics) without bound."""
    return method if method in METHODS else "other"
