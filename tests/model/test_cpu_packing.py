"""oneDNN packing runs only where the CPU supports it; each path is forced so both run on any CPU."""

import pytest
import torch

from saguaro.errors import UnsupportedEnvironmentError
from saguaro.loading.loader import load_model
from saguaro.model import cpu_packing
from saguaro.model.cpu_packing import KERNELS_ENV, PackedLinear, onednn_runs, pack_for_cpu
from saguaro.testing.random_model import write_random_model


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return str(write_random_model(tmp_path_factory.mktemp("pack") / "m", seed=3))


def _logits(decoder) -> torch.Tensor:
    tokens = torch.tensor([[1, 5, 9, 2]])
    positions = torch.arange(4).unsqueeze(0)
    cache = decoder.new_cache(1, 8)
    mask = torch.ones(4, 8, dtype=torch.bool).tril().unsqueeze(0)
    return decoder.forward(tokens, positions, cache, positions, mask).float()


def _packed_count(decoder) -> int:
    return sum(isinstance(l, PackedLinear) for l in decoder.linears())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_forced_onednn_matches_portable_or_says_why(folder, dtype, monkeypatch):
    monkeypatch.setenv(KERNELS_ENV, "portable")
    portable = load_model(folder, dtype=dtype).decoder
    assert _packed_count(portable) == 0
    monkeypatch.setenv(KERNELS_ENV, "onednn")
    if not onednn_runs(getattr(torch, dtype)):  # e.g. bf16 on an AVX2-only CPU
        with pytest.raises(UnsupportedEnvironmentError, match="auto"):
            load_model(folder, dtype=dtype)
        return
    packed = load_model(folder, dtype=dtype).decoder
    assert _packed_count(packed) == len(packed.linears())
    torch.testing.assert_close(_logits(packed), _logits(portable), rtol=1e-5, atol=1e-5)


def test_auto_packs_bf16_only_where_onednn_runs_it(folder, monkeypatch):
    monkeypatch.setenv(KERNELS_ENV, "auto")
    expected = len(load_model(folder, dtype="bfloat16").decoder.linears()) if onednn_runs(torch.bfloat16) else 0
    assert _packed_count(load_model(folder, dtype="bfloat16").decoder) == expected
    assert _packed_count(load_model(folder, dtype="float32").decoder) == 0


def test_cpu_without_bf16_support_falls_back_or_fails_in_one_line(folder, monkeypatch):
    """What an AVX2-only CPU sees, simulated on any CPU."""
    monkeypatch.setattr(cpu_packing, "onednn_runs", lambda dtype: False)
    monkeypatch.setenv(KERNELS_ENV, "auto")
    decoder = load_model(folder, dtype="bfloat16").decoder
    assert _packed_count(decoder) == 0
    assert torch.isfinite(_logits(decoder)).all()
    monkeypatch.setenv(KERNELS_ENV, "onednn")
    with pytest.raises(UnsupportedEnvironmentError) as err:
        pack_for_cpu(decoder)
    assert "\n" not in str(err.value)


def test_bad_kernel_choice_is_a_user_error(folder, monkeypatch):
    monkeypatch.setenv(KERNELS_ENV, "fastest")
    with pytest.raises(UnsupportedEnvironmentError, match="portable"):
        load_model(folder, dtype="float32")


def test_probe_reports_a_failing_kernel_as_unsupported(monkeypatch):
    def refuse(*args):
        raise RuntimeError("bf16 path needs the cpu support avx_ne_convert or avx512bw, avx512vl and avx512dq")

    onednn_runs.cache_clear()
    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", refuse)
    try:
        assert onednn_runs(torch.bfloat16) is False
    finally:
        onednn_runs.cache_clear()
