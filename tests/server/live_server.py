"""Helpers of the server tests: the tiny engine they serve, uvicorn on a free loopback port in a
background thread, and a reader of Prometheus pages. (Not conftest.py: tests/conftest.py owns
that module name on sys.path.)"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import httpx

MODEL = "random:tiny"
SERVED = "tiny"
MAX_BATCH, MAX_QUEUE = 4, 8


@dataclass
class Live:
    url: str
    app: object
    server: object

    @property
    def loop(self):
        return self.app.state.loop


def start_server(app, graceful_s: float = 5) -> tuple[object, threading.Thread, str]:
    """uvicorn on a socket bound here (port 0), so no other process can take the port first."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=graceful_s))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_healthy(url)
    return server, thread, url


def wait_healthy(url: str, timeout: float = 60.0, headers=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} did not become healthy")


def tiny_engine(**kwargs):
    from saguaro import Engine

    return Engine(MODEL, dtype="float32", threads=1, max_batch=kwargs.pop("max_batch", MAX_BATCH), **kwargs)



def metric(text: str, name: str, **labels) -> float:
    """The value of one sample in a Prometheus text page (0 if absent)."""
    want = {k: str(v) for k, v in labels.items()}
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, value = line.rsplit(" ", 1)
        sample, _, rest = head.partition("{")
        if sample != name:
            continue
        got = dict(part.split("=", 1) for part in rest.rstrip("}").split(",") if part) if rest else {}
        got = {k: v.strip('"') for k, v in got.items()}
        if all(got.get(k) == v for k, v in want.items()):
            total += float(value)
    return total
