"""POST /v1/route: which experts the router would choose for a request, and why, without calling any."""

from fastapi import APIRouter

from mor.errors import MorError
from mor.serve.auth import Caller
from mor.serve.chat import to_request
from mor.serve.errors import ApiError, documented
from mor.serve.schemas import RouteRequest, RouteResponse
from mor.serve.service import ServiceDep, unavailable
from mor.serve.views import scores

router = APIRouter(tags=["routing"])


@router.post("/v1/route", responses=documented(400, 401, 404, 413, 429, 503))
async def route(body: RouteRequest, caller: Caller, service: ServiceDep) -> RouteResponse:
    """The routing decision: selected experts, every expert's score and its parts, and an explanation."""
    if service.system is None:
        raise ApiError(404, "routing: no system is configured; set `system` in the serve config", code="no_system")
    try:
        decision = service.system.route(to_request(body))
    except MorError as err:
        raise unavailable(service.system, err) from None
    return RouteResponse(selected=decision.selected, fallback=decision.fallback, reason=decision.reason,
                         router_confidence=decision.confidence, labels=decision.labels,
                         latency_ms=1000 * decision.latency_s, scores=scores(decision), explanation=decision.explain())

