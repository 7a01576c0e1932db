"""Typed request and response bodies: OpenAI chat completions (with the `mor` extension), models, routing,
prediction, health and errors. Unknown request fields of the OpenAI schema are accepted and ignored."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool, StrictStr

Number = int | float
Feature = Annotated[float, Strict()]  # a JSON number: not "1" or true, which lax parsing would take for 1.0
FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]  # OpenAI's, less the deprecated function_call


class ContentPart(BaseModel):
    """One part of a message's content; only `text` parts are read."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class Message(BaseModel):
    """A chat message in the OpenAI format."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(BaseModel):
    """A tool the caller offers; tool-capable experts are preferred when the request carries any."""

    model_config = ConfigDict(extra="allow")
    type: Literal["function"] = "function"
    function: FunctionSpec


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """POST /v1/chat/completions. Sampling options are accepted for compatibility; the experts use their own."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [
        {"model": "mor", "messages": [{"role": "user", "content": "solve 2x + 3 = 11"}]},
        {"model": "mor", "stream": True, "messages": [{"role": "user", "content": "integrate x^2 from 0 to 1"}]}]})
    model: str = Field(min_length=1, description="the service's chat model (GET /v1/models)")
    messages: list[Message] = Field(min_length=1)
    tools: list[Tool] | None = None
    functions: list[FunctionSpec] | None = Field(None, description="OpenAI's deprecated function calling; "
                                                                  "read as function tools")
    tool_choice: str | dict[str, Any] | None = None
    stream: Annotated[bool, Strict()] | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1, le=1, description="only one choice is produced")
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ExpertScoreOut(BaseModel):
    """One expert's routing score and its parts (see `mor.system.decision.ExpertScore`)."""

    name: str
    total: float
    probability: float
    hints: float
    tools: float
    feedback: float
    load: float
    available: bool


class CostOut(BaseModel):
    tokens_in: int
    tokens_out: int
    latency_s: float
    money: float


class ExpertAnswerOut(BaseModel):
    """What one called expert answered (or why it failed)."""

    expert: str
    answer: str
    confidence: float
    steps: int
    error: str | None


class MorExtension(BaseModel):
    """How the answer was made: chosen experts, router scores, confidence, reflection steps and cost."""

    experts: list[str] = Field(description="experts the router selected, best first")
    answered_by: str
    scores: list[ExpertScoreOut]
    router_confidence: float
    confidence: float = Field(description="the integrated answer's confidence")
    steps: int = Field(description="reflection steps of the answer")
    rounds: int = Field(description="reflection rounds that asked one more expert")
    fallback: bool
    cost: CostOut
    answers: list[ExpertAnswerOut]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[dict[str, Any]] | None = None
    refusal: None = None


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class _Completion(BaseModel):
    """What a completion and each of its streamed chunks share."""

    id: str
    created: int
    model: str


class ChatCompletion(_Completion):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None
    mor: MorExtension


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(_Completion):
    """One server-sent event of a streamed completion; the last one with choices carries `mor`."""

    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChunkChoice]
    usage: Usage | None = None
    mor: MorExtension | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "mor"
    kind: Literal["chat", "predict"] = Field(description="chat: /v1/chat/completions; predict: /v1/predict")
    description: str = ""


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class RouteRequest(BaseModel):
    """POST /v1/route: the messages (and tools) of a chat request, to route without answering."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [
        {"messages": [{"role": "user", "content": "what does the reflection halting rule do"}]}]})
    messages: list[Message] = Field(min_length=1)
    tools: list[Tool] | None = None
    functions: list[FunctionSpec] | None = Field(None, description="OpenAI's deprecated function calling; "
                                                                  "read as function tools")


class RouteResponse(BaseModel):
    """The router's decision, every expert's score, and the decision as text."""

    selected: list[str]
    fallback: bool
    reason: str
    router_confidence: float
    labels: dict[str, float]
    latency_ms: float
    scores: list[ExpertScoreOut]
    explanation: str


class PredictRequest(BaseModel):
    """POST /v1/predict: inputs for a trained model, each a feature vector or a sequence of feature rows, or, for a
    model trained on a table, a row of its file by column name (preprocessed as in training)."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": "prefix-sum", "inputs": [[[1, 1], [0, 1], [1, 1], [1, 1]]]},
        {"model": "homes", "inputs": [{"size": 150, "city": "north"}]}]})

    model: str = Field(min_length=1)
    inputs: list[list[Feature] | list[list[Feature]] | dict[str, Feature | StrictStr | StrictBool | None]] = Field(
        min_length=1, description="vectors [x1, …, xd] or sequences [[x1, …, xd], …], as the model was trained; for a "
                                  "table model, also rows {column: value} (null: missing)")


class PredictOutput(BaseModel):
    """One input's answer and the diagnostics of the forward pass that made it."""

    prediction: Number | list[Number] | list[list[Number]] = Field(
        description="class index or value (in the target's units); one per position for sequence models")
    label: str | None = Field(None, description="the class's name, for a classifier trained on a table")
    confidence: float
    steps: int = Field(description="reflection steps (the most any chosen expert ran)")
    experts: list[int] | None = Field(None, description="the model's experts that answered")
    expert_steps: list[int] | None = None
    conflict: float | None = Field(None, description="disagreement among the chosen experts")
    batch_size: int = Field(description="inputs in the forward pass this one shared")


class PredictResponse(BaseModel):
    model: str
    outputs: list[PredictOutput]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """Whether every configured part loaded; `checks` says what is wrong where one did not."""

    ready: bool
    checks: dict[str, str]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """Every error response: OpenAI's shape, a one-line message naming the field and the fix."""

    error: ErrorDetail

    @classmethod
    def of(cls, message: str, kind: str, param: str | None = None, code: str | None = None) -> "ErrorBody":
        return cls(error=ErrorDetail(message=message, type=kind, param=param, code=code))
