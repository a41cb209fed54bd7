"""`ganaudit serve`: run the detection microservice with uvicorn.

FastAPI and uvicorn are imported inside the command, so the rest of the CLI works without the serve extra.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from typing import Annotated, Optional

import typer


def uvicorn_log_config(access_log: bool) -> dict:
    """uvicorn logging that writes everything to stderr (stdout stays free for machine-readable output)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "default": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        },
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["stderr"], "level": "INFO" if access_log else "WARNING", "propagate": False},
            "ganaudit": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        },
    }


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket bound to ``host:port``; a busy port or a bad host is a ConfigError (exit 2)."""
    from ..errors import ConfigError

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise ConfigError(f"--host {host!r} is not an address or name this machine can bind: {e}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: no wait after a restart
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is already in use: stop the other server or pick another --port") from None
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def register(app: typer.Typer) -> None:
    """Add the serve command to the CLI."""
    from ..cli import fail, friendly_errors

    @app.command()
    @friendly_errors
    def serve(
        model: Annotated[
            Optional[str],
            typer.Option(help="Detector to serve: an exported .onnx file or a shipped model's name (default: the shipped default)."),
        ] = None,
        host: Annotated[str, typer.Option(help="Interface to bind; 0.0.0.0 exposes the service to the network.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="TCP port to listen on.")] = 8000,
        max_upload_mb: Annotated[
            float, typer.Option(help="Largest request body in MiB; bigger bodies get 413 while they stream in.")
        ] = 20.0,
        max_batch_size: Annotated[int, typer.Option(help="Most images per model call across concurrent requests.")] = 32,
        max_wait_ms: Annotated[
            float, typer.Option(help="How long a batch waits for more images before it runs (milliseconds).")
        ] = 5.0,
        max_queue: Annotated[
            int, typer.Option(help="Most images waiting for a batch; beyond it requests get 503 with Retry-After.")
        ] = 256,
        timeout_s: Annotated[float, typer.Option(help="Requests slower than this many seconds get 504.")] = 30.0,
        max_pixels: Annotated[
            int,
            typer.Option(help="Refuse images with more pixels than this (read from the header, before decoding)."),
        ] = 16_000_000,
        decode_budget_pixels: Annotated[
            int,
            typer.Option(
                help="Most pixels of images above 1 MP decoding at once, across requests (0: twice --max-pixels); "
                "bounds the memory decoding takes."
            ),
        ] = 0,
        api_key_env: Annotated[
            Optional[str],
            typer.Option(
                help="Name of an environment variable holding the API key; when set, requests must send "
                "'Authorization: Bearer <key>' or 'X-API-Key: <key>' (health and docs stay open)."
            ),
        ] = None,
        domain_gate: Annotated[bool, typer.Option("--domain-gate/--no-domain-gate", help="Gate the generated verdict by the model's domain (default): outside the training domain it abstains and the image is reported as anomalous. --no-domain-gate gives a generated verdict for every image.")] = True,
        threads: Annotated[
            Optional[int],
            typer.Option(help="onnxruntime threads per model call (default: one per core); idle ones sleep instead of spinning.", show_default=False),
        ] = None,
    ) -> None:
        """Serve a detector over HTTP: /v1/detect, the Open Inference Protocol (KServe v2) and /metrics."""
        try:
            import uvicorn

            from .app import ServiceSettings, create_app
        except ImportError as e:
            raise fail(f"the serve command needs the serve extra ({e.name} is missing): pip install 'ganaudit[serve]'") from None
        from ..errors import ConfigError
        from ..models import resolve_model
        from ..runtime import Detector
        from ..threads import check_threads

        if not 0 <= port <= 65535:
            raise ConfigError(f"--port must be 0-65535, got {port}")
        api_key = None
        if api_key_env is not None:
            api_key = os.environ.get(api_key_env, "")
            if not api_key:
                raise ConfigError(f"--api-key-env {api_key_env}: the environment variable {api_key_env} is not set or empty")
        settings = ServiceSettings(
            max_upload_mb=max_upload_mb, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
            max_queue=max_queue, timeout_s=timeout_s, api_key=api_key, max_pixels=max_pixels,
            decode_budget_pixels=decode_budget_pixels,
        )  # fmt: skip
        detector = Detector.load(
            resolve_model(model), batch_size=max(64, max_batch_size), domain_gate=domain_gate, max_pixels=max_pixels,
            threads=check_threads(threads),
        )
        application = create_app(detector, settings)
        access_log = logging.getLogger().getEffectiveLevel() <= logging.INFO  # `ganaudit -v serve`
        sock = bind_socket(host, port)  # before saying anything: a busy port is an error, not a served model
        port = sock.getsockname()[1]  # --port 0: the port the system picked
        typer.echo(
            f"serving model {detector.name!r} (spec {detector.spec_hash}) on http://{host}:{port} "
            f"(auth {'on' if api_key else 'off'}; {detector.threads} onnxruntime thread(s); docs at /docs)",
            err=True,
        )
        config = uvicorn.Config(
            application, host=host, port=port, log_config=uvicorn_log_config(access_log), access_log=access_log,
            timeout_graceful_shutdown=int(max(1, timeout_s)), server_header=False,
        )  # fmt: skip
        with sock:
            try:
                uvicorn.Server(config).run(sockets=[sock])
            except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it handled, after a graceful shutdown
                pass
