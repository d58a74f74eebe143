"""The engine's handle on the draft worker: start-up, one exchange per round, fault detection.

Every send and receive polls the worker's liveness and a deadline, so a dead or stalled worker
surfaces as a WorkerFault instead of a hang. The deadline of a round adapts to the rounds measured
so far, so a busy machine is not taken for a stalled worker. A Ctrl-C that arrives during an
exchange is held until the exchange completes (the link stays in step and the session usable);
a second one cuts it short, and the link is then given up. close() asks the worker to stop and
terminates it only when it does not; the worker also exits on its own when this process dies
(saguaro.ssd.worker.watch_parent).
"""

from __future__ import annotations

import dataclasses
import logging
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque

import torch

from saguaro.errors import InvalidRequestError, ModelLoadError
from saguaro.ssd.channel import Channel, LocalChannel
from saguaro.ssd.held_signals import held_signals
from saguaro.ssd.protocol import Reply, decode_reply, encode_end, encode_outcomes, reply_buffers
from saguaro.ssd.worker import WorkerConfig, worker_thread_main

log = logging.getLogger(__name__)
STALL_FACTOR = 10  # a round may take this many times the slowest recent round before it is a stall
RECENT_ROUNDS = 32
SHUTDOWN_GRACE_S = 5.0  # close(): how long a worker asked to stop may take before it is terminated
TERMINATE_GRACE_S = 2.0  # then how long SIGTERM may take before SIGKILL
# The worker process ignores SIGINT from its first line: Ctrl-C in a terminal reaches the whole
# process group, and stopping is the engine's decision (it sends shutdown, or its link closes).
_BOOT = ("import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "
         "from saguaro.ssd.worker import main; raise SystemExit(main())")


def _payload(seqs) -> list:
    return [(s.trunk, dataclasses.asdict(s.params)) for s in seqs]


class WorkerFault(RuntimeError):
    """The worker died or stopped answering."""


class WorkerClient:
    """`in_process=False`: the worker is its own process, linked over gloo, started here so that it
    loads the draft while the engine loads the target; attach() then waits for it. `in_process=True`:
    it is a thread of this process linked by queues, started by attach() (two loads in one process
    would share its kernel build and its cores), on its own CUDA stream when its device is CUDA
    (one GPU shared by target and draft)."""

    def __init__(self, cfg_args: dict, timeout_s: float, startup_timeout_s: float = 900.0,
                 in_process: bool = False):
        self.timeout_s = timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.healthy = False
        self.in_sync = True  # False once an exchange was cut short: the next message would be misread
        self.closed = False
        self.vocab_size_target: int | None = None  # set by attach()
        self.proc = self.thread = self.channel = None
        self.recent_rounds: deque[float] = deque(maxlen=RECENT_ROUNDS)  # seconds from outcome sent to reply
        self.in_session = False  # between start_batch and end_batch: the worker waits for outcomes
        self._max_batch = 0
        self._cfg_args, self._in_process = cfg_args, in_process
        self._link: dict = {}  # the rendezvous thread's channel or error
        if not in_process:
            try:
                self._start_process(cfg_args, timeout_s, startup_timeout_s)
            except BaseException:
                self.close()
                raise

    def attach(self, target_vocab: int, tokenizer) -> None:
        """Wait for the draft to load, check that its tokenizer is the target's, and tell the worker
        the target's vocabulary. Any failure stops the worker: nothing is left running."""
        try:
            if self._in_process:
                self.channel = self._start_thread(self._cfg_args, max(self.timeout_s, self.startup_timeout_s))
            else:
                self.channel = self._connected(self.startup_timeout_s)
            with held_signals():
                ready = self.recv_obj(self.startup_timeout_s)
            if not ready.get("ok"):
                raise ModelLoadError(f"the SSD draft worker could not load the draft: {ready.get('error')}")
            self.healthy = True  # close() now asks it to stop rather than terminating it
            if tuple(tokenizer.fingerprint()) != tuple(ready["tokenizer"]):
                raise InvalidRequestError("the draft's tokenizer differs from the target's; SSD needs the same one")
            self.vocab_size_target = target_vocab
            msg = {"cmd": "attach", "target_vocab": target_vocab}
            self._guard(lambda: self.channel.send_obj(msg, self._guarded(self.timeout_s)))
        except WorkerFault as e:
            self.close()
            raise ModelLoadError(f"the SSD draft worker failed to start: {e}") from None
        except BaseException:  # a bad draft, another tokenizer, or Ctrl-C while the draft loads
            self.close()
            raise

    def _start_process(self, cfg_args: dict, timeout_s: float, startup_timeout_s: float) -> None:
        host = cfg_args.get("host", "127.0.0.1")
        store, port = Channel.listen(host, 0, startup_timeout_s)
        # PR_SET_PDEATHSIG fires when the thread that started the child ends, so the worker asks
        # for it only when that thread is the main one; the parent-pid watch covers the rest.
        cfg = WorkerConfig(port=port, timeout_s=max(timeout_s, startup_timeout_s), parent_pid=os.getpid(),
                           death_signal=threading.current_thread() is threading.main_thread(), **cfg_args)
        # A fresh interpreter (not fork): torch's thread pools do not survive a fork, and the
        # caller's __main__ need not be importable.
        self.proc = subprocess.Popen([sys.executable, "-c", _BOOT, "--config", json.dumps(dataclasses.asdict(cfg))])

        def connect():  # the worker connects once its imports are done, before it loads the draft
            try:
                self._link["channel"] = Channel(host, port, 0, startup_timeout_s, store=store)
            except Exception as e:  # reported by _connected
                self._link["error"] = e

        self._link["thread"] = threading.Thread(target=connect, daemon=True, name="saguaro-ssd-rendezvous")
        self._link["thread"].start()

    def _start_thread(self, cfg_args: dict, timeout_s: float) -> LocalChannel:
        mine, theirs = LocalChannel.pair()
        cfg = WorkerConfig(port=0, timeout_s=timeout_s, **dict(cfg_args, cores=None))
        self.thread = threading.Thread(target=worker_thread_main, args=(cfg, theirs), daemon=True,
                                       name="saguaro-ssd-worker")
        self.thread.start()
        return mine

    def _connected(self, timeout_s: float) -> Channel:
        thread = self._link["thread"]
        deadline = time.monotonic() + timeout_s
        while thread.is_alive():
            self._check_alive(deadline, timeout_s)
            thread.join(0.05)
        if "error" in self._link:
            raise WorkerFault(f"rendezvous failed: {self._link['error']}")
        return self._link["channel"]

    def _exited(self) -> str | None:
        """Why the worker is gone, or None while it runs."""
        if self.thread is not None:
            return None if self.thread.is_alive() else "worker thread ended"
        if self.proc is not None and self.proc.poll() is not None:
            return f"worker exited with code {self.proc.returncode}"
        return None

    def _check_alive(self, deadline: float, timeout_s: float) -> None:
        gone = self._exited()
        if gone:
            raise WorkerFault(gone)
        if time.monotonic() > deadline:
            state = " (the process is stopped)" if self._stopped() else ""
            raise WorkerFault(f"worker stopped answering for {timeout_s:.0f} s{state}")

    def _stopped(self) -> bool:
        """Whether the worker process is stopped (SIGSTOP, a debugger); Linux only."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
        except (AttributeError, OSError, IndexError):
            return False

    def _wait(self, pending, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not pending.wait(0.005):
            self._check_alive(deadline, timeout_s)

    def _guarded(self, timeout_s: float | None):
        return lambda pending: self._wait(pending, timeout_s or self.timeout_s)

    def stall_timeout(self) -> float:
        """How long a round may take: worker_timeout, or 10x the slowest recent round if longer,
        so rounds slowed by a busy machine (or a big draft) are not taken for a stall."""
        slowest = max(self.recent_rounds, default=0.0)
        return max(self.timeout_s, STALL_FACTOR * slowest)

    def recv(self, tensor: torch.Tensor, timeout_s: float | None = None) -> torch.Tensor:
        return self.channel.recv(tensor, self._guarded(timeout_s))

    def recv_obj(self, timeout_s: float | None = None):
        return self.channel.recv_obj(self._guarded(timeout_s))

    # ---- rounds ---------------------------------------------------------------------------------

    def start_batch(self, seqs, capacity: int, options: dict, max_batch: int | None = None) -> Reply:
        """Open a session with these sequences; up to `max_batch` rows may take part at once."""
        self._max_batch = max(len(seqs), max_batch or 0)
        msg = {"cmd": "start", "seqs": _payload(seqs), "capacity": capacity, "max_batch": self._max_batch, **options}

        def exchange():
            self.channel.send_obj(msg, self._guarded(self.stall_timeout()))
            # The first reply includes the worker's start-up measurements and prefill.
            return self._receive_reply(len(seqs), max(self.stall_timeout(), 600.0))

        reply = self._guard(exchange)
        self.in_session = True
        return reply

    def round(self, keep: list[bool], outcomes: list[tuple[int, int]], verify_s: float, added=()) -> Reply:
        """keep: a flag per row the worker holds; outcomes of the kept rows, then of the `added`
        sequences, which join the session now (their trunks are sent after the outcomes)."""
        buf = encode_outcomes(self._max_batch, keep, outcomes, int(verify_s * 1e6), len(added))

        def exchange():
            start = time.monotonic()
            timeout_s = self.stall_timeout()
            self.channel.send(buf, self._guarded(timeout_s))
            if added:
                self.channel.send_obj({"seqs": _payload(added)}, self._guarded(timeout_s))
                # A join prefills on the worker before it answers.
                return self._receive_reply(len(outcomes), max(timeout_s, 600.0))
            reply = self._receive_reply(len(outcomes), timeout_s)
            self.recent_rounds.append(time.monotonic() - start)
            return reply

        return self._guard(exchange)

    def end_batch(self) -> None:
        if self.healthy and self.in_session:
            self._guard(lambda: self.channel.send(encode_end(self._max_batch), self._guarded(self.stall_timeout())))
        self.in_session = False

    def _receive_reply(self, rows: int, timeout_s: float) -> Reply:
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

    def _guard(self, fn):
        """Run one whole exchange (every message of it, or none usable): faults become
        WorkerFault; a Ctrl-C or SIGTERM is held until the exchange is complete (a held one
        wins over a fault, which then shows on the next call)."""
        if self.closed:
            raise WorkerFault("the draft worker was closed")
        if not self.in_sync:
            raise WorkerFault("an exchange with the draft worker was interrupted, so the link is out of step")
        with held_signals():
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
            except BaseException:  # a second Ctrl-C (or SIGTERM) mid-exchange: part of a message may be in flight
                self.healthy = self.in_sync = False
                raise

    def close(self) -> None:
        """Ask the worker to stop and wait for it; terminate it (SIGTERM, then SIGKILL) only if
        it does not stop in time or the link cannot carry the request. Safe to call twice."""
        if self.closed:
            return
        asked = False
        try:
            if self.healthy and self.in_sync:
                try:
                    self.end_batch()  # a worker in a session reads outcomes, not commands
                    self.channel.send_obj({"cmd": "shutdown"}, self._guarded(SHUTDOWN_GRACE_S))
                    asked = True
                except Exception as e:  # WorkerFault: it is gone or stuck; stopped below either way
                    log.debug("could not ask the draft worker to stop: %s", e)
        finally:
            self.closed = True
            self.healthy = False
            self._stop(asked)

    def _stop(self, asked: bool) -> None:
        if self.thread is not None:
            # A thread cannot be killed; it is a daemon and ends with the process.
            self.thread.join(SHUTDOWN_GRACE_S if asked else 0.5)
            if self.thread.is_alive():
                log.warning("the in-process draft worker did not stop; it ends with the process")
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        if asked:
            try:
                proc.wait(SHUTDOWN_GRACE_S)
                return
            except subprocess.TimeoutExpired:
                log.warning("the draft worker did not stop within %.0f s; terminating it", SHUTDOWN_GRACE_S)
        proc.terminate()
        try:
            os.kill(proc.pid, signal.SIGCONT)  # a stopped worker acts on SIGTERM only once continued
        except OSError:
            pass
        try:
            proc.wait(TERMINATE_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid
