"""The engine thread: the only thread that ever calls the Engine, which is not thread-safe.

HTTP handlers run on the asyncio event loop. They hand requests to this thread through a
locked inbox (`submit`, `abort`) and never touch the Engine themselves. The thread drains the
inbox between rounds, calls `step()` while any request is unfinished and otherwise sleeps on the
inbox, so an idle server costs no CPU. Each step's outputs go back to the submitting handler's
asyncio.Queue through `call_soon_threadsafe`, the one safe way into an event loop from another
thread.

Events a handler receives, per choice index: `Accepted` once the engine queued the request (bad
input gives `Failed` instead, with the engine's InvalidRequestError), then `Output`s until one is
finished, or `Failed` if the engine broke or the server shut down first.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from saguaro.errors import InvalidRequestError
from saguaro.sampling.params import SamplingParams

log = logging.getLogger(__name__)

IDLE_WAKE_S = 1.0  # an idle thread still wakes now and then, so a lost wakeup cannot wedge it


class Unavailable(Exception):
    """The server cannot take this request now (loading, shutting down, broken engine): 503."""


class QueueFull(Unavailable):
    """Too many requests are already waiting: 503 with Retry-After."""


class EngineFailure(Exception):
    """The engine raised inside step(); every request in flight fails with it: 500."""


@dataclass
class Accepted:
    index: int


@dataclass
class Output:
    index: int
    output: Any  # saguaro.engine.engine.RequestOutput


@dataclass
class Failed:
    index: int
    error: Exception


@dataclass
class Submission:
    """One engine request (one choice of one prompt) and where its events go."""

    request_id: str
    prompt: str | list[int]
    params: SamplingParams
    index: int
    queue: asyncio.Queue
    aloop: asyncio.AbstractEventLoop
    arrival: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    tokens: int = 0


class EngineLoop:
    """Owns the Engine on a thread of its own; see the module docstring.

    `engine_factory` runs on that thread (loading can take a while, and the server answers
    /health with 503 meanwhile). `max_queue`: requests that may wait for a KV row; `submit`
    raises QueueFull when the engine's rows (max_batch) and the queue are all taken. `on_fatal(error)` is called on the thread if loading fails.
    """

    def __init__(self, engine_factory: Callable[[], Any], max_queue: int, metrics=None,
                 on_fatal: Callable[[BaseException], None] | None = None):
        self._factory = engine_factory
        self.max_queue = max_queue
        self.capacity = max_queue  # plus the engine's max_batch once it is loaded
        self.metrics = metrics
        self._on_fatal = on_fatal
        self._cond = threading.Condition()
        self._inbox: deque[tuple] = deque()
        self._in_flight = 0  # submitted and not yet finished, aborted or failed (guarded by _cond)
        self._pending_adds = 0  # submitted but not yet given to the engine (guarded by _cond)
        self._subs: dict[str, Submission] = {}  # engine thread only
        self._thread: threading.Thread | None = None
        self.engine = None
        self.state = "loading"  # loading -> ready -> stopped, or failed; `draining` stops admission
        self.draining = False
        self.broken = False
        self.load_error: BaseException | None = None
        self.ready = threading.Event()
        self.stopped = threading.Event()
        self.running = self.waiting = 0  # last published by the engine thread

    # ---- any thread ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="saguaro-engine", daemon=True)
        self._thread.start()

    def submit(self, subs: list[Submission]) -> None:
        """Queue requests for the engine, all or none; raises Unavailable or QueueFull."""
        with self._cond:
            if self.state != "ready" or self.draining or self.broken:
                reason = ("the engine failed; restart the server" if self.broken
                          else "the server is shutting down" if self.draining or self.state == "stopped"
                          else "the model is still loading" if self.state == "loading"
                          else "the model failed to load")
                raise Unavailable(reason)
            if self._in_flight + len(subs) > self.capacity:
                raise QueueFull(f"the server is busy ({self._in_flight} requests in flight, at most "
                                f"{self.capacity}); retry later")
            self._in_flight += len(subs)
            self._pending_adds += len(subs)
            self._inbox.append(("add", subs))
            self._cond.notify()

    def abort(self, request_ids: list[str]) -> None:
        """Drop these requests (the ones still unfinished); safe to call for finished ones."""
        with self._cond:
            self._inbox.append(("abort", list(request_ids)))
            self._cond.notify()

    def drain(self) -> None:
        """Refuse new requests from now on; those in flight carry on."""
        with self._cond:
            self.draining = True

    def stop(self, timeout: float) -> None:
        """Stop admission, let requests in flight finish for up to `timeout` seconds, abort the
        rest, close the engine and end the thread."""
        with self._cond:
            self.draining = True
            self._inbox.append(("stop", time.perf_counter() + max(0.0, timeout)))
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout + 30)
            if self._thread.is_alive():
                log.error("the engine thread did not stop within %.0f s", timeout + 30)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # ---- the engine thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            engine = self._factory()
        except BaseException as e:  # noqa: BLE001 - reported to the server, which exits or shows 503
            log.error("loading the model failed: %s", e)
            self.load_error = e
            self.state = "failed"
            self.stopped.set()
            if self._on_fatal is not None:
                self._on_fatal(e)
            return
        self.engine = engine
        self.capacity = getattr(engine, "max_batch", 1) + self.max_queue
        self.state = "ready"
        self.ready.set()
        log.info("engine ready (max batch %d, %d tokens per sequence)",
                 getattr(engine, "max_batch", 0), getattr(engine, "max_seq_len", 0))
        try:
            self._serve(engine)
        except BaseException:
            log.exception("the engine thread crashed")
            self.broken = True
            self._fail_all(EngineFailure("the engine thread crashed"))
        finally:
            try:
                engine.close()
            except Exception:
                log.exception("closing the engine failed")
            self.state = "stopped"
            self.stopped.set()
            log.info("engine closed")

    def _take(self, wait: bool) -> list[tuple]:
        with self._cond:
            if wait and not self._inbox:
                self._cond.wait(IDLE_WAKE_S)
            commands = list(self._inbox)
            self._inbox.clear()
            return commands

    def _serve(self, engine) -> None:
        deadline = None
        while True:
            idle = self.broken or not engine.has_unfinished()
            for command in self._take(wait=idle and deadline is None):
                if command[0] == "add":
                    self._add(engine, command[1])
                elif command[0] == "abort":
                    self._abort(engine, command[1], self.metrics.aborted if self.metrics else None)
                else:
                    deadline = command[1] if deadline is None else min(deadline, command[1])
            if deadline is not None and (not self._subs or time.perf_counter() >= deadline):
                if self._subs:
                    log.warning("shutdown: aborting %d unfinished request(s)", len(self._subs))
                    self._fail_all(Unavailable("the server shut down before the request finished"),
                                   abort=engine.abort)
                return
            if not self.broken and engine.has_unfinished():
                self._step(engine)
            self._publish(engine)

    def _add(self, engine, subs: list[Submission]) -> None:
        for sub in subs:
            with self._cond:
                self._pending_adds -= 1
            try:
                engine.add_request(sub.prompt, sub.params, request_id=sub.request_id)
            except Exception as e:
                if not isinstance(e, InvalidRequestError):
                    log.exception("add_request failed")
                self._release(1)
                self._deliver(sub, Failed(sub.index, e))
                continue
            self._subs[sub.request_id] = sub
            self._deliver(sub, Accepted(sub.index))

    def _abort(self, engine, request_ids: list[str], count) -> None:
        n = 0
        for rid in request_ids:
            if self._subs.pop(rid, None) is None:
                continue  # finished already, or never accepted
            n += 1
            try:
                engine.abort(rid)
            except Exception:
                log.exception("aborting %s failed", rid)
        if n:
            self._release(n)
            log.info("aborted %d request(s)", n)
            if count is not None:
                count(n)

    def _step(self, engine) -> None:
        try:
            outputs = engine.step()
        except Exception as e:
            log.exception("engine step failed; failing %d request(s)", len(self._subs))
            self._fail_all(EngineFailure(f"the engine failed: {type(e).__name__}: {e}"), abort=engine.abort,
                           count=self.metrics.failed if self.metrics else None)
            try:
                self.broken = engine.has_unfinished()
            except Exception:
                self.broken = True
            if self.broken:
                log.error("the engine still holds requests after the failure; refusing new ones")
            return
        now = time.perf_counter()
        m = self.metrics
        for out in outputs:
            sub = self._subs.get(out.request_id)
            if sub is None:
                continue
            if out.new_token_ids:
                if sub.first_token is None:
                    sub.first_token = now
                    if m:
                        m.first_token(now - sub.arrival)
                sub.tokens += len(out.new_token_ids)
                if m:
                    m.tokens_generated(len(out.new_token_ids))
            if out.finished:
                del self._subs[out.request_id]
                self._release(1)
                if m:
                    first = sub.first_token if sub.first_token is not None else now
                    m.finished(out.finish_reason or "unknown", out.metrics, now - sub.arrival, now - first,
                               sub.tokens)
            self._deliver(sub, Output(sub.index, out))

    def _fail_all(self, error: Exception, abort=None, count=None) -> None:
        subs, self._subs = list(self._subs.values()), {}
        for sub in subs:
            if abort is not None:
                try:
                    abort(sub.request_id)
                except Exception:
                    pass  # the engine is already in trouble; the request is failed either way
            self._deliver(sub, Failed(sub.index, error))
        if subs:
            self._release(len(subs))
            if count is not None:
                count(len(subs))
            elif self.metrics is not None and isinstance(error, Unavailable):
                self.metrics.aborted(len(subs))

    def _publish(self, engine) -> None:
        try:
            running = len(engine.running) + len(engine.prefilling)
            waiting = len(engine.waiting)
            kv = engine.cache.batch / engine.max_batch if engine.max_batch else 0.0
        except Exception:  # a stand-in engine (tests) need not have these
            return
        with self._cond:
            waiting += self._pending_adds
        self.running, self.waiting = running, waiting
        if self.metrics is not None:
            self.metrics.load(running, waiting, kv)

    def _release(self, n: int) -> None:
        with self._cond:
            self._in_flight -= n

    @staticmethod
    def _deliver(sub: Submission, event) -> None:
        try:
            sub.aloop.call_soon_threadsafe(sub.queue.put_nowait, event)
        except RuntimeError:
            pass  # the event loop is gone (server stopped); nobody is listening
