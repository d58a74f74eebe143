"""create_app around small engines of its own: API keys, loading, a full queue, engine failures."""

from __future__ import annotations

import threading
import time

import httpx
from fastapi.testclient import TestClient

from live_server import SERVED, start_server, tiny_engine
from saguaro.server.app import create_app

COMPLETION = {"prompt": "hi", "max_tokens": 4, "ignore_eos": True}


def ready(c: TestClient, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while c.get("/health").status_code != 200:
        assert time.monotonic() < deadline, c.get("/health").json()
        time.sleep(0.02)


def test_api_key_guards_everything_but_health():
    app = create_app(tiny_engine(max_batch=1), model_name=SERVED, api_key="s3cret")
    with TestClient(app) as c:
        ready(c)
        for method, path in (("get", "/v1/models"), ("get", "/metrics"), ("post", "/v1/completions"),
                             ("post", "/v1/chat/completions"), ("get", "/nowhere")):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                r = getattr(c, method)(path, headers=headers)
                assert r.status_code == 401, (path, headers)
                assert r.json()["error"]["code"] == "invalid_api_key"
                assert r.headers["www-authenticate"] == "Bearer"
        key = {"Authorization": "Bearer s3cret"}
        assert c.get("/v1/models", headers=key).status_code == 200
        assert c.post("/v1/completions", json=COMPLETION, headers=key).status_code == 200
        assert c.get("/metrics", headers=key).status_code == 200


def test_health_is_503_while_loading_then_200():
    release = threading.Event()

    def slow_factory():
        release.wait(30)
        return tiny_engine(max_batch=1)

    with TestClient(create_app(engine_factory=slow_factory, model_name=SERVED)) as c:
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = c.post("/v1/completions", json=COMPLETION)
        assert r.status_code == 503 and r.headers["retry-after"] and r.json()["error"]["message"]
        release.set()
        ready(c)
        assert c.post("/v1/completions", json=COMPLETION).status_code == 200


def test_failed_load_reports_and_calls_on_fatal():
    from saguaro.errors import ModelLoadError

    fatal = []

    def broken():
        raise ModelLoadError("no such model")

    with TestClient(create_app(engine_factory=broken, on_fatal=fatal.append)) as c:
        app = c.app
        assert app.state.loop.stopped.wait(10)
        r = c.get("/health")
        assert r.status_code == 503 and r.json() == {"status": "failed", "error": "no such model"}
        assert c.post("/v1/completions", json=COMPLETION).status_code == 503
    assert [str(e) for e in fatal] == ["no such model"]


def test_engine_failure_fails_the_requests_with_500_and_recovers():
    engine = tiny_engine(max_batch=2)
    step, calls = engine.step, {"n": 0}

    def flaky_step():
        calls["n"] += 1
        if calls["n"] in (3, 9):  # mid-generation, once for each request below
            raise RuntimeError("simulated kernel failure")
        return step()

    engine.step = flaky_step
    with TestClient(create_app(engine, model_name=SERVED)) as c:
        ready(c)
        r = c.post("/v1/completions", json={**COMPLETION, "max_tokens": 20})
        assert r.status_code == 500
        assert r.json()["error"]["type"] == "server_error" and "simulated kernel failure" in r.json()["error"]["message"]
        r = c.post("/v1/completions", json={**COMPLETION, "max_tokens": 20, "stream": True})
        assert r.status_code == 200  # the stream had begun: the error is its last event
        events = [line for line in r.text.splitlines() if line.startswith("data:")]
        assert "simulated kernel failure" in events[-2] and events[-1] == "data: [DONE]"
        # The engine freed the failed requests and serves the next ones.
        r = c.post("/v1/completions", json=COMPLETION)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
        assert c.get("/health").status_code == 200
        page = c.get("/metrics").text
        assert 'saguaro:request_failure_total{model_name="tiny"} 2.0' in page


def test_full_queue_is_503_with_retry_after():
    """max_batch 1, max_queue 0: while one long request runs, the next one is refused."""
    app = create_app(tiny_engine(max_batch=1), model_name=SERVED, max_queue=0)
    server, thread, url = start_server(app)
    try:
        body = {"prompt": "hi", "max_tokens": 2000, "ignore_eos": True, "stream": True}
        with httpx.Client(base_url=url) as c, c.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()  # kept: a dropped iterator closes the stream
            next(line for line in lines if line.startswith("data:"))
            busy = httpx.post(url + "/v1/completions", json=COMPLETION)
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
            assert busy.json()["error"]["code"] == "queue_full"
            # n choices beyond what the server can ever hold is the client's mistake, not a retry.
            too_many = httpx.post(url + "/v1/completions", json={**COMPLETION, "n": 2})
            assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "n"
        deadline = time.monotonic() + 10
        while app.state.loop.in_flight:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert httpx.post(url + "/v1/completions", json=COMPLETION).status_code == 200
    finally:
        server.should_exit = True
        thread.join(30)
    assert app.state.loop.state == "stopped"  # the lifespan closed the engine


def test_shutdown_aborts_what_does_not_finish_in_time():
    """uvicorn waits `graceful_s` for the open request, then cancels its handler, which aborts it;
    the engine thread stops and closes the engine."""
    app = create_app(tiny_engine(max_batch=1), model_name=SERVED, shutdown_timeout=0.2)
    server, thread, url = start_server(app, graceful_s=0.2)
    got = {}

    def long_request():
        try:
            got["r"] = httpx.post(url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2000, "ignore_eos": True},
                                  timeout=30)
        except httpx.HTTPError as e:
            got["error"] = e

    client = threading.Thread(target=long_request)
    client.start()
    deadline = time.monotonic() + 10
    while not app.state.loop.running:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    server.should_exit = True  # what uvicorn does on SIGTERM
    thread.join(30)
    client.join(30)
    assert not thread.is_alive() and app.state.loop.state == "stopped"
    assert "error" in got or got["r"].status_code in (503, 500)
    assert 'saguaro:request_aborted_total{model_name="tiny"} 1.0' in app.state.metrics.render()[0].decode()
