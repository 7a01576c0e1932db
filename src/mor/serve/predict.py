"""POST /v1/predict: inputs → outputs and diagnostics of a trained mor.nn model, micro-batched across requests."""

from fastapi import APIRouter

from mor.serve.auth import Caller
from mor.serve.errors import documented
from mor.serve.schemas import PredictRequest, PredictResponse
from mor.serve.service import ServiceDep

router = APIRouter(tags=["predict"])


@router.post("/v1/predict", responses=documented(400, 401, 404, 413, 422, 429, 503))
async def predict(body: PredictRequest, caller: Caller, service: ServiceDep) -> PredictResponse:
    """One output per input: the prediction, its confidence, the reflection steps and which experts answered."""
    model = service.served_model(body.model)
    return PredictResponse(model=body.model, outputs=await model.predict(body.inputs))
