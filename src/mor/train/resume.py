"""What a resumed run may change in its config, and the first change that forbids resuming."""

from mor.train.config import RunConfig

# What a resumed run may change: how long it trains and how often it logs, evaluates and checkpoints, what the report
# measures, the baselines it is compared with, and its threads. Anything else would train a different model on;
# eval.seed also seeds validation, so a new one would choose the best checkpoint among scores on other examples.
RESUMABLE = ("train.steps", "train.log_every", "train.eval_every", "train.early_stop", "train.threads", "checkpoint.",
             "eval.", "compare")


def config_change(before: RunConfig, now: RunConfig) -> str | None:
    """The first setting (in sorted order) that differs between a checkpoint's config and this run's, other than
    those a resumed run may change; None when there is none."""
    before, now = (c.model_copy(update={"data": c.data.resolved()}) for c in (before, now))  # as older runs saved
    old, new = _flat(before.model_dump(mode="json")), _flat(now.model_dump(mode="json"))
    for key in sorted(old.keys() | new.keys()):
        if (not key.startswith(RESUMABLE) or key == "eval.seed") and old.get(key) != new.get(key):
            return f"{key} was {old.get(key)!r}, the config says {new.get(key)!r}"
    return None


def _flat(tree: dict, prefix: str = "") -> dict[str, object]:
    """A nested mapping as dotted keys: {'train': {'lr': 1}} → {'train.lr': 1}."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        flat.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat
