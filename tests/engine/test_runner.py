"""A draft runner feeds tokens it cannot embed (a target's larger vocabulary) as token 0; a
target runner never hides such a token."""

import pytest
import torch

from saguaro.engine.runner import ModelRunner
from saguaro.loading.loader import load_model


@pytest.fixture(scope="module")
def decoder():
    return load_model("random:tiny", dtype="float32").decoder


def test_draft_runner_maps_foreign_tokens_to_zero(decoder):
    draft = ModelRunner(decoder, draft=True)
    vocab = draft.vocab_size
    a = draft.feed(draft.new_cache(1, 8), [[3, vocab + 7, 5]])
    b = draft.feed(draft.new_cache(1, 8), [[3, 0, 5]])
    assert torch.equal(a, b)


def test_target_runner_rejects_foreign_tokens(decoder):
    target = ModelRunner(decoder)
    with pytest.raises(IndexError):
        target.feed(target.new_cache(1, 8), [[3, target.vocab_size + 7]])
