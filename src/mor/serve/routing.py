"""POST /v1/route: which experts the router would choose for a request, and why, without calling any."""

import math
import time

from fastapi import APIRouter

from mor.errors import MorError
from mor.serve.auth import Caller
from mor.serve.chat import to_request
from mor.serve.errors import ApiError, documented
from mor.serve.schemas import RouteRequest, RouteResponse
from mor.serve.service import ServiceDep
from mor.serve.views import scores
from mor.system.system import MoRSystem

router = APIRouter(tags=["routing"])


@router.post("/v1/route", responses=documented(400, 401, 404, 413, 429, 503))
async def route(body: RouteRequest, caller: Caller, service: ServiceDep) -> RouteResponse:
    """The routing decision: selected experts, every expert's score and its parts, and an explanation."""
    if service.system is None:
        raise ApiError(404, "routing: no system is configured; set `system` in the serve config", code="no_system")
    try:
        decision = service.system.route(to_request(body))
    except MorError as err:
        raise _unavailable(service.system, err) from None
    return RouteResponse(selected=decision.selected, fallback=decision.fallback, reason=decision.reason,
                         router_confidence=decision.confidence, labels=decision.labels,
                         latency_ms=1000 * decision.latency_s, scores=scores(decision), explanation=decision.explain())


def _unavailable(system: MoRSystem, err: MorError) -> ApiError:
    """The 503 for a router that can choose no expert now (every one in cooldown and no default), with Retry-After
    set to when the first expert's cooldown ends, so clients back off instead of seeing a 500."""
    now = time.monotonic()
    ends = min((stats.open_until for stats in system.stats.values() if stats.open_until > now), default=now)
    wait = max(1, math.ceil(ends - now))
    return ApiError(503, f"no expert available now: {err}; retry after {wait} s", code="no_expert_available",
                    headers={"Retry-After": str(wait)})
