"""The OpenAI-compatible server, live on a loopback port: the official `openai` client, exactness
against LLM.generate and `saguaro generate`, malformed input, disconnects and a bounded load test."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from live_server import MAX_BATCH, MAX_QUEUE, MODEL, SERVED, metric

import openai

PROMPT = "hello world"
GREEDY = dict(temperature=0, max_tokens=12)


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def llm():
    from saguaro import LLM

    with LLM(MODEL, dtype="float32", threads=1) as llm:
        yield llm


def settled(live, timeout: float = 10.0) -> None:
    """Wait until the server holds no request (the engine thread publishes its load each round)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if live.loop.in_flight == 0 and live.loop.running == 0 and live.loop.waiting == 0:
            return
        time.sleep(0.02)
    raise AssertionError(f"still in flight: {live.loop.in_flight}")


def metrics_page(live) -> str:
    return httpx.get(live.url + "/metrics").text


# ---- the openai client ---------------------------------------------------------------------------


def test_models_and_health(live, client):
    assert [m.id for m in client.models.list().data] == [SERVED]
    assert httpx.get(live.url + "/health").json() == {"status": "ready"}


def test_completion(client):
    r = client.completions.create(model=SERVED, prompt=PROMPT, max_tokens=5, temperature=0, extra_body={"ignore_eos": True})
    assert r.object == "text_completion" and r.model == SERVED
    [choice] = r.choices
    assert choice.finish_reason == "length" and choice.text
    assert r.usage.completion_tokens == 5 and r.usage.prompt_tokens == len(PROMPT)  # a character-level tokenizer
    assert r.usage.total_tokens == r.usage.prompt_tokens + 5


def test_logprobs(client):
    """Completions' legacy lists and chat's content entries, streamed or not: each token's
    logprob is the top alternative's when greedy, the tokens spell the text, and a stream
    carries the same figures as one reply."""
    common = dict(model=SERVED, max_tokens=6, temperature=0, extra_body={"ignore_eos": True})
    r = client.completions.create(prompt=PROMPT, logprobs=2, **common).choices[0]
    lp = r.logprobs
    assert "".join(lp.tokens) == r.text and len(lp.token_logprobs) == 6
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert value <= 0 and len(top) == 2 and top[token] == pytest.approx(value) == max(top.values())
    streamed = [c.choices[0].logprobs for c in client.completions.create(prompt=PROMPT, logprobs=2, stream=True, **common)
                if c.choices and c.choices[0].logprobs]
    assert [t for s in streamed for t in s.tokens] == lp.tokens
    assert [v for s in streamed for v in s.token_logprobs] == pytest.approx(lp.token_logprobs)
    assert [o for s in streamed for o in s.text_offset] == lp.text_offset

    chat = dict(messages=[{"role": "user", "content": "hi"}], logprobs=True, top_logprobs=3, **common)
    c = client.chat.completions.create(**chat).choices[0]
    content = c.logprobs.content
    assert "".join(e.token for e in content) == c.message.content and len(content) == 6
    for e in content:
        assert len(e.top_logprobs) == 3 and e.top_logprobs[0].logprob == pytest.approx(e.logprob)
        assert bytes(e.bytes).decode() == e.token
    plain = client.chat.completions.create(**dict(chat, logprobs=False, top_logprobs=None)).choices[0]
    assert plain.logprobs is None and plain.message.content == c.message.content


def test_greedy_matches_llm_and_cli(client, llm, capsys):
    from saguaro import SamplingParams
    from saguaro.cli import main as cli

    want = llm.generate(PROMPT, SamplingParams(**GREEDY))[0]
    got = client.completions.create(model=SERVED, prompt=PROMPT, **GREEDY).choices[0]
    assert got.text == want.text
    # The same prompt as token ids gives the same text.
    ids = llm.tokenizer.encode(PROMPT)
    assert client.completions.create(model=SERVED, prompt=ids, **GREEDY).choices[0].text == want.text
    # And so does the command line.
    code = cli.main(["generate", PROMPT, "--target", MODEL, "--dtype", "float32", "--threads", "1", "--mode", "ar",
                     "--temperature", "0", "--max-tokens", str(GREEDY["max_tokens"]), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out.splitlines()[0])["text"] == want.text


def test_chat_matches_llm_and_streams_with_usage(client, llm):
    from saguaro import SamplingParams

    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]
    want = llm.chat(messages, SamplingParams(**GREEDY))
    r = client.chat.completions.create(model=SERVED, messages=messages, **GREEDY)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == want.text
    assert r.usage.completion_tokens == len(want.token_ids)
    assert r.usage.prompt_tokens == len(want.prompt_token_ids)

    chunks = list(client.chat.completions.create(model=SERVED, messages=messages, stream=True,
                                                 stream_options={"include_usage": True}, **GREEDY))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == want.finish_reason.replace("eos", "stop")
    assert not chunks[-1].choices and chunks[-1].usage.completion_tokens == len(want.token_ids)
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # one chunk per round


def test_completion_stream_without_usage(client, llm):
    from saguaro import SamplingParams

    want = llm.generate(PROMPT, SamplingParams(**GREEDY))[0]
    chunks = list(client.completions.create(model=SERVED, prompt=PROMPT, stream=True, **GREEDY))
    assert "".join(c.choices[0].text for c in chunks) == want.text
    assert all(c.usage is None for c in chunks)


def test_seeds_reproduce_and_n_uses_seed_plus_i(client):
    args = dict(model=SERVED, prompt=PROMPT, max_tokens=10, temperature=1.0, extra_body={"ignore_eos": True})
    a = client.completions.create(seed=7, **args).choices[0].text
    assert client.completions.create(seed=7, **args).choices[0].text == a
    several = client.completions.create(seed=7, n=3, **args)
    assert [c.index for c in several.choices] == [0, 1, 2]
    assert several.choices[0].text == a
    assert several.choices[2].text == client.completions.create(seed=9, **args).choices[0].text
    assert len({c.text for c in several.choices}) > 1
    assert several.usage.completion_tokens == 30 and several.usage.prompt_tokens == len(PROMPT)


def test_chat_n_and_prompt_lists(client):
    r = client.chat.completions.create(model=SERVED, messages=[{"role": "user", "content": "x"}], n=2, max_tokens=3,
                                       extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == [0, 1] and r.usage.completion_tokens == 6
    r = client.completions.create(model=SERVED, prompt=["ab", "cde"], n=2, max_tokens=2, extra_body={"ignore_eos": True})
    assert len(r.choices) == 4 and r.usage.prompt_tokens == 5 and r.usage.completion_tokens == 8


def test_stop_string(client, llm):
    from saguaro import SamplingParams

    full = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))[0].text
    stop = full[4:7]
    r = client.completions.create(model=SERVED, prompt=PROMPT, temperature=0, max_tokens=12, stop=[stop],
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "stop" and r.choices[0].text == full[: full.index(stop)]


def test_openai_client_sees_errors(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=SERVED, prompt=PROMPT, temperature=-1)
    assert "temperature" in str(e.value)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt=PROMPT)


# ---- malformed requests --------------------------------------------------------------------------

LONG = "x" * 5000  # one token per character: past the 4096-token context
BAD = [
    ("/v1/completions", b"{not json", 400, None),
    ("/v1/completions", b"[1, 2]", 400, None),
    ("/v1/completions", {"max_tokens": 5}, 400, "prompt"),
    ("/v1/completions", {"prompt": 5}, 400, "prompt"),
    ("/v1/completions", {"prompt": []}, 400, "prompt"),
    ("/v1/completions", {"prompt": [1, "a"]}, 400, "prompt"),
    ("/v1/completions", {"prompt": ""}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "5"}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 1.5}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "temperature": -0.5}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {"prompt": "x", "top_p": 1.5}, 400, "top_p"),
    ("/v1/completions", {"prompt": "x", "top_k": -2}, 400, "top_k"),
    ("/v1/completions", {"prompt": "x", "n": 0}, 400, "n"),
    ("/v1/completions", {"prompt": "x", "n": 1000}, 400, "n"),
    ("/v1/completions", {"prompt": "x", "seed": "1"}, 400, "seed"),
    ("/v1/completions", {"prompt": "x", "stop": 5}, 400, "stop"),
    ("/v1/completions", {"prompt": "x", "stream": "yes"}, 400, "stream"),
    ("/v1/completions", {"prompt": "x", "stream_options": {"include_usage": True}}, 400, "stream_options"),
    ("/v1/completions", {"prompt": "x", "logprobs": 21}, 400, "logprobs"),
    ("/v1/completions", {"prompt": "x", "logprobs": True}, 400, "logprobs"),
    ("/v1/completions", {"prompt": "x", "echo": True}, 400, "echo"),
    ("/v1/completions", {"prompt": "x", "model": "nope"}, 404, "model"),
    ("/v1/completions", {"prompt": [1, 2, 100000]}, 400, "prompt"),
    ("/v1/completions", {"prompt": [1, -1]}, 400, "prompt"),
    ("/v1/completions", {"prompt": LONG}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 10**9}, 400, "prompt"),
    ("/v1/completions", {"prompt": ["a"] * 10, "n": 2}, 400, "n"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"messages": "hi"}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"content": "hi"}]}, 400, "messages.0.role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, "messages.0.content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
     "messages.0.content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "logprobs": 1}, 400, "logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, 400,
     "top_logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "logprobs": True,
                              "top_logprobs": 21}, 400, "top_logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]},
     400, "tools"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": LONG}]}, 400, "prompt"),
]


@pytest.mark.parametrize("path, body, status, param", BAD, ids=[f"{i}" for i in range(len(BAD))])
def test_malformed_requests_get_clean_errors(live, path, body, status, param):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(live.url + path, content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert "Traceback" not in r.text
    assert error["param"] == param, error


def test_unknown_routes_and_methods(live):
    r = httpx.get(live.url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["message"]
    r = httpx.get(live.url + "/v1/completions")
    assert r.status_code == 405 and r.json()["error"]["message"]


def test_server_survives_the_bad_requests(live, client):
    settled(live)
    assert httpx.get(live.url + "/health").status_code == 200
    assert client.completions.create(model=SERVED, prompt="ok", max_tokens=2).choices[0].text is not None


# ---- disconnects, load -------------------------------------------------------------------------


def test_disconnect_mid_stream_aborts(live):
    before = metric(metrics_page(live), "saguaro:request_aborted_total")
    body = {"prompt": PROMPT, "max_tokens": 2000, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=live.url) as c, c.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
    settled(live)  # well before 2000 tokens are done
    page = metrics_page(live)
    assert metric(page, "saguaro:request_aborted_total") == before + 1
    assert metric(page, "saguaro:num_requests_running") == 0
    assert metric(page, "saguaro:kv_cache_usage_perc") == 0


def test_disconnect_without_stream_aborts(live):
    before = metric(metrics_page(live), "saguaro:request_aborted_total")
    with pytest.raises(httpx.TimeoutException):
        httpx.post(live.url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 2000, "ignore_eos": True},
                   timeout=0.3)  # 2000 tokens take over a second
    settled(live)
    assert metric(metrics_page(live), "saguaro:request_aborted_total") == before + 1


def test_bounded_load(live):
    """48 requests from 16 clients at once, beyond max_batch + max_queue: each one completes or
    gets a clean 503 with Retry-After, and the server is healthy and idle afterwards."""
    total, concurrency = 48, 16
    results = []

    async def one(c: httpx.AsyncClient, i: int, gate: asyncio.Semaphore):
        async with gate:
            r = await c.post("/v1/completions", json={"prompt": f"load {i}", "max_tokens": 6, "ignore_eos": True,
                                                      "stream": i % 3 == 0})
            results.append(r)
            if r.status_code == 200 and i % 3 != 0:
                assert r.json()["usage"]["completion_tokens"] == 6

    async def main():
        gate = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(base_url=live.url, timeout=60) as c:
            await asyncio.gather(*(one(c, i, gate) for i in range(total)))

    before = metric(metrics_page(live), "saguaro:request_rejected_total")
    asyncio.run(main())
    codes = [r.status_code for r in results]
    assert set(codes) <= {200, 503} and codes.count(200) >= MAX_BATCH + MAX_QUEUE
    for r in results:
        if r.status_code == 503:
            assert r.headers["retry-after"] and r.json()["error"]["type"] == "server_overloaded"
        elif "text/event-stream" in r.headers["content-type"]:
            assert r.text.rstrip().endswith("data: [DONE]")
    settled(live)
    assert httpx.get(live.url + "/health").status_code == 200
    page = metrics_page(live)
    assert metric(page, "saguaro:request_rejected_total") == before + codes.count(503)
    assert metric(page, "saguaro:num_requests_waiting") == 0


def test_metrics_page(live):
    page = metrics_page(live)
    for name in ("saguaro:request_success_total", "saguaro:prompt_tokens_total", "saguaro:generation_tokens_total",
                 "saguaro:time_to_first_token_seconds_count", "saguaro:time_per_output_token_seconds_count",
                 "saguaro:e2e_request_latency_seconds_count"):
        assert metric(page, name) > 0, name
    assert metric(page, "saguaro:request_success_total", finished_reason="length") > 0
