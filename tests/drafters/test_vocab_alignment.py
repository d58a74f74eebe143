"""Draft and target with the same tokenizer but different embedding sizes (Qwen pads some models):
draft distributions are aligned to the target's vocabulary; different tokenizers are an error."""

import shutil

import pytest
import torch

from saguaro import LLM, SamplingParams
from saguaro.drafters.model_drafter import align_vocab
from saguaro.errors import InvalidRequestError
from saguaro.testing.random_model import write_random_model


def test_align_vocab_pads_and_truncates():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    padded = align_vocab(logits, 5)
    assert padded.shape == (1, 5) and torch.isinf(padded[0, 3:]).all()
    assert torch.softmax(padded, -1)[0, 3:].sum() == 0
    assert torch.equal(align_vocab(logits, 2), logits[:, :2])
    assert align_vocab(logits, 3) is logits


@pytest.mark.parametrize("draft_rows", [33, 40])
def test_padded_draft_embeddings(tmp_path, draft_rows):
    target = write_random_model(tmp_path / "t", seed=1, vocab=32)
    draft = write_random_model(tmp_path / "d", seed=2, vocab=draft_rows)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # same tokenizer, other row count
        shutil.copy(target / name, draft / name)
    greedy = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    sd = LLM(target=str(target), draft=str(draft), mode="sd", k=3, dtype="float32")
    ar = LLM(target=str(target), dtype="float32")
    assert sd.generate([[1, 2, 3]], greedy)[0].token_ids == ar.generate([[1, 2, 3]], greedy)[0].token_ids
    sampled = sd.generate([[1, 2, 3]], SamplingParams(temperature=1.0, seed=3, max_tokens=20, ignore_eos=True))
    assert all(0 <= t < 32 for t in sampled[0].token_ids)


def test_draft_that_cannot_embed_every_token_is_refused(tmp_path):
    target = write_random_model(tmp_path / "t", seed=1, vocab=32)
    draft = write_random_model(tmp_path / "d", seed=2, vocab=24)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(target / name, draft / name)
    with pytest.raises(InvalidRequestError, match="embeds 24"):
        LLM(target=str(target), draft=str(draft), mode="sd", dtype="float32")


def test_different_tokenizers_are_refused(tmp_path):
    target = write_random_model(tmp_path / "t", seed=1, vocab=32)
    draft = write_random_model(tmp_path / "d", seed=2, vocab=28)  # its own, smaller tokenizer
    with pytest.raises(InvalidRequestError, match="tokenizer"):
        LLM(target=str(target), draft=str(draft), mode="sd", dtype="float32")
