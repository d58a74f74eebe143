"""The engine's handle on the draft worker: start-up, one exchange per round, fault detection.

Every wait polls the worker's liveness and a deadline, so a dead or stalled worker surfaces as a
WorkerFault instead of a hang; close() never leaves the process behind.
"""

from __future__ import annotations

import dataclasses
import logging
import json
import subprocess
import sys
import threading
import time

import torch

from saguaro.errors import InvalidRequestError, ModelLoadError
from saguaro.ssd.channel import Channel, LocalChannel
from saguaro.ssd.protocol import Reply, decode_reply, encode_end, encode_outcomes, reply_buffers
from saguaro.ssd.worker import WorkerConfig, worker_thread_main

log = logging.getLogger(__name__)


def _payload(seqs) -> list:
    return [(s.trunk, dataclasses.asdict(s.params)) for s in seqs]


class WorkerFault(RuntimeError):
    """The worker died or stopped answering."""


class WorkerClient:
    """`in_process=False`: the worker is its own process, linked over gloo. `in_process=True`: it
    is a thread of this process linked by queues, on its own CUDA stream when its device is CUDA
    (one GPU shared by target and draft)."""

    def __init__(self, cfg_args: dict, timeout_s: float, startup_timeout_s: float = 900.0,
                 in_process: bool = False):
        self.timeout_s = timeout_s
        self.healthy = False
        self.vocab_size_target = cfg_args["target_vocab"]
        self.proc = self.thread = None
        try:
            if in_process:
                self.channel = self._start_thread(cfg_args, max(timeout_s, startup_timeout_s))
            else:
                self.channel = self._start_process(cfg_args, timeout_s, startup_timeout_s)
            ready = self.recv_obj(startup_timeout_s)
        except WorkerFault as e:
            self.close()
            raise ModelLoadError(f"the SSD draft worker failed to start: {e}") from None
        if not ready.get("ok"):
            self.close()
            raise ModelLoadError(f"the SSD draft worker could not load the draft: {ready.get('error')}")
        self.tokenizer_fingerprint = tuple(ready["tokenizer"])
        self.healthy = True
        self._max_batch = 0

    def _start_process(self, cfg_args: dict, timeout_s: float, startup_timeout_s: float) -> Channel:
        host = cfg_args.get("host", "127.0.0.1")
        store, port = Channel.listen(host, 0, startup_timeout_s)
        cfg = WorkerConfig(port=port, timeout_s=max(timeout_s, startup_timeout_s), **cfg_args)
        # A fresh interpreter (not fork): torch's thread pools do not survive a fork, and the
        # caller's __main__ need not be importable.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "saguaro.ssd.worker", "--config", json.dumps(dataclasses.asdict(cfg))]
        )
        return self._rendezvous(host, port, store, startup_timeout_s)

    def _start_thread(self, cfg_args: dict, timeout_s: float) -> LocalChannel:
        mine, theirs = LocalChannel.pair()
        cfg = WorkerConfig(port=0, timeout_s=timeout_s, **dict(cfg_args, cores=None))
        self.thread = threading.Thread(target=worker_thread_main, args=(cfg, theirs), daemon=True,
                                       name="saguaro-ssd-worker")
        self.thread.start()
        return mine

    def _rendezvous(self, host: str, port: int, store, timeout_s: float) -> Channel:
        box: dict = {}

        def connect():
            try:
                box["channel"] = Channel(host, port, 0, timeout_s, store=store)
            except Exception as e:  # reported below
                box["error"] = e

        thread = threading.Thread(target=connect, daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout_s
        while thread.is_alive():
            self._check_alive(deadline)
            thread.join(0.05)
        if "error" in box:
            raise WorkerFault(f"rendezvous failed: {box['error']}")
        return box["channel"]

    def _exited(self) -> str | None:
        """Why the worker is gone, or None while it runs."""
        if self.thread is not None:
            return None if self.thread.is_alive() else "worker thread ended"
        if self.proc is not None and self.proc.poll() is not None:
            return f"worker exited with code {self.proc.returncode}"
        return None

    def _check_alive(self, deadline: float) -> None:
        gone = self._exited()
        if gone:
            raise WorkerFault(gone)
        if time.monotonic() > deadline:
            raise WorkerFault("worker stopped answering (timeout)")

    def _wait(self, pending, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not pending.wait(0.005):
            self._check_alive(deadline)

    def _guarded(self, timeout_s: float | None):
        return lambda pending: self._wait(pending, timeout_s or self.timeout_s)

    def recv(self, tensor: torch.Tensor, timeout_s: float | None = None) -> torch.Tensor:
        return self.channel.recv(tensor, self._guarded(timeout_s))

    def recv_obj(self, timeout_s: float | None = None):
        return self.channel.recv_obj(self._guarded(timeout_s))

    def check_tokenizer(self, tokenizer) -> None:
        if tuple(tokenizer.fingerprint()) != self.tokenizer_fingerprint:
            self.close()
            raise InvalidRequestError("the draft's tokenizer differs from the target's; SSD needs the same one")

    # ---- rounds ---------------------------------------------------------------------------------

    def start_batch(self, seqs, capacity: int, options: dict, max_batch: int | None = None) -> Reply:
        """Open a session with these sequences; up to `max_batch` rows may take part at once."""
        self._max_batch = max(len(seqs), max_batch or 0)
        self._guard(lambda: self.channel.send_obj({"cmd": "start", "seqs": _payload(seqs), "capacity": capacity,
                                                   "max_batch": self._max_batch, **options}))
        # The first reply includes the worker's start-up measurements and prefill.
        return self._recv_reply(len(seqs), timeout_s=max(self.timeout_s, 600.0))

    def round(self, keep: list[bool], outcomes: list[tuple[int, int]], verify_s: float, added=()) -> Reply:
        """keep: a flag per row the worker holds; outcomes of the kept rows, then of the `added`
        sequences, which join the session now (their trunks are sent after the outcomes)."""
        buf = encode_outcomes(self._max_batch, keep, outcomes, int(verify_s * 1e6), len(added))

        def send():
            self.channel.send(buf)
            if added:
                self.channel.send_obj({"seqs": _payload(added)})

        self._guard(send)
        # A join prefills on the worker before it answers.
        return self._recv_reply(len(outcomes), timeout_s=max(self.timeout_s, 600.0) if added else None)

    def end_batch(self) -> None:
        if self.healthy:
            self._guard(lambda: self.channel.send(encode_end(self._max_batch)))

    def _recv_reply(self, rows: int, timeout_s: float | None = None) -> Reply:
        def receive():
            head, stats = reply_buffers(self._max_batch)
            self.recv(head, timeout_s)
            self.recv(stats, timeout_s)
            reply = decode_reply(head, stats, rows)
            count = sum(reply.has_q)
            if count:
                k = int(reply.stats["k"])
                q = self.recv(torch.empty(count, k, self.vocab_size_target, dtype=torch.float32), timeout_s)
                it = iter(q)
                reply.q = [next(it)[: len(toks)] if has else None for toks, has in zip(reply.tokens, reply.has_q)]
            return reply

        return self._guard(receive)

    def _guard(self, fn):
        try:
            return fn()
        except WorkerFault:
            self.healthy = False
            raise
        except Exception as e:  # gloo raises plain RuntimeErrors when the peer goes away
            self.healthy = False
            gone = self._exited()
            if gone:
                raise WorkerFault(gone) from e
            raise WorkerFault(f"lost the connection to the worker: {str(e).splitlines()[0][:160]}") from e

    def close(self) -> None:
        if getattr(self, "healthy", False):
            try:
                self.channel.send_obj({"cmd": "shutdown"})
            except Exception:
                pass
        self.healthy = False
        thread = getattr(self, "thread", None)
        if thread is not None:
            thread.join(5.0)  # a thread cannot be killed; it is a daemon and ends with the process
            if thread.is_alive():
                log.warning("the in-process draft worker did not stop within 5 s")
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            try:
                proc.wait(2.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5.0)

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid
