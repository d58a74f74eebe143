"""SD and SSD through the server: greedy output equals AR's, and the speculation counters move."""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient

from live_server import metric
from saguaro.server.app import create_app

# Two random models sharing a bigram core, so drafts are sometimes accepted.
TARGET, DRAFT = "random:tiny:0:agree=0.1", "random:tiny:1:agree=0.1"
REQUEST = {"prompt": "hello world", "temperature": 0, "max_tokens": 16, "ignore_eos": True}


@pytest.fixture(scope="module")
def ar_text():
    from saguaro import LLM, SamplingParams

    with LLM(TARGET, dtype="float32", threads=1) as llm:
        return llm.generate(REQUEST["prompt"], SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))[0].text


@pytest.mark.parametrize("mode, options", [("sd", dict(k=3)), ("ssd", dict(k=2, fanout=1))], ids=["sd", "ssd"])
def test_speculative_modes_serve_ar_greedy_output(mode, options, ar_text):
    from saguaro import Engine

    engine = Engine(TARGET, DRAFT, mode, dtype="float32", threads=1, max_batch=2, **options)
    with TestClient(create_app(engine, model_name="spec")) as c:
        while c.get("/health").status_code != 200:
            time.sleep(0.01)
        r = c.post("/v1/completions", json={**REQUEST, "n": 2})
        assert r.status_code == 200, r.text
        assert [choice["text"] for choice in r.json()["choices"]] == [ar_text, ar_text]
        with c.stream("POST", "/v1/completions", json={**REQUEST, "stream": True}) as s:
            streamed = "".join(json.loads(line[6:])["choices"][0]["text"]
                               for line in s.iter_lines() if line.startswith("data: {"))
        assert streamed == ar_text
        page = c.get("/metrics").text
    assert metric(page, "saguaro:spec_decode_num_drafts_total") > 0
    drafted = metric(page, "saguaro:spec_decode_num_draft_tokens_total")
    accepted = metric(page, "saguaro:spec_decode_num_accepted_tokens_total")
    assert 0 < accepted < drafted
    assert metric(page, "saguaro:spec_decode_num_accepted_tokens_per_pos_total", position=0) > 0
    assert metric(page, "saguaro:spec_decode_num_accepted_tokens_per_pos_total") == accepted
    lookups = metric(page, "saguaro:ssd_cache_hits_total") + metric(page, "saguaro:ssd_cache_misses_total")
    assert (lookups > 0) == (mode == "ssd")
