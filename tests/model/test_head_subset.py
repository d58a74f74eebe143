import pytest
import torch

from saguaro.errors import InvalidRequestError
from saguaro.model.decoder import Linear
from saguaro.model.head_subset import CPU_DRAFT_HEAD_TOKENS, SubsetHead, draft_head_tokens, frequent_tokens
from saguaro.strategies import factory
from saguaro.strategies.factory import StrategyOptions


def test_the_default_keeps_32k_tokens_on_cpu_and_all_elsewhere():
    assert draft_head_tokens(None, "cpu") == CPU_DRAFT_HEAD_TOKENS == 32_768
    assert draft_head_tokens(None, torch.device("cpu")) == 32_768
    assert draft_head_tokens(None, "cuda:1") is None
    assert draft_head_tokens(0, "cpu") is None  # 0: the whole head
    assert draft_head_tokens(100, "cpu") == 100
    assert draft_head_tokens(100, "cuda") == 100


def test_options_take_zero_and_refuse_negatives():
    assert StrategyOptions(mode="sd", draft_head_tokens=0).draft_head_tokens == 0
    with pytest.raises(InvalidRequestError, match=">= 0"):
        StrategyOptions(mode="sd", draft_head_tokens=-1)


def test_frequent_tokens_are_the_first_ids_plus_the_special_ones():
    assert frequent_tokens(10, 4, {9, 2, 50}).tolist() == [0, 1, 2, 3, 9]
    assert frequent_tokens(3, 8, set()).tolist() == [0, 1, 2]


def test_a_subset_head_keeps_its_tokens_logits_and_masks_the_rest():
    torch.manual_seed(0)
    weight = torch.randn(10, 4)
    keep = torch.tensor([0, 1, 2, 7])
    x = torch.randn(2, 3, 4)
    out = SubsetHead(Linear(weight), keep, 10)(x)
    full = Linear(weight)(x)
    assert out.shape == full.shape
    torch.testing.assert_close(out[..., keep], full[..., keep])
    rest = torch.tensor([i for i in range(10) if i not in keep.tolist()])
    assert torch.isneginf(out[..., rest]).all()


class Built(Exception):
    pass


@pytest.mark.parametrize("requested, expected", [(None, 32_768), (0, None), (5, 5)])
def test_sd_loads_its_draft_with_the_resolved_head(monkeypatch, requested, expected):
    seen = {}

    def fake_load(ref, device, dtype, head_tokens, quantize, draft):
        seen.update(head_tokens=head_tokens, draft=draft)
        raise Built

    monkeypatch.setattr("saguaro.loading.loader.load_model", fake_load)
    with pytest.raises(Built):
        factory.build_strategy(StrategyOptions(mode="sd", draft_head_tokens=requested), None, None, "some-draft",
                               "cpu", torch.float32)
    assert seen == {"head_tokens": expected, "draft": True}


@pytest.mark.parametrize("draft_device, requested, expected",
                         [("cpu", None, 32_768), ("cuda:1", None, None), ("cpu", 0, None), ("cuda:1", 7, 7)])
def test_the_ssd_worker_gets_the_head_resolved_for_its_own_device(monkeypatch, draft_device, requested, expected):
    seen = {}

    def fake_client(config, timeout_s, in_process):
        seen.update(config)
        raise Built

    class Target:
        vocab_size = 100

    monkeypatch.setattr("saguaro.ssd.client.WorkerClient", fake_client)
    opts = StrategyOptions(mode="ssd", draft_head_tokens=requested, draft_device=draft_device, ssd_worker="process")
    with pytest.raises(Built):
        factory.build_strategy(opts, Target(), None, "some-draft", "cpu", torch.float32)
    assert seen["head_tokens"] == expected
    assert seen["device"] == draft_device
