"""One HTTP request's engine requests (its prompts times `n` choices), seen from the event loop.

A Job submits every choice at once, waits until the engine accepted all of them (so a bad prompt
is a 400 before any byte of a 200 stream is sent), then yields their outputs. `close()` aborts
whatever is unfinished: it runs in a `finally`, so a client that disconnects, or a handler that
is cancelled, always frees its KV rows.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import AsyncIterator

from saguaro.errors import InvalidRequestError
from saguaro.sampling.params import SamplingParams
from saguaro.server.loop import Accepted, EngineFailure, EngineLoop, Failed, Output, QueueFull, Submission, Unavailable
from saguaro.server.protocol import APIError

RETRY_AFTER_S = 1
PARAM_NAMES = ("temperature", "top_k", "top_p", "max_tokens", "seed", "stop", "ignore_eos", "logprobs")


def api_error(error: BaseException) -> APIError:
    """The HTTP answer for an error raised by the engine, the loop or SamplingParams."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, InvalidRequestError):
        return APIError(400, str(error), param=_param_of(str(error)))
    if isinstance(error, QueueFull):
        return APIError(503, str(error), "server_overloaded", code="queue_full",
                        headers={"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(error, Unavailable):
        return APIError(503, str(error), "service_unavailable", headers={"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(error, EngineFailure):
        return APIError(500, str(error), "server_error", code="engine_failure")
    return APIError(500, f"internal error: {type(error).__name__}", "server_error")


def _param_of(message: str) -> str | None:
    # SamplingParams and the engine start their messages with what was wrong.
    first = message.split(" ", 1)[0]
    if first in PARAM_NAMES:
        return first
    if first == "prompt" or message.startswith(("token ids", "the prompt", "a prompt")):
        return "prompt"
    return None


class Job:
    def __init__(self, loop: EngineLoop, prompts: list, params: list[SamplingParams], metrics=None):
        self.loop, self.metrics = loop, metrics
        self.queue: asyncio.Queue = asyncio.Queue()
        aloop = asyncio.get_running_loop()
        self.subs = [Submission(uuid.uuid4().hex, p, sp, i, self.queue, aloop)
                     for i, (p, sp) in enumerate(zip(prompts, params))]
        self.done: set[int] = set()
        self.results: list[dict] = [{"text": [], "finish_reason": None, "metrics": None, "tokens": 0, "logprobs": []}
                                    for _ in self.subs]

    async def start(self) -> None:
        """Submit every choice; returns once all are accepted, raises APIError otherwise."""
        try:
            self.loop.submit(self.subs)
        except QueueFull as e:
            if self.metrics is not None:
                self.metrics.rejected(len(self.subs))
            raise api_error(e) from None
        except Unavailable as e:
            raise api_error(e) from None
        try:
            waiting, error = set(range(len(self.subs))), None
            while waiting:
                event = await self.queue.get()
                waiting.discard(event.index)
                if isinstance(event, Failed):
                    self.done.add(event.index)
                    error = error or event.error
            if error is not None:
                raise api_error(error)
        except BaseException:
            self.close()
            raise

    async def events(self) -> AsyncIterator[Output]:
        """Outputs until every choice finished; a failed choice raises APIError."""
        while len(self.done) < len(self.subs):
            event = await self.queue.get()
            if isinstance(event, Failed):
                self.done.add(event.index)
                raise api_error(event.error)
            if isinstance(event, Accepted):
                continue
            out = event.output
            result = self.results[event.index]
            result["text"].append(out.text)
            result["tokens"] += len(out.new_token_ids)
            result["logprobs"] += out.logprobs or []
            if out.finished:
                self.done.add(event.index)
                result["finish_reason"], result["metrics"] = out.finish_reason, out.metrics
            yield event

    async def run(self) -> None:
        async for _ in self.events():
            pass

    def close(self) -> None:
        unfinished = [s.request_id for s in self.subs if s.index not in self.done]
        if unfinished:
            self.loop.abort(unfinished)
            self.done.update(range(len(self.subs)))

    def usage(self, choices_per_prompt: int) -> dict:
        """OpenAI's usage: each prompt counted once (not once per choice), every choice's tokens."""
        prompt = completion = 0
        for i, r in enumerate(self.results):
            m = r["metrics"]
            completion += m.decode_tokens if m is not None else r["tokens"]
            if i % choices_per_prompt == 0 and m is not None:
                prompt += m.prompt_tokens
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
