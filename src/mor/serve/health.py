"""Operations endpoints, without a key: liveness (/healthz), readiness (/readyz) and Prometheus (/metrics)."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from mor.serve.schemas import Health, Readiness
from mor.serve.service import ServiceDep

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> Health:
    """The process answers."""
    return Health()


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "Some part cannot serve; see checks"}})
async def readyz(service: ServiceDep) -> Readiness | JSONResponse:
    """Whether every configured part loaded; 503 with the reasons when one did not."""
    readiness = service.readiness()
    if not readiness.ready:
        return JSONResponse(readiness.model_dump(), status_code=503)
    return readiness


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}})
async def metrics(service: ServiceDep) -> Response:
    """Prometheus text exposition."""
    return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)
