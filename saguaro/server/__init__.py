"""`saguaro serve`: an OpenAI-compatible HTTP server on the step-wise Engine.

The modules are imported lazily (FastAPI and uvicorn are the optional `server` extra), so
`saguaro --help` and `import saguaro` never pay for them.

- loop.py: the one thread that owns the Engine, and its thread-safe inbox
- protocol.py: request bodies (pydantic) and OpenAI-style error bodies
- routes.py: /v1/completions and /v1/chat/completions, streamed or not
- app.py: `create_app(...)`, the FastAPI app around an engine (or a factory that builds one)
- metrics.py: Prometheus counters, gauges and histograms, one registry per app
- cli.py: the `saguaro serve` flags and command
"""


def create_app(*args, **kwargs):
    from saguaro.server.app import create_app as _create_app

    return _create_app(*args, **kwargs)


__all__ = ["create_app"]
