"""Property tests: whatever a caller passes, each public entry point either succeeds or raises a
SaguaroError (the CLI: status 0, or 2 with one `saguaro: error:` line), never another exception.

Bounded for CI: at most 150 examples per property, no deadline, tiny models; the whole file
runs in well under a minute.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings, strategies as st  # noqa: E402

from saguaro import Engine, SamplingParams  # noqa: E402
from saguaro.cli import main as cli  # noqa: E402
from saguaro.errors import SaguaroError  # noqa: E402

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Any text, lone surrogates included (what undecodable argv / stdin bytes become).
any_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()), max_size=12)
huge = st.sampled_from([10**400, -(10**400), 2**63, 2**64, -(2**63) - 1])
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-3, 300), huge, st.floats(allow_nan=True),
                    any_text, st.binary(max_size=4))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.tuples(inner),
                                                       st.dictionaries(any_text, inner, max_size=2)), max_leaves=6)


@pytest.fixture(scope="module")
def engine(tiny_folder, one_torch_thread):
    with Engine(tiny_folder, dtype="float32", max_batch=2, max_seq_len=48) as made:
        yield made


FIELDS = ("temperature", "top_k", "top_p", "max_tokens", "stop", "seed", "ignore_eos", "logprobs")


@FUZZ
@given(st.dictionaries(st.sampled_from(FIELDS), values, max_size=len(FIELDS)))
@example({"temperature": 10**400})  # beyond float: OverflowError once
@example({"stop": b"ab"})
def test_sampling_params_accept_or_refuse_clearly(fields):
    try:
        SamplingParams(**fields)
    except SaguaroError:
        pass


small_params = st.builds(SamplingParams, temperature=st.sampled_from([0.0, 1.0]), max_tokens=st.integers(1, 3),
                         seed=st.one_of(st.none(), st.integers()), ignore_eos=st.booleans(),
                         stop=st.lists(st.text(min_size=1, max_size=2), max_size=2),
                         logprobs=st.one_of(st.none(), st.integers(0, 3)))
ids = st.lists(st.one_of(st.integers(-2, 40), st.booleans(), st.integers()), max_size=6)
prompts = st.one_of(any_text, ids, st.lists(st.one_of(any_text, ids, values), max_size=3), values)


@FUZZ
@given(prompts, st.one_of(st.none(), small_params, values))
def test_llm_generate_accepts_or_refuses_clearly(tiny_llm, prompt, params):
    try:
        results = tiny_llm.generate(prompt, params)
    except SaguaroError:
        return
    assert all(isinstance(r.text, str) for r in results)


@FUZZ
@given(prompts, st.one_of(st.none(), small_params, values), st.one_of(st.none(), any_text, values))
@example("\ud800", None, None)  # a lone surrogate: TypeError from the tokenizer once
@example("hi", None, ["unhashable"])
def test_engine_add_request_accepts_or_refuses_clearly(engine, prompt, params, request_id):
    try:
        rid = engine.add_request(prompt, params, request_id)
    except SaguaroError:
        return
    while engine.has_unfinished():
        engine.step()
    assert engine.abort(rid) is False


# ---- the command line ---------------------------------------------------------------------------

FLAG_VALUES = {
    "--max-tokens": ["1", "3", "0", "-1", "x", "100000", "2.5"],
    "--temperature": ["0", "1", "-1", "nan", "inf", "x"],
    "--top-k": ["0", "-1", "-2", "5", "x"],
    "--top-p": ["0", "0.5", "1", "2", "nan"],
    "--seed": ["0", "-5", str(10**30), "x"],
    "--stop": ["a", "", "\udcff"],
    "--mode": ["ar", "sd", "bogus", ""],
    "--draft": ["ngram", "random:nope", "", "/no/such/folder"],
    "--k": ["1", "0", "17", "x"],
    "--dtype": ["float32", "float16", "bfloat16", "x", "auto"],
    "--device": ["cpu", "cuda", "tpu0", "", "cuda:x", "meta"],
    "--threads": ["1", "0", "-1", "x"],
    "--quantize-target": ["none", "int8", "bogus"],
    "--fanout": ["flat", "0", "x", "1,2"],
    "--backup": ["ngram", "bogus"],
    "--saguaro-c": ["0.5", "0", "2", "nan"],
    "--draft-head-tokens": ["0", "4", "x"],
    "--target-cores": ["0", "99", "x", "-1"],
}
SWITCHES = ["--json", "--chat", "--ignore-eos", "-v", "--static-shapes", "--no-static-shapes", "--bogus", "-h"]
flag = st.one_of(st.sampled_from(SWITCHES).map(lambda s: [s]),
                 st.sampled_from(sorted(FLAG_VALUES)).flatmap(
                     lambda f: st.one_of(st.sampled_from(FLAG_VALUES[f]), st.sampled_from(FLAG_VALUES[f]),
                                         any_text).map(lambda v: [f, v])))
plain_prompt = st.text(alphabet="abc .!", min_size=1, max_size=6).filter(lambda t: t.strip())


@FUZZ
@given(command=st.sampled_from(["generate", "generate", "chat", "nope"]),
       prompt_args=st.lists(st.one_of(plain_prompt, plain_prompt, any_text), max_size=2),
       flags=st.lists(flag, max_size=3),
       stdin=st.sampled_from(["hi\n/exit\n", "\n", "/help\n", "\udcff\n"]))
def test_cli_exits_0_or_2_with_one_error_line(tiny_folder, one_torch_thread, monkeypatch, command, prompt_args, flags,
                                              stdin):
    argv = [command, *prompt_args, *[part for f in flags for part in f]]
    if "--target" not in argv:
        argv += ["--target", tiny_folder, "--max-tokens", "2"]  # the later flag wins: a few tokens
    out, err = io.StringIO(), io.StringIO()
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    threads = torch.get_num_threads()
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(argv)
    finally:
        if cores:
            os.sched_setaffinity(0, cores)
        torch.set_num_threads(threads)
    text = err.getvalue()
    assert "Traceback" not in text + out.getvalue()
    assert code in (0, 2), (argv, text)
    hypothesis.event(f"exit {code}")
    if code == 2:
        errors = [line for line in text.splitlines() if line.startswith("saguaro: error:")]
        assert len(errors) == 1, (argv, text)
