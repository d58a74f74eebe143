"""The gloo link survives an idle spell longer than its set-up timeout: an engine may go minutes
(a server: hours) between requests, and a worker waiting that long used to die of a gloo
timeout, which sent the next request to AR. Runs in about 3 seconds."""

from __future__ import annotations

import threading
import time

import torch

from saguaro.ssd.channel import Channel


def test_a_receive_outlives_the_link_timeout():
    store, port = Channel.listen("127.0.0.1", 0, 10.0)
    box = {}
    joiner = threading.Thread(target=lambda: box.setdefault("worker", Channel("127.0.0.1", port, 1, 1.0)))
    joiner.start()
    engine = Channel("127.0.0.1", port, 0, 1.0, store=store)
    joiner.join(10)
    worker = box["worker"]
    buf = torch.zeros(1, dtype=torch.int64)
    pending = worker.recv_async(buf)
    start = time.monotonic()
    while time.monotonic() - start < 2.5:  # idle, well past the 1 s timeout
        assert not pending.wait(0.1)
    engine.send(torch.tensor([7]))
    assert pending.wait(5.0) and buf.item() == 7
    back = torch.zeros(1, dtype=torch.int64)
    reply = engine.recv_async(back)  # posted first: one thread holds both ends here
    worker.send(torch.tensor([8]))  # and the link still works both ways
    assert reply.wait(5.0) and back.item() == 8
