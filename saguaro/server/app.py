"""The FastAPI app: `create_app(engine)` or `create_app(engine_factory=...)`.

The app owns its engine from then on: the lifespan starts the engine thread (which builds the
engine when given a factory, so the port answers /health with 503 while the model loads) and, at
shutdown, stops admission, gives requests in flight `shutdown_timeout` seconds, aborts the rest
and closes the engine. Every error, including malformed JSON and unknown routes, is answered with
an OpenAI-style error body; a traceback never reaches a client.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from saguaro.server.loop import EngineLoop
from saguaro.server.metrics import ServerMetrics
from saguaro.server.protocol import APIError, error_body
from saguaro.server.routes import router

log = logging.getLogger(__name__)
# Answered without an API key: /health for load balancers and orchestrators, / because the chat
# page is static (its API calls carry the key typed into it).
OPEN_PATHS = ("/health", "/")


def create_app(engine: Any = None, *, engine_factory: Callable[[], Any] | None = None, model_name: str = "saguaro",
               api_key: str | None = None, max_queue: int = 64, shutdown_timeout: float = 30.0,
               on_fatal: Callable[[BaseException], None] | None = None) -> FastAPI:
    """An OpenAI-compatible app around `engine` (already built) or `engine_factory` (built on the
    engine thread at startup). `max_queue`: requests that may wait for a KV row before new ones
    get 503. `on_fatal(error)`: called if the factory fails (the CLI then exits)."""
    if (engine is None) == (engine_factory is None):
        raise ValueError("give exactly one of engine and engine_factory")
    if max_queue < 0:
        raise ValueError(f"max_queue must be >= 0, got {max_queue}")
    metrics = ServerMetrics(model_name)
    loop = EngineLoop(engine_factory or (lambda: engine), max_queue, metrics, on_fatal)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop.start()
        yield
        log.info("shutting down: %d request(s) in flight", loop.in_flight)
        await asyncio.to_thread(loop.stop, shutdown_timeout)

    app = FastAPI(title="saguaro", lifespan=lifespan)
    app.state.loop, app.state.metrics, app.state.model_name = loop, metrics, model_name
    app.state.created = int(time.time())
    if api_key:
        app.add_middleware(BearerAuth, api_key=api_key)
    _add_error_handlers(app)
    app.include_router(router)

    @app.get("/health")
    async def health():
        status = ("failed" if loop.state == "failed" or loop.broken
                  else "stopping" if loop.draining or loop.state == "stopped"
                  else loop.state)
        body = {"status": status}
        if loop.load_error is not None:
            body["error"] = str(loop.load_error)
        return JSONResponse(body, status_code=200 if status == "ready" else 503)

    @app.get("/v1/models")
    async def models():
        card = {"id": model_name, "object": "model", "created": app.state.created, "owned_by": "saguaro"}
        if loop.engine is not None:
            card["max_model_len"] = getattr(loop.engine, "max_seq_len", None)
        return {"object": "list", "data": [card]}

    @app.get("/metrics")
    async def prometheus():
        content, media_type = metrics.render()
        return Response(content, media_type=media_type)

    page = resources.files("saguaro.server").joinpath("static/chat.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def chat_page():
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    return app


class BearerAuth:
    """Every path but OPEN_PATHS needs `Authorization: Bearer <key>` (compared in constant time)."""

    def __init__(self, app, api_key: str):
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            return await self.app(scope, receive, send)
        body = json.dumps(error_body("invalid or missing API key: send Authorization: Bearer <key>",
                                     code="invalid_api_key")).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"msg": "invalid request", "loc": (), "type": ""}
        if first.get("type") == "json_invalid":
            return JSONResponse(error_body(f"the body is not valid JSON: {first.get('ctx', {}).get('error', '')}"),
                                status_code=400)
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(loc) or None
        message = f"{param}: {first['msg']}" if param else f"the body: {first['msg']}"
        return JSONResponse(error_body(message, param=param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):
        log.error("unhandled error on %s", request.url.path, exc_info=exc)
        return JSONResponse(error_body("internal server error", "server_error"), status_code=500)
