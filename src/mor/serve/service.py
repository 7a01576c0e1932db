"""What one app serves: the routing system, the trained models, keys, limits and metrics, started and stopped
with the app (FastAPI lifespan); endpoints reach it through the `ServiceDep` dependency."""

import asyncio
import logging
import math
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import torch
from fastapi import Depends, Request

from mor.errors import MorError
from mor.serve.auth import Keyring
from mor.serve.errors import ApiError, brief, public, shown
from mor.serve.limits import RateLimiter, SharedRateLimiter
from mor.serve.metrics import Metrics
from mor.serve.schemas import Readiness
from mor.serve.served_model import ServedModel
from mor.serve.settings import ServeSettings
from mor.system.config import load_system
from mor.system.decision import Decision
from mor.system.integration import ExpertsFailed
from mor.system.reply import Reply, StreamBroken
from mor.system.request import Answer, Delta
from mor.system.request import Request as SystemRequest
from mor.system.router import AllInCooldown
from mor.system.system import MoRSystem

Result = TypeVar("Result")
log = logging.getLogger("mor.serve")
CANCEL_WAIT_S = 1.0  # how long shutdown waits for cancelled work to unwind (give back its load) before saving state
# When each system's cooldown that was last logged ends: a cooldown is logged once, not once per refused request.
_cooldown_logged: weakref.WeakKeyDictionary[MoRSystem, float] = weakref.WeakKeyDictionary()


class Service:
    """The state behind the endpoints; `start` loads the system and models, `stop` lets running work finish."""

    def __init__(self, settings: ServeSettings, shared_limits: Path | None = None) -> None:
        self.settings = settings
        self.keyring = Keyring(settings.api_keys, settings.allow_anonymous, settings.failed_auth_limit)
        self.limiter = (RateLimiter(settings.rate_limit) if shared_limits is None else
                        SharedRateLimiter(shared_limits, settings.rate_limit))
        self.metrics = Metrics()
        self.system: MoRSystem | None = None
        self.models: dict[str, ServedModel] = {}
        self.running: set[asyncio.Task] = set()
        self.created = int(time.time())

    async def start(self) -> None:
        """Build the routing system (a broken config stops start-up) and load the models (a bad one is unready)."""
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        if self.settings.system is not None:
            self.system = load_system(self.settings.system)
        for index, spec in enumerate(self.settings.models):
            model = ServedModel(spec, index, self.settings.batching, self.metrics)
            model.start()
            self.models[spec.name] = model

    async def stop(self) -> None:
        """Let answers still being made finish (up to `server.graceful_shutdown_s`, then they are cancelled, which
        gives their load back), stop the batchers, then save state and close the experts."""
        await self._settle(self.settings.server.graceful_shutdown_s)
        for model in self.models.values():
            await model.stop()
        if self.system is not None:
            await self.system.aclose()
        self.limiter.close()

    async def _settle(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for the running work, then cancel what is left and wait (briefly) until it ends."""
        if self.running:
            await asyncio.wait(set(self.running), timeout=timeout_s)
        late = set(self.running)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=CANCEL_WAIT_S)

    def chat_system(self, model: str) -> MoRSystem:
        """The routing system a chat request names, or 404 (or 400 for a predict model) saying what to name."""
        if self.system is not None and model == self.settings.model_name:
            return self.system
        if model in self.models:
            raise ApiError(400, f"model: {model!r} is a prediction model; send it feature inputs at /v1/predict",
                           param="model", code="wrong_endpoint")
        chat = f"the chat model is {self.settings.model_name!r}" if self.system else "no chat model is configured"
        raise ApiError(404, f"model: {shown(model)} does not exist; {chat} (see GET /v1/models)", param="model",
                       code="model_not_found")

    def served_model(self, name: str) -> ServedModel:
        """The prediction model called `name`, or 404 listing the ones there are."""
        if name not in self.models:
            raise ApiError(404, f"model: {shown(name)} is not a prediction model here; available: "
                                f"{', '.join(self.models) or 'none'}", param="model", code="model_not_found")
        return self.models[name]

    async def ask(self, system: MoRSystem, request: SystemRequest) -> Reply:
        """The system's reply, recorded in the metrics. The work is shielded: a caller that leaves does not cut
        an expert call short (the system's load counts and statistics stay right, and shutdown waits for it)."""
        try:
            return await asyncio.shield(self._run(self._recorded(system.ask(request))))
        except MorError as err:
            raise _failed(system, err) from None

    async def _recorded(self, work: Awaitable[Reply]) -> Reply:
        """`work`'s reply, recorded in the metrics as part of the work (so also when its caller has left); when
        every expert failed, their failed calls are."""
        try:
            reply = await work
        except ExpertsFailed as err:
            self._record_failed(err)
            raise
        self._record(reply)
        return reply

    async def stream(self, system: MoRSystem, request: SystemRequest) -> AsyncIterator[Delta | Reply]:
        """`ask` streamed (see `MoRSystem.stream`): deltas as the expert makes them, then the recorded Reply. The
        work runs in a task of its own, so here too a caller that leaves does not cut it short."""
        pieces: asyncio.Queue[Delta | Reply | BaseException] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for piece in system.stream(request):
                    if isinstance(piece, Reply):
                        self._record(piece)  # here, not in the reader: a caller that left still ran the experts
                    pieces.put_nowait(piece)
            except BaseException as err:  # handed to the reader, which would otherwise wait for a reply forever
                if isinstance(err, ExpertsFailed):
                    self._record_failed(err)
                pieces.put_nowait(err)
                if not isinstance(err, Exception):
                    raise

        self._run(pump())
        while not isinstance(piece := await pieces.get(), Reply):
            if isinstance(piece, MorError):
                raise _failed(system, piece) from None
            if isinstance(piece, BaseException):
                raise piece
            yield piece
        yield piece

    def _run(self, work: Coroutine[Any, Any, Result]) -> asyncio.Task[Result]:
        """`work` as a task that shutdown waits for."""
        task = asyncio.ensure_future(work)
        self.running.add(task)
        task.add_done_callback(self.running.discard)
        return task

    def _record(self, reply: Reply) -> None:
        """Count the reply's experts and reflection in the metrics."""
        m = self.metrics
        self._record_selected(reply.decision)
        self._record_calls(reply.answers)
        m.reflection_steps.labels(self.settings.model_name).observe(reply.answer.steps)
        m.reflection_rounds.observe(reply.rounds)

    def _record_failed(self, err: ExpertsFailed) -> None:
        """Count a request whose every expert failed: the router's selection for it and the failed calls."""
        self._record_selected(err.decision)
        self._record_calls(err.answers)

    def _record_selected(self, decision: Decision | None) -> None:
        """Count the experts the router selected."""
        for name in decision.selected if decision else ():
            self.metrics.selected.labels(name).inc()

    def _record_calls(self, answers: list[Answer]) -> None:
        """Count each expert call by its outcome; a failure's whole text goes to the log (clients see its first
        line, see `brief`)."""
        for answer in answers:
            self.metrics.expert_calls.labels(answer.expert, "ok" if answer.ok else "error").inc()
            if not answer.ok:
                log.warning("expert %s failed: %s", answer.expert, answer.error)

    def readiness(self) -> Readiness:
        """Each part's state: "ok", or why it cannot serve."""
        checks = {}
        if self.settings.system is not None:
            checks["system"] = "ok" if self.system is not None else "not loaded"
        for name, model in self.models.items():
            checks[f"model:{name}"] = "ok" if model.ready else public(model.reason)
        return Readiness(ready=all(v == "ok" for v in checks.values()), checks=checks)


def _failed(system: MoRSystem, err: MorError) -> ApiError:
    """The 503 for a system whose experts are all in cooldown; the 502 for one whose experts all failed (one short
    line each: their whole errors were logged when counted) or whose streamed answer broke off."""
    if isinstance(err, AllInCooldown):
        return unavailable(system, err)
    if isinstance(err, ExpertsFailed):
        return ApiError(502, "no expert could answer: " + "; ".join(f"{a.expert}: {brief(a.error or '')}"
                                                                    for a in err.answers), code="experts_failed")
    log.warning("chat: %s", err)
    if isinstance(err, StreamBroken):
        return ApiError(502, brief(str(err)), code="stream_broken")
    return ApiError(502, f"no expert could answer: {brief(str(err))}", code="experts_failed")


def unavailable(system: MoRSystem, err: MorError) -> ApiError:
    """The 503 for a router that can choose no expert now (every one in cooldown and no default), with Retry-After
    set to when the first expert's cooldown ends, so clients back off. The router's advice to the operator is
    logged, not shown: once per cooldown, not for every request it refuses."""
    now = time.monotonic()
    ends = min((stats.open_until for stats in system.stats.values() if stats.open_until > now), default=now)
    if not isinstance(err, AllInCooldown) or _cooldown_logged.get(system) != ends:
        _cooldown_logged[system] = ends
        log.warning("routing: %s", err)
    wait = max(1, math.ceil(ends - now))
    reason = "every expert is in cooldown" if isinstance(err, AllInCooldown) else brief(str(err))
    return ApiError(503, f"no expert available now: {reason}; retry after {wait} s", code="no_expert_available",
                    headers={"Retry-After": str(wait)})


async def get_service(request: Request) -> Service:
    """The app's service (async: FastAPI runs plain `def` dependencies in its thread pool, a hop per request)."""
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]
