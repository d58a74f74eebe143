"""/v1/completions and /v1/chat/completions: OpenAI request in, engine requests out, OpenAI reply back.

Both share one path: check the body, turn it into prompts and SamplingParams (choice i of a
request with a seed samples with seed + i, so n choices differ yet the request is reproducible),
run a Job, and answer in one JSON body or as server-sent events, one chunk per engine round.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from saguaro.errors import InvalidRequestError
from saguaro.sampling.params import SamplingParams
from saguaro.server.jobs import Job, api_error
from saguaro.server.logprobs import chat_logprobs, completion_logprobs
from saguaro.server.loop import Unavailable
from saguaro.server.protocol import APIError, ChatRequest, CompletionRequest

router = APIRouter()
COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
CHAT_MAX_TOKENS = SamplingParams.max_tokens  # 128: OpenAI's "up to the context" is minutes on a CPU
CLIENT_CLOSED = 499  # nobody reads it; the status shows in the access log
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def completion_prompts(prompt) -> list:
    """A string, a list of token ids, or a non-empty list of either kind."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(_is_int(t) for t in prompt):
            return [prompt]
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(isinstance(p, list) and all(_is_int(t) for t in p) for p in prompt):
            return list(prompt)
    raise APIError(400, "prompt must be a string, a list of token ids, or a non-empty list of strings "
                        "or of token id lists", param="prompt")


def chat_prompt(tokenizer, body: ChatRequest) -> list[int]:
    """The conversation through the model's chat template, as LLM.chat_prompt renders it."""
    messages = []
    for i, m in enumerate(body.messages):
        content = m.content
        if content is None:
            content = ""
        elif isinstance(content, list):
            parts = []
            for part in content:
                if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                    raise APIError(400, f"messages[{i}].content: only text parts are supported",
                                   param=f"messages.{i}.content")
                parts.append(part["text"])
            content = "".join(parts)
        elif not isinstance(content, str):
            raise APIError(400, f"messages[{i}].content must be a string or a list of text parts",
                           param=f"messages.{i}.content")
        message = {"role": m.role, "content": content}
        if m.name is not None:
            message["name"] = m.name
        messages.append(message)
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


def sampling_params(body, max_tokens: int, count: int) -> list[SamplingParams]:
    """One SamplingParams per choice; raises InvalidRequestError (a 400) for bad values."""
    given = {name: getattr(body, name) for name in ("temperature", "top_p", "top_k", "stop", "seed")
             if getattr(body, name) is not None}
    base = SamplingParams(max_tokens=max_tokens, ignore_eos=body.ignore_eos, logprobs=body.logprob_count(), **given)
    if base.seed is None:
        return [base] * count
    return [dataclasses.replace(base, seed=base.seed + i) for i in range(count)]


def check_common(request: Request, body) -> None:
    unsupported = body.unsupported()
    if unsupported:
        raise APIError(400, f"{', '.join(unsupported)} not supported yet", param=unsupported[0],
                       code="unsupported_parameter")
    served = request.app.state.model_name
    if body.model is not None and body.model != served:
        raise APIError(404, f"the model {body.model!r} does not exist; this server serves {served!r}",
                       param="model", code="model_not_found")
    if body.stream_options is not None and not body.stream:
        raise APIError(400, "stream_options is only allowed with stream: true", param="stream_options")


async def _until_disconnected(request: Request) -> None:
    # The body is already read, so the next ASGI message is the client going away.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _collect(request: Request, job: Job) -> bool:
    """Run the job to the end; False if the client went away first (the job is then aborted)."""
    run = asyncio.ensure_future(job.run())
    gone = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait({run, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (run, gone):
            if not task.done():
                task.cancel()
        job.close()
    if run.done() and not run.cancelled():
        run.result()  # raises APIError for a failed choice
        return True
    return False


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _serve(request: Request, body, prompts: list, max_tokens: int, chat: bool):
    state = request.app.state
    n = body.n or 1
    if len(prompts) * n > state.loop.capacity:
        raise APIError(400, f"{len(prompts)} prompt(s) x n={n} exceeds the server's {state.loop.capacity} "
                            "requests in flight", param="n")
    try:
        params = sampling_params(body, max_tokens, len(prompts) * n)
    except InvalidRequestError as e:
        raise api_error(e) from None
    job = Job(state.loop, [p for p in prompts for _ in range(n)], params, state.metrics)
    await job.start()
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    head = {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": state.model_name}
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return StreamingResponse(_stream(job, head, chat, n, include_usage, _logprobs_formatter(request, body, chat)),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    if not await _collect(request, job):
        return Response(status_code=CLIENT_CLOSED)
    choices, logprobs = [], _logprobs_formatter(request, body, chat)
    for i, r in enumerate(job.results):
        text, reason = "".join(r["text"]), FINISH_REASONS.get(r["finish_reason"], r["finish_reason"])
        lp = logprobs(r["logprobs"], 0)
        if chat:
            choices.append({"index": i, "message": {"role": "assistant", "content": text}, "logprobs": lp,
                            "finish_reason": reason})
        else:
            choices.append({"index": i, "text": text, "logprobs": lp, "finish_reason": reason})
    return JSONResponse({**head, "choices": choices, "usage": job.usage(n)})


async def _stream(job: Job, head: dict, chat: bool, n: int, include_usage: bool, logprobs):
    """Server-sent events: a chunk per round and choice, then usage (if asked) and [DONE].

    A client that disconnects cancels this generator; `finally` then aborts its requests."""
    head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}
    extra = {"usage": None} if include_usage else {}
    offsets = [0] * len(job.subs)  # text sent so far per choice (completions' text_offset)

    def chunk(index, text, reason, first=False, items=None):
        lp = logprobs(items, offsets[index]) if items else None
        offsets[index] += len(text)
        if chat:
            delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
            choice = {"index": index, "delta": delta, "logprobs": lp, "finish_reason": reason}
        else:
            choice = {"index": index, "text": text, "logprobs": lp, "finish_reason": reason}
        return _sse({**head, "choices": [choice], **extra})

    try:
        if chat:
            for i in range(len(job.subs)):
                yield chunk(i, "", None, first=True)
        async for event in job.events():
            out = event.output
            if out.text or out.finished or out.logprobs:
                reason = FINISH_REASONS.get(out.finish_reason, out.finish_reason) if out.finished else None
                yield chunk(event.index, out.text, reason, items=out.logprobs)
        if include_usage:
            yield _sse({**head, "choices": [], "usage": job.usage(n)})
        yield "data: [DONE]\n\n"
    except APIError as e:  # the engine failed or the server shut down mid-stream: the status is sent already
        body = e.body()
        body["error"]["code"] = e.code or e.status
        yield _sse(body)
        yield "data: [DONE]\n\n"
    finally:
        job.close()


def _logprobs_formatter(request: Request, body, chat: bool):
    """(items, text offset) -> the reply's `logprobs` field: None unless the request asked."""
    if body.logprob_count() is None:
        return lambda items, offset: None
    tokenizer = request.app.state.loop.engine.tokenizer  # safe to share; the engine's methods are not
    if chat:
        return lambda items, offset: chat_logprobs(tokenizer, items)
    return lambda items, offset: completion_logprobs(tokenizer, items, offset)


@router.post("/v1/completions")
async def completions(request: Request, body: CompletionRequest):
    check_common(request, body)
    prompts = completion_prompts(body.prompt)
    max_tokens = body.max_tokens if body.max_tokens is not None else COMPLETION_MAX_TOKENS
    return await _serve(request, body, prompts, max_tokens, chat=False)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, body: ChatRequest):
    check_common(request, body)
    engine = request.app.state.loop.engine
    if engine is None:
        raise api_error(Unavailable("the model is not loaded yet"))
    tokenizer = engine.tokenizer  # the tokenizer is safe to share; the engine's methods are not
    try:
        prompt = chat_prompt(tokenizer, body)
    except InvalidRequestError as e:
        raise APIError(400, str(e), param="messages") from None
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    return await _serve(request, body, [prompt], max_tokens if max_tokens is not None else CHAT_MAX_TOKENS,
                        chat=True)
