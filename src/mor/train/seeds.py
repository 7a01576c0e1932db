"""Stream tasks draw each training batch from a generator seeded by (seed, step, micro-batch); the test and
validation examples have seeds of their own, which must never be one of those."""

from mor.errors import ConfigError
from mor.train.config import RunConfig


def batch_seed(seed: int, step: int, micro: int) -> int:
    """The seed of the generator that draws training batch (`step`, `micro`) of a stream task."""
    return ((seed * 1_000_003 + step) * 257 + micro) % 2**63


def check_eval_seed(config: RunConfig) -> None:
    """A one-line error when the test (`eval.seed`) or validation (`eval.seed` + 1) examples of a stream task would
    be drawn by the generator of one of the run's training batches: they would be training examples."""
    tc, seed = config.train, config.eval.seed
    for value, examples in ((seed, "test"), (seed + 1, "validation")):
        hit = training_batch(config, value)
        if hit is not None:
            raise ConfigError(
                f"eval.seed: {seed} draws {examples} examples with the generator of training batch {hit[0]} "
                f"(micro-batch {hit[1]}) of train.seed {tc.seed}, so they would be training examples: train.steps "
                f"({tc.steps}) × train.grad_accum ({tc.grad_accum}) micro-batches make the training generators reach "
                f"that seed; set eval.seed to {free_eval_seed(config)}, the first seed from {seed} that none of them "
                f"reaches (or lower train.grad_accum)")


def training_batch(config: RunConfig, seed: int) -> tuple[int, int] | None:
    """The training batch (step, micro-batch) of a stream task whose generator `seed` seeds, if any."""
    tc = config.train
    step, micro = divmod(seed - batch_seed(tc.seed, 0, 0), 257)
    return (step, micro) if 0 <= step < tc.steps and micro < tc.grad_accum else None


def free_eval_seed(config: RunConfig) -> int:
    """The first `eval.seed` from the configured one on whose test and validation examples (that seed and the next)
    no training batch draws: right after the micro-batches of the step it collides in, or, with 256 micro-batches
    a step (no gap of two seeds between steps), right after the last step's."""
    tc, seed = config.train, config.eval.seed
    if training_batch(config, seed) is None and training_batch(config, seed + 1) is None:
        return seed
    step = (seed + 1 - batch_seed(tc.seed, 0, 0)) // 257  # the step whose seeds it or the next one hits
    return batch_seed(tc.seed, step if tc.grad_accum < 256 else tc.steps - 1, tc.grad_accum)
