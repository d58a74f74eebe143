"""The in-process link has the gloo channel's interface: ordered tensors and objects, copies
(not shared buffers), polling with a timeout, and a clear error on a mismatched message."""

import pytest
import torch

from saguaro.ssd.channel import LocalChannel


def test_tensors_and_objects_arrive_in_order_as_copies():
    engine, worker = LocalChannel.pair()
    sent = torch.arange(6, dtype=torch.int64)
    engine.send(sent)
    engine.send_obj({"cmd": "start", "seqs": [[1, 2]]})
    sent.zero_()  # the sender reuses its buffer; the message must not change
    got = worker.recv(torch.empty(6, dtype=torch.int64))
    assert got.tolist() == [0, 1, 2, 3, 4, 5]
    assert worker.recv_obj() == {"cmd": "start", "seqs": [[1, 2]]}
    worker.send(torch.tensor([7.5], dtype=torch.float64))
    assert engine.recv(torch.zeros(1, dtype=torch.float64)).item() == 7.5


def test_pending_receive_polls_until_the_message_comes():
    engine, worker = LocalChannel.pair()
    buf = torch.zeros(3, dtype=torch.int64)
    pending = worker.recv_async(buf)
    assert not pending.done() and not pending.wait(0.01)
    engine.send(torch.tensor([4, 5, 6]))
    assert pending.wait(1.0) and pending.done()
    assert buf.tolist() == [4, 5, 6]


def test_mismatched_message_is_a_clear_error():
    engine, worker = LocalChannel.pair()
    engine.send(torch.zeros(4, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="shape"):
        worker.recv(torch.zeros(3, dtype=torch.int64))
