"""The live server shared by the server tests: random:tiny in float32 on one thread, served by
uvicorn on a free loopback port from a background thread, for the whole session."""

from __future__ import annotations

import pytest
import torch

from live_server import MAX_QUEUE, SERVED, Live, start_server, tiny_engine


@pytest.fixture(scope="session")
def live():
    from saguaro.server.app import create_app

    torch.set_num_threads(1)
    app = create_app(tiny_engine(), model_name=SERVED, max_queue=MAX_QUEUE, shutdown_timeout=5)
    server, thread, url = start_server(app)
    yield Live(url, app, server)
    server.should_exit = True
    thread.join(30)
