"""Run configuration: one YAML file → validated pydantic models for model, data, train, eval and checkpoint.

Unknown keys are errors, and every error is one line naming the field, the bad value and the fix,
e.g. `train.lr: must be > 0, got -1`.
"""

from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from mor.config import Strict, parse_yaml, read_yaml, validate
from mor.errors import CheckpointError, ConfigError

Positive = Annotated[int, Field(ge=1)]
MAX_GRAD_ACCUM = 256  # micro-batch seeds step*257 + micro: more would reach the next step's seeds


def _seed_range(seed: int) -> int:
    """A seed torch and numpy both accept (as `data.seed` is checked), so a bad one fails here, not in training."""
    if not 0 <= seed < 2**32:
        raise PydanticCustomError("seed_range", "must be an integer in [0, 2^32), the seeds torch and numpy accept")
    return seed


Seed = Annotated[int, AfterValidator(_seed_range)]


class HaltingConfig(Strict):
    """Inference halting of every expert: see `mor.nn.Halting`."""

    max_steps: int | None = Field(None, ge=1, description="always stop here; default: the model's train_steps")
    threshold: float | None = Field(None, gt=0, le=1)
    stable_steps: int | None = Field(None, ge=1)
    combine: Literal["any", "all"] = "any"


class ModelConfig(Strict):
    """Which model and its sizes. `kind`: mor (router + reflection experts), moe (depth 1), reflection
    (one expert), dense (a fixed stack of cells). Token tasks (e.g. chars) get a `TokenModel`, a causal
    transformer of `depth` blocks whose FFN is `kind`: mor (reflection experts), moe (SwiGLU experts) or
    dense (one SwiGLU of k·hidden, the same active parameters); its context is the task's."""

    kind: Literal["mor", "moe", "reflection", "dense"] = "mor"
    num_experts: int = Field(2, ge=1)
    k: int = Field(1, ge=1)
    dim: int = Field(32, ge=1)
    cell: Literal["mlp", "conv", "transformer"] = "conv"
    train_steps: int = Field(16, ge=1)
    depth: int = Field(4, ge=1, description="dense: number of cells; token models: transformer blocks")
    heads: int = Field(4, ge=1, description="token models: attention heads (must divide dim)")
    hidden: int = Field(128, ge=1, description="token models: width of each FFN expert")
    mode: Literal["gate", "confidence", "attention"] = "confidence"
    score: Literal["softmax", "sigmoid"] = "softmax"
    noise_std: float = Field(0.0, ge=0)
    progressive: float = Field(0.0, ge=0, le=1, description="share of batches trained from a detached "
                               "intermediate state; helps extrapolation to longer inputs")
    halting: HaltingConfig = HaltingConfig()

    @model_validator(mode="after")
    def _k_fits(self) -> "ModelConfig":
        if self.k > self.num_experts:
            raise ValueError(f"model.k: must be <= model.num_experts ({self.num_experts}), got {self.k}; "
                             f"lower k or add experts")
        return self


class DataConfig(Strict):
    """The task by name (see `mor.data.TASKS`); any other key is an option of that task, checked by it."""

    model_config = ConfigDict(extra="allow")
    task: str = "prefix_sum"
    batch_size: int = Field(64, ge=1)

    @property
    def options(self) -> dict[str, Any]:
        """The task's own options: every key besides task and batch_size."""
        return dict(self.model_extra or {})

    def resolved(self) -> "DataConfig":
        """This config with relative file and folder options (`path`, `root`) made absolute against the working
        folder, where they are read, and `~` as the home folder; a run saves it so that `mor eval` finds its data
        from any folder."""
        paths = {key: str(Path(value).expanduser().absolute()) for key, value in self.options.items()
                 if key in ("path", "root") and isinstance(value, str)}
        return self.model_copy(update=paths) if paths else self


class LossConfig(Strict):
    """Weight of each loss term; see `mor.nn.LossWeights`."""

    task: float = Field(1.0, ge=0)
    ponder: float = Field(1.0, ge=0)
    halting_kl: float = Field(0.01, ge=0)
    critic: float = Field(0.1, ge=0)
    consistency: float = Field(0.0, ge=0)
    route: float = Field(0.1, ge=0)
    load_balance: float = Field(0.01, ge=0)
    z_loss: float = Field(0.001, ge=0)
    prior_halt_prob: float = Field(0.2, gt=0, lt=1)


class TrainConfig(Strict):
    """The optimisation recipe: AdamW, warmup then cosine (optionally with warm restarts)."""

    steps: int = Field(2000, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup: int = Field(100, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    restarts: int = Field(0, ge=0, description="warm restarts of the cosine schedule")
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    grad_accum: int = Field(1, ge=1, description=f"micro-batches per step, at most {MAX_GRAD_ACCUM}")
    clip: float | None = Field(1.0, gt=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    seed: Seed = 0
    threads: int | None = Field(None, ge=1, description="torch CPU threads; None leaves torch's default")
    log_every: int = Field(50, ge=1)
    eval_every: int = Field(250, ge=1)
    eval_size: int | None = Field(None, ge=1, description="instance size of that evaluation (sized tasks; default "
                                                          "the largest training size), e.g. longer than training "
                                                          "to follow extrapolation and keep its best checkpoint")
    early_stop: int | None = Field(None, ge=1, description="stop after this many evaluations without gain")
    upcycle: int = Field(0, ge=0, description="first steps in which a mixture's experts start as copies of one "
                                               "and train as one expert on every input (sparse upcycling)")
    loss: LossConfig = LossConfig()

    @model_validator(mode="after")
    def _phases_fit(self) -> "TrainConfig":
        cycles, decay = self.restarts + 1, self.steps - min(self.warmup, self.steps)
        if self.schedule == "cosine" and self.restarts and decay < 2 * cycles:
            raise ValueError(f"train.restarts: {self.restarts} restarts leave fewer than 2 of the {decay} steps after "
                             f"warmup to each cosine cycle; use at most {max(0, decay // 2 - 1)} restarts")
        if self.upcycle >= self.steps:
            raise ValueError(f"train.upcycle: must be < train.steps ({self.steps}), got {self.upcycle}; the "
                             f"experts need steps of their own after starting as copies")
        return self

    @field_validator("grad_accum")
    @classmethod
    def _grad_accum_fits(cls, grad_accum: int) -> int:
        if grad_accum > MAX_GRAD_ACCUM:
            raise ValueError(f"train.grad_accum: must be <= {MAX_GRAD_ACCUM}, got {grad_accum}; the batches of more "
                             f"micro-batches would repeat those of the next step, so raise data.batch_size instead")
        return grad_accum


class EvalConfig(Strict):
    """What `mor eval` and the end-of-training report measure."""

    examples: int = Field(1024, ge=1, description="examples per measurement; dataset tasks score their test split")
    sizes: list[Positive] = Field(default_factory=list, description="instance sizes to evaluate; [] = training's")
    max_steps: list[Positive] = Field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64], min_length=1)
    thresholds: list[Annotated[float, Field(gt=0, le=1)]] = Field(default_factory=lambda: [0.9, 0.99])
    stable_steps: list[Positive] = Field(default_factory=lambda: [4])
    seed: Seed = 12345


class CheckpointConfig(Strict):
    """Where and how often to checkpoint, and how many to keep."""

    dir: Path = Path("runs/default")
    every: int = Field(250, ge=1)
    keep_last: int = Field(2, ge=1)


class RunConfig(Strict):
    """A whole run; `compare` names baselines trained with the same recipe for the report."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    compare: list[Literal["moe", "reflection", "dense"]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _distinct_baselines(self) -> "RunConfig":
        repeated = sorted({kind for kind in self.compare if self.compare.count(kind) > 1})
        if repeated:
            raise ValueError(f"compare: {', '.join(repeated)} listed more than once; each baseline trains into its own "
                             "folder, so name each one once")
        if self.model.kind in self.compare:
            raise ValueError(f"compare: lists {self.model.kind!r}, the kind model.kind already trains; a baseline "
                             f"of the same kind would train the same model again, so leave it out")
        if self.train.early_stop and self.data.task == "chars" and self.data.options.get("test_fraction") == 0:
            raise ValueError("train.early_stop: with data.test_fraction 0 the chars task has no test text, so the "
                             "report would score the validation text that picked the checkpoint; set "
                             "data.test_fraction above 0 (default 0.05) or remove early_stop")
        return self


def parse(raw: Any, source: str = "config") -> RunConfig:
    """Validate a mapping (e.g. parsed YAML) into a RunConfig, or raise ConfigError with one line."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a YAML mapping of sections (model, data, train, …), "
                          f"got {type(raw).__name__}")
    config = validate(RunConfig, raw, source)
    from mor.data.registry import check_options

    try:
        check_options(config.data.task, config.data.options)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    return config


def load(path: str | Path) -> RunConfig:
    """Read and validate a YAML config file."""
    return parse(read_yaml(path), str(path))


def saved(text: str, source: Path) -> RunConfig:
    """The config saved with a checkpoint (`source`, its file): text that is not YAML means a damaged checkpoint."""
    raw = parse_yaml(text, str(source), CheckpointError, "; the checkpoint is damaged: use another step-* folder "
                                                         "or train again")
    return parse(raw, str(source))


def main_job() -> RunConfig:
    """The built-in main job that `mor train` runs without a config (a copy is configs/prefix_sum.yaml)."""
    text = resources.files("mor.train").joinpath("main_job.yaml").read_text()
    return parse(parse_yaml(text, "main_job.yaml"), "main_job.yaml")


def dump(config: RunConfig) -> str:
    """The config as YAML, with every default filled in (saved next to checkpoints)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
