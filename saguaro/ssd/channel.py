"""Point-to-point links between the engine and the draft worker.

`Channel` runs over torch.distributed (gloo): a standalone process group on its own TCP store,
so there is no global state, several engines can live in one process, and the worker may run on
another host. `LocalChannel` is the same interface between two threads of one process (the
in-process worker on its own CUDA stream).
"""

from __future__ import annotations

import pickle
import queue
import threading
from datetime import timedelta

import torch
import torch.distributed as dist


class Link:
    """What both links share: blocking receives and pickled objects over send / recv_async.

    Every blocking call takes an optional `wait(pending)` that replaces the plain blocking wait:
    the engine passes one that polls the worker's liveness and a deadline, so neither a send nor
    a receive can hang it (and Ctrl-C is seen between polls, not after a C++ wait returns).
    """

    def send_async(self, tensor: torch.Tensor):
        raise NotImplementedError

    def send(self, tensor: torch.Tensor, wait=None) -> None:
        pending = self.send_async(tensor)
        if wait is None:
            pending.wait()
        else:
            wait(pending)

    def recv_async(self, tensor: torch.Tensor):
        raise NotImplementedError

    def recv(self, tensor: torch.Tensor, wait=None) -> torch.Tensor:
        """Receive into `tensor`; `wait(pending)` may replace the plain blocking wait (the engine
        uses one that also watches the worker's liveness and a deadline)."""
        pending = self.recv_async(tensor)
        if wait is None:
            pending.wait()
        else:
            wait(pending)
        return tensor

    def send_obj(self, obj, wait=None) -> None:
        data = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
        self.send(torch.tensor([data.numel()], dtype=torch.int64), wait)
        self.send(data, wait)

    def recv_obj(self, wait=None):
        size = self.recv(torch.zeros(1, dtype=torch.int64), wait)
        data = self.recv(torch.empty(int(size[0]), dtype=torch.uint8), wait)
        return pickle.loads(data.numpy().tobytes())


# Gloo fails any send or receive that waits longer than the group's timeout, and closes the link
# with it, so a worker idle between requests for that long died. The link therefore never times
# out by itself: the engine bounds each wait (saguaro.ssd.client), and the worker exits when the
# engine closes the link or dies (saguaro.ssd.worker.watch_parent). 7 days fits gloo's int32 ms.
LINK_TIMEOUT = timedelta(days=7)


class Channel(Link):
    def __init__(self, host: str, port: int, rank: int, timeout_s: float, store=None):
        """`timeout_s` bounds the rendezvous only."""
        self.peer = 1 - rank
        timeout = timedelta(seconds=timeout_s)
        if store is None:
            store = dist.TCPStore(host, port, 2, is_master=False, timeout=timeout)
        self.store = store
        self.pg = dist.ProcessGroupGloo(store, rank, 2, max(timeout, LINK_TIMEOUT))

    @staticmethod
    def listen(host: str = "127.0.0.1", port: int = 0, timeout_s: float = 60.0):
        """The engine's side of the rendezvous: a store the worker connects to; returns it and its port."""
        store = dist.TCPStore(host, port, 2, is_master=True, timeout=timedelta(seconds=timeout_s),
                              wait_for_workers=False)
        return store, store.port

    def send_async(self, tensor: torch.Tensor) -> "PendingRecv":
        """Post a send; a gloo send can block until the peer receives (a stopped worker)."""
        tensor = tensor.contiguous()
        return PendingRecv(self.pg.send([tensor], self.peer, 0), keep=tensor)

    def recv_async(self, tensor: torch.Tensor) -> "PendingRecv":
        """Post a receive into `tensor`; poll it with done(), collect it with wait()."""
        return PendingRecv(self.pg.recv([tensor], self.peer, 0))


class PendingRecv:
    """A posted send or receive that can be polled.

    Gloo's handles only learn they are complete inside wait(), so a helper thread waits and
    raises a flag the caller can poll between drafting steps (or between liveness checks).
    """

    def __init__(self, work, keep=None):
        self._work = work
        self._keep = keep  # the buffer gloo reads from must outlive the send
        self._done = threading.Event()
        self._error: BaseException | None = None
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            self._work.wait()
        except BaseException as e:  # re-raised in the caller's thread by wait()
            self._error = e
        self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """True once received; False if `timeout_s` passed first. Raises what the receive raised."""
        finished = self._done.wait(timeout_s)
        if finished and self._error is not None:
            raise self._error
        return finished


class LocalChannel(Link):
    """One end of an in-process link: tensors are copied into a queue the other end reads."""

    def __init__(self, inbox: queue.Queue, outbox: queue.Queue):
        self.inbox = inbox
        self.outbox = outbox

    @staticmethod
    def pair() -> tuple["LocalChannel", "LocalChannel"]:
        a, b = queue.Queue(), queue.Queue()
        return LocalChannel(a, b), LocalChannel(b, a)

    def send_async(self, tensor: torch.Tensor) -> "LocalPending":
        self.outbox.put(tensor.detach().to("cpu", copy=True))  # the sender may reuse its buffer
        return SENT

    def recv_async(self, tensor: torch.Tensor) -> "LocalPending":
        return LocalPending(self.inbox, tensor)


class _Sent:
    """A LocalChannel send: the queue took the copy, so it is complete at once."""

    def done(self) -> bool:
        return True

    def wait(self, timeout_s: float | None = None) -> bool:
        return True


SENT = _Sent()


class LocalPending:
    """A receive from a LocalChannel: messages arrive in order, so it takes the next one."""

    def __init__(self, inbox: queue.Queue, tensor: torch.Tensor):
        self._inbox = inbox
        self._tensor = tensor
        self._done = False

    def done(self) -> bool:
        return self.wait(0)

    def wait(self, timeout_s: float | None = None) -> bool:
        if self._done:
            return True
        try:
            item = self._inbox.get(timeout=timeout_s)
        except queue.Empty:
            return False
        if item.shape != self._tensor.shape or item.dtype != self._tensor.dtype:
            raise RuntimeError(f"message of shape {tuple(item.shape)} {item.dtype} where "
                               f"{tuple(self._tensor.shape)} {self._tensor.dtype} was expected")
        self._tensor.copy_(item)
        self._done = True
        return True
