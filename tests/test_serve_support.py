"""Helpers shared by the tests of mor serve (no tests here): a tiny trained model, serve configs, a live server."""

import io
from pathlib import Path

import yaml
from rich.console import Console

from fake_llm_server import Server
from mor.serve import create_app, hash_key, load_settings

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-test-main"


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def train_tiny(folder: Path) -> Path:
    """A MoR model trained 8 steps on prefix sums (sequences of [bit, 1] rows), as `mor train` writes it."""
    from mor.train.config import parse
    from mor.train.trainer import Trainer

    config = parse({"model": {"dim": 8, "num_experts": 3, "k": 2, "train_steps": 3, "halting": {"max_steps": 6}},
                    "data": {"task": "prefix_sum", "sizes": [4, 8], "batch_size": 16},
                    "train": {"steps": 8, "eval_every": 8, "log_every": 8, "warmup": 2, "seed": 0},
                    "checkpoint": {"dir": str(folder)}})
    Trainer(config, folder, console=Console(file=io.StringIO())).fit()
    return folder


def write_settings(folder: Path, **fields) -> Path:
    """serve.yaml in `folder`: the repository's example system, KEY, and `fields` on top."""
    content = {"system": str(ROOT / "configs" / "serve-system.yaml"),
               "api_keys": [{"name": "main", "sha256": hash_key(KEY)}], **fields}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "serve.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def serve(path: Path) -> Server:
    """A real uvicorn server for the serve config at `path` on a free loopback port; `root` is its base URL."""
    app = create_app(load_settings(path))
    server = Server(app)
    server.server.config.lifespan = "on"  # a start-up failure stops the server instead of being skipped
    server.root, server.service = server.url.removesuffix("/v1"), app.state.service
    return server
