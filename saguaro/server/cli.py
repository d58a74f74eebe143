"""`saguaro serve`: its flags (imported by the CLI's parser, so argparse only at import time) and
the command, which runs uvicorn in the foreground.

The port opens at once and /health answers 503 while the engine thread loads the model. If the
load fails the server stops and the command fails like any CLI command (one error line, status 2).
SIGTERM (or Ctrl-C) stops admission, lets requests in flight finish for --shutdown-timeout
seconds, aborts the rest, closes the engine and exits 0 (130 for Ctrl-C, as the other commands).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal

log = logging.getLogger(__name__)
API_KEY_ENV = "SAGUARO_API_KEY"


def add_serve_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    g.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    g.add_argument("--max-batch", type=int, default=8, help="requests decoded together, one KV row each (default 8)")
    g.add_argument("--max-seq-len", type=int, metavar="N",
                   help="KV slots per request, prompt plus max_tokens (default min(model context, 2048))")
    g.add_argument("--max-queue", type=int, default=64,
                   help="requests that may wait for a KV row; beyond that new ones get 503 (default 64)")
    g.add_argument("--served-model-name", metavar="NAME",
                   help="the model name in requests and /v1/models (default: the --target reference)")
    g.add_argument("--api-key", help=f"require 'Authorization: Bearer KEY' on every endpoint but /health and / "
                   f"(default: ${API_KEY_ENV} if set)")
    g.add_argument("--shutdown-timeout", type=float, default=30.0, metavar="S",
                   help="on SIGTERM, seconds requests in flight get to finish before they are aborted (default 30)")


def _check(args: argparse.Namespace, usage_error) -> None:
    if not 0 <= args.port <= 65535:
        raise usage_error(f"--port must be in 0..65535, got {args.port}")
    if args.max_batch < 1:
        raise usage_error(f"--max-batch must be >= 1, got {args.max_batch}")
    if args.max_seq_len is not None and args.max_seq_len < 1:
        raise usage_error(f"--max-seq-len must be >= 1, got {args.max_seq_len}")
    if args.max_queue < 0:
        raise usage_error(f"--max-queue must be >= 0, got {args.max_queue}")
    if args.shutdown_timeout < 0:
        raise usage_error(f"--shutdown-timeout must be >= 0, got {args.shutdown_timeout}")


def cmd_serve(args: argparse.Namespace, target: str, options: dict) -> int:
    from saguaro.cli.main import UsageError
    from saguaro.errors import ModelLoadError, SaguaroError

    _check(args, UsageError)
    try:
        import uvicorn

        from saguaro.server.app import create_app
    except ModuleNotFoundError as e:
        raise UsageError(f"saguaro serve needs the server extra ({e.name} is missing): "
                         "pip install 'saguaro[server]'") from None
    from saguaro.engine.engine import Engine

    # A server's log is its output: startup, readiness and shutdown lines show without -v.
    logging.getLogger().setLevel(logging.INFO)
    box: dict = {}

    def build():
        log.info("loading %s (mode %s, draft %s)", target, options.get("mode"), options.get("draft"))
        return Engine(target, max_batch=args.max_batch, max_seq_len=args.max_seq_len, **options)

    def on_fatal(error: BaseException) -> None:
        if "server" in box:
            box["server"].should_exit = True  # polled by uvicorn's main loop

    app = create_app(engine_factory=build, model_name=args.served_model_name or target,
                     api_key=args.api_key or os.environ.get(API_KEY_ENV) or None, max_queue=args.max_queue,
                     shutdown_timeout=args.shutdown_timeout, on_fatal=on_fatal)
    loop = app.state.loop

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            loop.drain()  # refuse new requests at once, before uvicorn stops listening
            super().handle_exit(sig, frame)

    # log_config=None: uvicorn's records go through the CLI's handler, as ours do.
    config = uvicorn.Config(app, host=args.host, port=args.port, log_config=None, access_log=args.verbose,
                            timeout_graceful_shutdown=args.shutdown_timeout, lifespan="on")
    box["server"] = server = Server(config)
    # uvicorn re-raises the signal it caught once it has shut down; a no-op SIGTERM handler makes a
    # clean shutdown exit 0 instead of dying by the signal.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    except SystemExit:  # uvicorn exits 1 when it cannot bind; it has logged why
        raise UsageError(f"could not serve on {args.host}:{args.port} (see the log above)") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    if loop.load_error is not None:
        error = loop.load_error
        if isinstance(error, SaguaroError):
            raise error
        raise ModelLoadError(f"loading {target} failed: {type(error).__name__}: {error}") from error
    return 0
