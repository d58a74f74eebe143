"""SamplingParams: normalisation, validation and per-request generators."""

import dataclasses
import math

import pytest
import torch

from saguaro.errors import InvalidRequestError
from saguaro.sampling.params import SamplingParams


def test_defaults():
    p = SamplingParams()
    assert (p.temperature, p.top_k, p.top_p, p.max_tokens, p.stop, p.seed, p.ignore_eos) == (1.0, 0, 1.0, 128, (), None, False)
    assert not p.greedy
    assert SamplingParams(temperature=0).greedy


def test_stop_normalised_to_tuple():
    assert SamplingParams(stop="END").stop == ("END",)
    assert SamplingParams(stop=["a", "bc"]).stop == ("a", "bc")
    assert hash(SamplingParams(stop=["a"]))  # tuple keeps the frozen dataclass hashable


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SamplingParams().temperature = 0.5


@pytest.mark.parametrize("kwargs", [
    {"temperature": -0.1},
    {"temperature": math.inf},
    {"temperature": math.nan},
    {"temperature": "1"},
    {"top_k": -2},
    {"top_k": 1.5},
    {"top_k": True},
    {"top_p": 0.0},
    {"top_p": 1.01},
    {"top_p": math.nan},
    {"max_tokens": 0},
    {"max_tokens": 2.0},
    {"seed": 1.5},
    {"stop": [""]},
    {"stop": ["ok", 3]},
    {"stop": 5},
])
def test_invalid_values_raise(kwargs):
    with pytest.raises(InvalidRequestError) as err:
        SamplingParams(**kwargs)
    assert isinstance(err.value, ValueError)
    assert next(iter(kwargs)) in str(err.value)


def test_valid_edges():
    SamplingParams(temperature=0, top_k=-1, top_p=1.0, max_tokens=1, seed=-3)
    SamplingParams(top_k=5, top_p=1e-6, seed=0)


def test_seeded_generator_reproduces():
    a = SamplingParams(seed=123).make_generator()
    b = SamplingParams(seed=123).make_generator()
    c = SamplingParams(seed=124).make_generator()
    x = torch.rand(8, generator=a)
    assert torch.equal(x, torch.rand(8, generator=b))
    assert not torch.equal(x, torch.rand(8, generator=c))


def test_unseeded_generators_differ_and_global_rng_untouched():
    state = torch.get_rng_state()
    a = SamplingParams().make_generator()
    b = SamplingParams().make_generator()
    assert torch.equal(state, torch.get_rng_state())
    assert not torch.equal(torch.rand(8, generator=a), torch.rand(8, generator=b))
