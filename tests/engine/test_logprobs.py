"""Logprobs of the new tokens under the target's raw distribution, the same in every mode."""

import math

import pytest
import torch

from engine.test_engine import PROMPTS
from saguaro import InvalidRequestError, SamplingParams
from saguaro.engine.logprobs import round_logprobs
from saguaro.engine.runner import causal_mask


def test_round_logprobs_hand_checked():
    logits = torch.tensor([[[0.0, 1.0, 2.0, 0.5], [3.0, 0.0, 0.0, 0.0]],
                           [[1.0, 1.0, 1.0, 1.0], [9.0, 9.0, 9.0, 9.0]]])  # [R=2, W=2, vocab=4]
    got = round_logprobs(logits, [[1, 0], [2]], [2, 0])
    logp = torch.log_softmax(logits, dim=-1)
    assert [t.token_id for t in got[0]] == [1, 0] and [t.token_id for t in got[1]] == [2]
    assert got[0][0].logprob == pytest.approx(logp[0, 0, 1].item())
    assert got[0][1].logprob == pytest.approx(logp[0, 1, 0].item())
    assert [i for i, _ in got[0][0].top] == [2, 1] and got[0][0].top[0][1] == pytest.approx(logp[0, 0, 2].item())
    assert got[1][0].logprob == pytest.approx(math.log(0.25)) and got[1][0].top == []


def test_logprobs_validated():
    with pytest.raises(InvalidRequestError):
        SamplingParams(logprobs=21)
    with pytest.raises(InvalidRequestError):
        SamplingParams(logprobs=True)


MODES = [("ar", {}), ("sd", dict(k=3)), ("ssd", dict(k=2, fanout=2, backup="neural", ssd_worker="thread"))]


@pytest.mark.parametrize("mode, options", MODES, ids=["ar", "sd", "ssd-thread"])
@pytest.mark.parametrize("temperature", [0, 1.0])
def test_logprobs_are_the_targets_in_every_mode(engines, mode, options, temperature):
    """Each new token's logprob (and its top 3) equals what the target alone gives that trunk,
    whether the token was drafted and verified or sampled directly."""
    params = SamplingParams(temperature=temperature, max_tokens=12, ignore_eos=True, logprobs=3, seed=7)
    engine = engines(mode, max_batch=4, **options)
    outputs = {}
    engine.add_request(PROMPTS[0], params, request_id="a")
    engine.add_request(PROMPTS[2], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True), request_id="plain")
    while engine.has_unfinished():
        for out in engine.step():
            outputs.setdefault(out.request_id, []).append(out)
    assert all(o.logprobs is None for o in outputs["plain"])
    tokens = [t for o in outputs["a"] for t in o.new_token_ids]
    logprobs = [lp for o in outputs["a"] for lp in o.logprobs]
    assert [lp.token_id for lp in logprobs] == tokens and len(tokens) == 12
    # The reference: one target forward over prompt + tokens.
    target = engine.target.decoder
    ids = torch.tensor([PROMPTS[0] + tokens[:-1]])
    cache = target.new_cache(1, ids.shape[1])
    logits = target.forward(ids, torch.arange(ids.shape[1]).unsqueeze(0), cache, torch.arange(ids.shape[1]).unsqueeze(0),
                            causal_mask([0], ids.shape[1], ids.shape[1], "cpu"))
    want = torch.log_softmax(logits[0, len(PROMPTS[0]) - 1 :].float(), dim=-1)  # [12, vocab]
    for i, lp in enumerate(logprobs):
        assert lp.logprob == pytest.approx(want[i, tokens[i]].item(), abs=1e-4)
        top = want[i].topk(3)
        assert [t for t, _ in lp.top] == top.indices.tolist()
        assert [v for _, v in lp.top] == pytest.approx(top.values.tolist(), abs=1e-4)
        if temperature == 0:
            assert lp.top[0][0] == tokens[i]  # greedy takes the most likely token
