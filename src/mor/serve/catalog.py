"""GET /v1/models: the chat model (the routing system) and the prediction models, as the OpenAI API lists them."""

from fastapi import APIRouter

from mor.serve.auth import Caller
from mor.serve.errors import ApiError, documented, shown
from mor.serve.schemas import ModelCard, ModelList
from mor.serve.service import Service, ServiceDep

router = APIRouter(tags=["models"])


def cards(service: Service) -> list[ModelCard]:
    chat = ([ModelCard(id=service.settings.model_name, created=service.created, kind="chat",
                       description="routes each request to its experts, reflects and integrates their answers")]
            if service.system is not None else [])
    return chat + [ModelCard(id=name, created=service.created, kind="predict", description=model.spec.description)
                   for name, model in service.models.items()]


@router.get("/v1/models", responses=documented(401, 429))
async def list_models(caller: Caller, service: ServiceDep) -> ModelList:
    """Every model this service answers for."""
    return ModelList(data=cards(service))


@router.get("/v1/models/{model}", responses=documented(401, 404, 429))
async def get_model(model: str, caller: Caller, service: ServiceDep) -> ModelCard:
    """One model, or 404."""
    for card in cards(service):
        if card.id == model:
            return card
    raise ApiError(404, f"model: {shown(model)} does not exist; see GET /v1/models", param="model",
                   code="model_not_found")
