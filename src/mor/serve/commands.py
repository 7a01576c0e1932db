"""`mor serve`: run the HTTP service under uvicorn (several workers behind one port with --workers), and
`mor serve hash-key`: make or hash an API key for the config."""

import errno
import os
import secrets
import socket
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import typer
from rich.console import Console

from mor.errors import ConfigError, MorError

app = typer.Typer(help="Serve routing systems and trained models over HTTP (OpenAI-compatible).")
console = Console(soft_wrap=True)  # paths and long lines stay whole in logs and pipes


@app.callback(invoke_without_command=True)
def serve(ctx: typer.Context,
          config: Path = typer.Option(Path("configs/serve.yaml"), help="Serve YAML (see configs/serve.yaml)."),
          host: str | None = typer.Option(None, help="Address to bind (overrides server.host)."),
          port: int | None = typer.Option(None, min=0, max=65535, help="Port (overrides server.port)."),
          workers: int | None = typer.Option(None, min=1, help="Worker processes (overrides server.workers).")) -> None:
    """Run the service for a serve config until Ctrl-C (in-flight requests finish first)."""
    if ctx.invoked_subcommand is None:
        run_server(config, host, port, workers)


def run_server(config: Path, host: str | None = None, port: int | None = None, workers: int | None = None) -> None:
    """Validate the configs (one-line errors), then hand the app factory to uvicorn."""
    import uvicorn

    from mor.serve.app import CONFIG_ENV, LIMITS_ENV
    from mor.serve.limits import SharedRateLimiter
    from mor.serve.settings import load_settings
    from mor.system.config import load_config

    settings = load_settings(config)
    if settings.system is not None:
        try:
            load_config(settings.system)
        except ConfigError as err:
            raise ConfigError(f"{config}: system: {err}") from None
    server = settings.server
    host, port, workers = host or server.host, server.port if port is None else port, workers or server.workers
    check_bindable(host, port)
    os.environ[CONFIG_ENV] = str(config.resolve())
    with ExitStack() as stack:
        if workers > 1:  # /metrics adds up every worker, and rate limits hold for all of them together
            shared = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mor-")))
            if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
                (shared / "prometheus").mkdir()
                os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(shared / "prometheus")
            os.environ.setdefault(LIMITS_ENV, str(shared / "rate-limits.sqlite"))
        if os.environ.get(LIMITS_ENV):  # a file that cannot be used: one line here, not a traceback per worker
            SharedRateLimiter(os.environ[LIMITS_ENV], None).close()
        console.print(f"mor serve: http://{host}:{port}/ ({workers} worker{'s' * (workers > 1)}), API docs at /docs",
                      highlight=False)
        trusted = server.forwarded_allow_ips
        uvicorn.run("mor.serve.app:app_from_env", factory=True, host=host, port=port, workers=workers, lifespan="on",
                    timeout_graceful_shutdown=server.graceful_shutdown_s, forwarded_allow_ips=trusted,
                    proxy_headers=trusted is not None, access_log=server.access_log)


def check_bindable(host: str, port: int) -> None:
    """A one-line error now, before the app loads, when uvicorn could not listen on host:port (a port in use, a
    host that does not resolve or is not this machine's); uvicorn would log it after "startup complete"."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise MorError(f"--host: cannot resolve {host!r} ({err.strerror}); give an address of this machine, e.g. "
                       "127.0.0.1 or 0.0.0.0") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as err:
            fix = "pass another --port or stop what listens there" if err.errno == errno.EADDRINUSE else \
                "give an address of this machine (--host) and a port you may use (--port)"
            raise MorError(f"mor serve: cannot listen on {host}:{port} ({err.strerror}); {fix}") from None


@app.command("hash-key")
def hash_key(key: str | None = typer.Argument(None, help="Key to hash; '-': read it from stdin; none: make one.")
             ) -> None:
    """Print a key's SHA-256 for `api_keys[].sha256` (with no KEY: a new random key and its hash)."""
    from mor.serve.settings import hash_key as sha256

    if key is None:
        key = f"sk-mor-{secrets.token_urlsafe(24)}"
        console.print(f"key:    {key}   (give it to the caller; it is not stored anywhere)", highlight=False,
                      soft_wrap=True)
    elif key == "-":
        key = sys.stdin.readline().strip()
    console.print(f"sha256: {sha256(key)}", highlight=False)
