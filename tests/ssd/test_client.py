"""WorkerClient against a scripted in-process worker (no model): the stall deadline adapts to
measured rounds, a Ctrl-C during an exchange is held until the exchange completes (the link stays
in step), and close() is final. Each case runs in well under a second."""

from __future__ import annotations

import os
import signal
import threading
import time
from types import SimpleNamespace

import pytest

from saguaro.ssd import client as client_mod
from saguaro.ssd.client import WorkerClient, WorkerFault
from saguaro.ssd.protocol import CMD_END, Reply, decode_outcomes, encode_reply, outcome_buffer

MAX_B = 1


def scripted_worker(delays: list[float]):
    """A worker thread that answers every round with an empty speculation after delays[i] s."""

    def main(cfg, channel):
        channel.send_obj({"ok": True, "tokenizer": ["fake"]})
        assert channel.recv_obj() == {"cmd": "attach", "target_vocab": 8}
        while True:
            msg = channel.recv_obj()
            if msg["cmd"] == "shutdown":
                return
            reply(channel)
            rounds = 0
            while True:
                buf = outcome_buffer(MAX_B)
                channel.recv(buf)
                if decode_outcomes(buf)[0] == CMD_END:
                    break
                time.sleep(delays[min(rounds, len(delays) - 1)])
                rounds += 1
                reply(channel)

    def reply(channel):
        for tensor in encode_reply(Reply([[]], [False], None, [False], {"k": 1}), MAX_B):
            channel.send(tensor)

    return main


def make_client(monkeypatch, delays, timeout_s):
    monkeypatch.setattr(client_mod, "worker_thread_main", scripted_worker(delays))
    cfg = dict(host="127.0.0.1", draft="fake", dtype="float32", device="cpu", cores=None)
    client = WorkerClient(cfg, timeout_s=timeout_s, in_process=True)
    client.attach(8, SimpleNamespace(fingerprint=lambda: ["fake"]))
    seq = SimpleNamespace(trunk=[1, 2], params=SimpleNamespace())
    monkeypatch.setattr(client_mod.dataclasses, "asdict", lambda p: {})
    client.start_batch([seq], capacity=16, options={}, max_batch=MAX_B)
    return client


def test_a_round_slower_than_worker_timeout_is_no_stall_when_rounds_were_slow(monkeypatch):
    # Rounds of 0.15 s on a "busy machine", then one of 0.6 s: over worker_timeout (0.4 s) but
    # under 10x the slowest recent round, so it is not taken for a stalled worker.
    client = make_client(monkeypatch, [0.15, 0.15, 0.15, 0.6], timeout_s=0.4)
    try:
        for _ in range(4):
            client.round([True], [(0, 1)], 0.0)
        assert client.healthy
        assert client.stall_timeout() >= 10 * 0.6
    finally:
        client.close()


def test_a_real_stall_is_still_detected(monkeypatch):
    client = make_client(monkeypatch, [0.0, 0.0, 5.0], timeout_s=0.3)
    try:
        client.round([True], [(0, 1)], 0.0)
        client.round([True], [(0, 1)], 0.0)
        start = time.monotonic()
        with pytest.raises(WorkerFault, match="stopped answering"):
            client.round([True], [(0, 1)], 0.0)
        assert time.monotonic() - start < 2.0
    finally:
        client.close()


def test_ctrl_c_during_an_exchange_is_raised_after_it_and_the_link_stays_in_step(monkeypatch):
    client = make_client(monkeypatch, [0.5, 0.0], timeout_s=5.0)
    try:
        timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            client.round([True], [(0, 1)], 0.0)
        timer.join()
        # The reply of the interrupted round was taken in full: the next round reads its own.
        assert client.in_sync and client.healthy
        assert client.round([True], [(0, 1)], 0.0).tokens == [[]]
    finally:
        client.close()


def test_ctrl_c_between_the_messages_of_an_exchange_is_held_too(monkeypatch):
    # The signal lands while a receive is being posted, outside any wait: the CI failure of a
    # Ctrl-C in an SSD chat (the link went out of step and SSD fell back to AR).
    client = make_client(monkeypatch, [0.0], timeout_s=5.0)
    post = client.channel.recv_async

    def post_then_interrupt(tensor):
        pending = post(tensor)
        if not fired:
            fired.append(True)
            os.kill(os.getpid(), signal.SIGINT)  # Python runs the handler at the next bytecode
        return pending

    fired: list[bool] = []
    monkeypatch.setattr(client.channel, "recv_async", post_then_interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            client.round([True], [(0, 1)], 0.0)
        assert fired and client.in_sync and client.healthy
        assert client.round([True], [(0, 1)], 0.0).tokens == [[]]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        client.close()


def test_a_second_ctrl_c_gives_the_exchange_up(monkeypatch):
    client = make_client(monkeypatch, [5.0], timeout_s=10.0)
    try:
        for delay in (0.1, 0.3):
            threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT)).start()
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            client.round([True], [(0, 1)], 0.0)
        assert time.monotonic() - start < 2.0
        assert not client.in_sync and not client.healthy
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(WorkerFault, match="out of step"):
            client.round([True], [(0, 1)], 0.0)
    finally:
        client.close()


def test_calls_after_close_are_refused(monkeypatch):
    client = make_client(monkeypatch, [0.0], timeout_s=1.0)
    client.end_batch()
    client.close()
    client.close()  # twice is fine
    assert not client.thread.is_alive()
    with pytest.raises(WorkerFault, match="closed"):
        client.round([True], [(0, 1)], 0.0)
