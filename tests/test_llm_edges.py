"""The Python API at its edges: every bad input is an InvalidRequestError (a SaguaroError), a
closed LLM says so, and calls from several threads are serialised. AR on a tiny random model;
the SSD-specific cases (worker link, threads on one SSD LLM) are in tests/ssd/test_worker_lifecycle.py.
"""

from __future__ import annotations

import threading

import pytest

from saguaro import LLM, Engine, SamplingParams
from saguaro.errors import ClosedError, InvalidRequestError, SaguaroError, UnsupportedEnvironmentError

FEW = SamplingParams(max_tokens=3, ignore_eos=True)


@pytest.mark.parametrize("kwargs, error", [
    (dict(target=None), InvalidRequestError),
    (dict(target=5), InvalidRequestError),
    (dict(target=""), InvalidRequestError),
    (dict(target="random:tiny", draft=3, mode="sd"), InvalidRequestError),
    (dict(target="random:tiny", device="tpu0"), InvalidRequestError),
    (dict(target="random:tiny", device="xla"), UnsupportedEnvironmentError),
    (dict(target="random:tiny", device=7), InvalidRequestError),
    (dict(target="random:tiny", threads="2"), InvalidRequestError),
    (dict(target="random:tiny", dtype=["float32"]), InvalidRequestError),
    (dict(target="random:tiny", mode=None), InvalidRequestError),
    (dict(target="random:tiny", worker_timeout="5"), InvalidRequestError),
])
def test_bad_constructor_arguments_fail_before_loading(kwargs, error):
    with pytest.raises(error):
        LLM(**kwargs)


@pytest.mark.parametrize("prompts", [
    5, None, 1.5, b"bytes", {"a": 1}, [[True, False]], [True, False], [[1, [2]]], [1.5], ["a", 3], [[]], [],
    "", "\ud800", "ok \udcff", [[-1]], [[10**30]],
])
def test_bad_prompts_are_invalid_requests(tiny_llm, prompts):
    with pytest.raises(InvalidRequestError):
        tiny_llm.generate(prompts, FEW)


@pytest.mark.parametrize("messages", [None, [], "hi", [{"role": "user"}], [{"role": "user", "content": 5}],
                                      [{"role": "user", "content": "\ud800"}], [5]])
def test_bad_chat_messages_are_invalid_requests(tiny_llm, messages):
    with pytest.raises(InvalidRequestError):
        tiny_llm.chat(messages, FEW)


def test_engine_add_request_and_abort_edges(tiny_folder, one_torch_thread):
    with Engine(tiny_folder, dtype="float32", max_batch=1, max_seq_len=32) as engine:
        for bad in (None, 5, "\ud800", [True], ["a"]):
            with pytest.raises(InvalidRequestError):
                engine.add_request(bad, FEW)
        for bad_id in ("", 5, ["x"]):
            with pytest.raises(InvalidRequestError):
                engine.add_request("hi", FEW, request_id=bad_id)
        with pytest.raises(InvalidRequestError):
            engine.add_request("hi", {"max_tokens": 3})
        assert engine.abort(["not", "hashable"]) is False and engine.abort(5) is False
        assert not engine.has_unfinished()
    with pytest.raises(ClosedError):
        engine.add_request("hi", FEW)
    with pytest.raises(ClosedError):
        engine.step()


def test_calls_after_close_raise_closed(tiny_folder, one_torch_thread):
    made = LLM(tiny_folder, dtype="float32")
    made.close()
    made.close()
    for call in (lambda: made.generate("hi", FEW), lambda: list(made.stream("hi", FEW)),
                 lambda: made.chat([{"role": "user", "content": "hi"}], FEW)):
        with pytest.raises(ClosedError):
            call()
    assert issubclass(ClosedError, SaguaroError)


def test_threads_are_serialised(tiny_llm):
    results, errors = [], []

    def work(seed):
        try:
            for i in range(3):
                results.append(tiny_llm.generate("hi", SamplingParams(max_tokens=4, seed=seed + i, ignore_eos=True))[0])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in (0, 10, 20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 9
    assert all(len(r.token_ids) == 4 for r in results)


def test_a_call_inside_an_open_stream_of_the_same_thread_is_refused_not_deadlocked(tiny_llm):
    stream = tiny_llm.stream("hi", SamplingParams(max_tokens=20, ignore_eos=True))
    next(stream)
    with pytest.raises(InvalidRequestError, match="already running"):
        tiny_llm.generate("hi", FEW)
    stream.close()  # releases the LLM
    assert tiny_llm.generate("hi", FEW)[0].token_ids
