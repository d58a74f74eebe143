"""Saguaro's native quantized kernels: x·Wᵀ on their codes up to the int8 rounding of x, each row
independent of the batch bit for bit, and the choice between them and PyTorch's kernels."""

import logging
import os
import subprocess
import sys

import pytest
import torch

from saguaro.errors import UnsupportedEnvironmentError
from saguaro.loading.loader import load_model
from saguaro.quant import native as native_choice
from saguaro.quant.grids import Int4Grid, Int6Grid, grid_from_float
from saguaro.quant.linear import Int4Linear, Int8Linear
from saguaro.quant.native import build
from saguaro.quant.native.linear import NativeInt4Linear, NativeInt6Linear, NativeInt8Linear, int8_blocks
from saguaro.quant.transform import quantize_decoder
from saguaro.testing.random_model import write_random_model

G = torch.Generator().manual_seed(0)
ENV = native_choice.KERNELS_ENV


@pytest.fixture(scope="module", autouse=True)
def kernels():
    assert build.load_kernels(), "Saguaro's CPU kernels must build here (a C++ compiler and ninja)"


def blocks(t: torch.Tensor) -> torch.Tensor:
    """[..., in] → [..., in / 32, 32]"""
    return t.reshape(*t.shape[:-1], -1, 32)


def int4_weight(grid) -> torch.Tensor:
    """The weight the kernel multiplies by: the grid with its scale and min rounded to fp16."""
    scale = grid.scale.half().float()
    low = (grid.offset - 8 * grid.scale).half().float()
    return (blocks(grid.q.float()) * scale.unsqueeze(-1) + low.unsqueeze(-1)).reshape(grid.shape)


def int8_weight(w: torch.Tensor) -> torch.Tensor:
    q, scale = int8_blocks(w)
    return (blocks(q.float()) * scale.float().unsqueeze(-1)).reshape(w.shape)


def int6_grid(out: int, inp: int) -> Int6Grid:
    """A Q6_K-like grid: codes over the whole 0..63, signed scales per 16 columns."""
    q = torch.randint(0, 64, (out, inp), generator=G, dtype=torch.uint8)
    return Int6Grid(q, torch.randn(out, inp // 16, generator=G) * 0.01)


def int6_weight(grid: Int6Grid) -> torch.Tensor:
    return (grid.q.float() - 32) * grid.scale.half().float().repeat_interleave(16, dim=1)


def rounding_bound(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """[M, out] bound on |x·wᵀ − x_q·wᵀ| from rounding x to int8 per block: each x is off by at
    most half its block's step max|x| / 127."""
    half_step = blocks(x).abs().amax(-1) / 254  # [M, in / 32]
    return half_step @ blocks(w).abs().sum(-1).t()


def check_close(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None):
    ref = x.float() @ w.t() + (0 if bias is None else bias)
    slack = 1e-5 * (x.float().abs() @ w.abs().t()) + 1e-6  # fp32 sums
    if y.dtype == torch.bfloat16:
        slack = slack + ref.abs() * 2 ** -8  # the output's own rounding
    assert bool(((y.float() - ref).abs() <= rounding_bound(x.float(), w) + slack).all())


def int8_activations(x: torch.Tensor) -> torch.Tensor:
    """x rounded as the kernel rounds it: per block of 32, to d · round(x · 127 / max|x|)."""
    b = blocks(x.float())
    amax = b.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, 127 / amax, torch.zeros_like(amax))
    return (torch.round(b * inv) * (amax / 127)).reshape(x.shape)


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_the_kernel_is_exact_integer_math_up_to_fp32_sums(bits):
    """Against the rounded activations themselves: any difference in rounding would show."""
    w = torch.randn(33, 1056, generator=G)
    grid = grid_from_float(w, 32)
    six = int6_grid(33, 1056)
    lin = {4: lambda: NativeInt4Linear(grid, torch.float32), 6: lambda: NativeInt6Linear(six, torch.float32),
           8: lambda: NativeInt8Linear(w, torch.float32)}[bits]()
    weight = {4: int4_weight(grid), 6: int6_weight(six), 8: int8_weight(w)}[bits]
    x = torch.randn(6, 1056, generator=G) * torch.rand(6, 1056, generator=G)
    xq = int8_activations(x).double()
    err = (lin(x).double() - xq @ weight.double().t()).abs()
    assert bool((err <= 1e-5 * (xq.abs() @ weight.double().abs().t()) + 1e-6).all())


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_the_largest_codes_against_full_scale_activations_do_not_overflow(bits):
    """Every code at its extreme and every activation code at ±127 (rows of ±1 round to codes
    ±127 with d = 1 / 127): the AVX2 path sums several byte-pair products in int16 before
    widening, which holds only inside these bounds. An overflow would put the integer sum off
    by a multiple of 65,536."""
    out, inp = 24, 256
    signs = torch.where(torch.rand(out, inp, generator=G) < 0.5, -1.0, 1.0)
    if bits == 4:  # codes 0 and 15, scale 1, min -8 (w = q - 8: -8 and 7)
        q = torch.where(signs > 0, 15, 0).to(torch.uint8)
        grid = Int4Grid(q, torch.ones(out, inp // 32), torch.zeros(out, inp // 32), 32)
        lin, weight = NativeInt4Linear(grid, torch.float32), q.float() - 8
    elif bits == 6:  # codes 0 and 63 (w = -32 and 31)
        grid = Int6Grid(torch.where(signs > 0, 63, 0).to(torch.uint8), torch.ones(out, inp // 16))
        lin, weight = NativeInt6Linear(grid, torch.float32), grid.dequantize()
    else:  # ±127 codes, scale 1
        weight = signs * 127
        lin = NativeInt8Linear(weight, torch.float32)
    x = torch.tensor([[1.0] * inp, [-1.0] * inp, [1.0, -1.0] * (inp // 2), [1.0] * (inp // 2) + [-1.0] * (inp // 2)])
    expected = x.double() @ weight.double().t()
    assert torch.allclose(lin(x).double(), expected, rtol=1e-6, atol=1e-4)
    assert torch.allclose(lin(x * 3.0).double(), 3 * expected, rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("out", [40, 17, 1])
@pytest.mark.parametrize("inp", [96, 512, 1568])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int4_is_its_grid_up_to_activation_rounding(out, inp, dtype):
    grid = grid_from_float(torch.randn(out, inp, generator=G), 32)
    bias = torch.randn(out, generator=G)
    lin = NativeInt4Linear(grid, dtype, bias)
    x = torch.randn(2, 3, inp, generator=G).to(dtype)
    y = lin(x)
    assert y.shape == (2, 3, out) and y.dtype == dtype
    check_close(y.reshape(6, out), x.reshape(6, inp), int4_weight(grid), bias.to(dtype).float())


def test_int4_reads_a_q4_k_style_grid_exactly_but_for_fp16():
    """Offsets far from the codes' middle (Q4_K mins) and tiny scales, as GGUF files have."""
    w = torch.randn(24, 256, generator=G) * 0.02 + 0.05
    grid = grid_from_float(w, 32)
    x = torch.randn(4, 256, generator=G)
    check_close(NativeInt4Linear(grid, torch.float32)(x), x, int4_weight(grid))
    assert (int4_weight(grid) - grid.dequantize()).abs().max() < 1e-3 * w.abs().max()


@pytest.mark.parametrize("out", [40, 1])
@pytest.mark.parametrize("inp", [96, 1568])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int6_is_its_grid_up_to_activation_rounding(out, inp, dtype):
    grid = int6_grid(out, inp)
    bias = torch.randn(out, generator=G)
    x = torch.randn(3, inp, generator=G).to(dtype)
    check_close(NativeInt6Linear(grid, dtype, bias)(x), x, int6_weight(grid), bias.to(dtype).float())
    assert (int6_weight(grid) - grid.dequantize()).abs().max() <= 2 ** -11 * grid.dequantize().abs().max()


def test_int6_refuses_scales_fp16_cannot_hold():
    grid = int6_grid(4, 64)
    grid.scale[1, 2] = 1e6
    with pytest.raises(ValueError, match="fp16"):
        NativeInt6Linear(grid, torch.float32)


@pytest.mark.parametrize("out", [40, 17])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_is_close_to_the_float_weight(out, dtype):
    w = torch.randn(out, 256, generator=G)
    lin = NativeInt8Linear(w, dtype)
    x = torch.randn(5, 256, generator=G).to(dtype)
    check_close(lin(x), x, int8_weight(w))
    step = blocks(w).abs().amax(-1) / 127  # per block of 32: finer than per channel
    scale = int8_blocks(w)[1].float()  # the step rounded to fp16; the largest code may clamp at 127
    half = scale / 2 + 127 * (scale - step).abs()
    assert bool(((int8_weight(w) - w).abs() <= half.repeat_interleave(32, 1) + 1e-7).all())
    per_channel = w.abs().amax(1, keepdim=True) / 127
    assert bool((step <= per_channel + 1e-7).all())


@pytest.mark.parametrize("make", [lambda w, d: NativeInt4Linear(grid_from_float(w, 32), d), NativeInt8Linear,
                                  lambda w, d: NativeInt6Linear(int6_grid(*w.shape), d)], ids=["int4", "int8", "int6"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_do_not_depend_on_the_batch(make, dtype):
    """What keeps a K + 1 token verify equal to one-token decodes, bit for bit: any batch size,
    any row's place in the kernel's tiles of 4 rows."""
    lin = make(torch.randn(37, 640, generator=G), dtype)
    x = torch.randn(13, 640, generator=G).to(dtype)
    full = lin(x)
    for m in (1, 2, 3, 5, 9):
        assert torch.equal(lin(x[:m]), full[:m])
    for row in (6, 11, 12):
        assert torch.equal(lin(x[row:row + 1]), full[row:row + 1])


def test_zero_rows_and_columns_give_zero():
    lin = NativeInt8Linear(torch.zeros(8, 128), torch.float32)
    assert torch.equal(lin(torch.randn(3, 128, generator=G)), torch.zeros(3, 8))
    assert torch.equal(NativeInt4Linear(grid_from_float(torch.randn(8, 128), 32), torch.float32)(
        torch.zeros(2, 128)), torch.zeros(2, 8))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Hidden 128 (a chunk of 16 blocks is 512 columns: every matrix here has a partial one)."""
    return str(write_random_model(tmp_path_factory.mktemp("native") / "m", seed=3, vocab=48, hidden=128,
                                  intermediate=256, heads=2, kv_heads=1))


def kinds(decoder) -> dict[str, type]:
    layer = decoder.layers[0]
    return {name: type(getattr(layer, name)) for name in ("qkv", "o", "gate_up", "down")} | {
        "head": type(decoder.lm_head)}


def logits(decoder) -> torch.Tensor:
    tokens = torch.tensor([[1, 5, 9, 2, 7]])
    positions = torch.arange(5).unsqueeze(0)
    mask = torch.ones(5, 5, dtype=torch.bool).tril().unsqueeze(0)
    return decoder.forward(tokens, positions, decoder.new_cache(1, 5), positions, mask).float()


@pytest.mark.parametrize("env", ["auto", "native"])
def test_the_transform_picks_native_kernels_where_they_build(folder, monkeypatch, env):
    monkeypatch.setenv(ENV, env)
    ref = logits(load_model(folder, dtype="float32").decoder)
    decoder = load_model(folder, dtype="float32", quantize="int4").decoder
    assert kinds(decoder) == {"qkv": NativeInt4Linear, "o": NativeInt4Linear, "gate_up": NativeInt4Linear,
                              "down": NativeInt4Linear, "head": NativeInt8Linear}
    out = logits(decoder)
    assert (out - ref).norm() / ref.norm() < 0.25


def test_q6_k_tensors_run_on_their_own_grid_and_other_wide_ones_as_int8(folder, monkeypatch):
    monkeypatch.setenv(ENV, "native")
    decoder = load_model(folder, dtype="float32", quantize="none").decoder
    cfg = decoder.cfg
    down, head = "model.layers.0.mlp.down_proj.weight", "lm_head.weight"
    grids = {down: int6_grid(cfg.hidden_size, cfg.intermediate_size), head: int6_grid(cfg.vocab_size, cfg.hidden_size)}
    bits = {down: 6, head: 6, "model.layers.1.self_attn.v_proj.weight": 6}
    assert quantize_decoder(decoder, "int4", bits, grids) == "int4"
    assert type(decoder.layers[0].down) is NativeInt6Linear and type(decoder.lm_head) is NativeInt6Linear
    assert type(decoder.layers[1].qkv) is NativeInt8Linear  # a Q6_K v without Q6_K q and k: int8, fused
    assert type(decoder.layers[1].down) is NativeInt4Linear
    x = torch.randn(2, cfg.intermediate_size, generator=G)
    check_close(decoder.layers[0].down(x), x, int6_weight(grids[down]))  # the grid's values, not the float weight

    again = load_model(folder, dtype="float32", quantize="none").decoder
    quantize_decoder(again, "int8", bits, grids)  # asked for int8: int8 it is
    assert type(again.layers[0].down) is NativeInt8Linear and type(again.lm_head) is NativeInt8Linear


def test_inputs_the_kernel_cannot_read_stay_on_torch(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "native")
    folder = write_random_model(tmp_path / "m", seed=3, vocab=48, hidden=48, heads=2, kv_heads=1, intermediate=128)
    got = kinds(load_model(str(folder), dtype="float32", quantize="int4").decoder)
    assert got["qkv"] is Int8Linear and got["down"] is NativeInt4Linear  # 48 inputs: not whole blocks of 32


def test_torch_forces_pytorchs_kernels(folder, monkeypatch):
    monkeypatch.setenv(ENV, "torch")
    decoder = load_model(folder, dtype="float32", quantize="int4").decoder
    assert set(kinds(decoder).values()) == {Int4Linear, Int8Linear}


def test_a_bad_setting_is_a_one_line_error(folder, monkeypatch):
    monkeypatch.setenv(ENV, "fast")
    decoder = load_model(folder, dtype="float32").decoder
    with pytest.raises(UnsupportedEnvironmentError, match="SAGUARO_QUANT_KERNELS='fast'"):
        quantize_decoder(decoder, "int4")


def test_a_failed_build_falls_back_or_fails_in_one_line(monkeypatch, tmp_path, caplog):
    """No compiler: one warning and PyTorch's kernels under auto; a user error under native."""
    from torch.utils import cpp_extension

    def broken(*args, **kwargs):
        raise RuntimeError("Error building extension 'saguaro_qgemm'\nc++: not found")

    monkeypatch.setattr(cpp_extension, "load", broken)
    monkeypatch.setattr(build, "build_dir", lambda: tmp_path / "kernels")
    with caplog.at_level(logging.WARNING, logger=build.__name__):
        assert build.load_kernels.__wrapped__() is False
    assert [r.getMessage() for r in caplog.records] == [
        "cannot build Saguaro's CPU kernels (Error building extension 'saguaro_qgemm'); using PyTorch's kernels"]

    monkeypatch.setattr(native_choice, "load_kernels", lambda: False)
    monkeypatch.setenv(ENV, "auto")
    assert native_choice.use_native() is False
    monkeypatch.setenv(ENV, "native")
    with pytest.raises(UnsupportedEnvironmentError, match="could not be built"):
        native_choice.use_native()


def _load_in_a_fresh_process(cache) -> subprocess.CompletedProcess:
    """load_kernels() with torch's builder replaced by one that records its calls; a fresh process,
    since one process cannot load two copies of the library (their ops would register twice)."""
    probe = ("import logging; logging.basicConfig(); from torch.utils import cpp_extension; calls = []; "
             "cpp_extension.load = lambda *a, **k: calls.append(k['build_directory']); "
             "from saguaro.quant.native.build import load_kernels; print(load_kernels(), len(calls))")
    env = dict(os.environ, SAGUARO_CACHE=str(cache))
    return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)


def test_a_finished_build_loads_without_the_builder_even_moved(tmp_path):
    """A copied kernels folder (a new cache, an image) loads as it is, where ninja would rebuild
    it (its log holds the old paths). A truncated library is rebuilt, with one warning."""
    import shutil

    assert build.load_kernels()
    copy = tmp_path / "kernels" / build.build_dir().name
    shutil.copytree(build.build_dir(), copy)
    done = _load_in_a_fresh_process(tmp_path)
    assert done.stdout.split() == ["True", "0"], done.stderr

    (copy / f"{build.NAME}.so").write_bytes(b"\x7fELF truncated")
    done = _load_in_a_fresh_process(tmp_path)
    assert done.stdout.split() == ["True", "1"], done.stderr
    assert "does not load" in done.stderr and "rebuilding it" in done.stderr


def test_the_build_folder_is_per_cpu_and_torch(monkeypatch):
    here = build.build_dir()
    monkeypatch.setattr(build, "cpu_features", lambda: "some other cpu")
    assert build.build_dir() != here
    monkeypatch.undo()
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    assert build.build_dir() != here


def test_greedy_speculative_decoding_equals_ar_on_native_kernels(folder, monkeypatch):
    """Verifying K + 1 tokens at once gives the logits of one-token decodes, so greedy SD is AR.
    The target drafts for itself, so most drafts are accepted and verifies are many rows."""
    from saguaro import LLM, SamplingParams

    monkeypatch.setenv(ENV, "native")
    draft = folder
    quant = dict(dtype="float32", quantize_target="int4", quantize_draft="int4")
    greedy = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    prompts = [[3, 5, 7, 3, 5, 7, 3], [1, 2], [6, 6, 6, 4]]
    expected = [r.token_ids for r in LLM(target=folder, **quant).generate(prompts, greedy)]
    spec = LLM(target=folder, draft=draft, mode="sd", k=3, **quant)
    try:
        results = spec.generate(prompts, greedy)
    finally:
        spec.close()
    assert [r.token_ids for r in results] == expected
    assert sum(r.metrics.speculation.accepted for r in results) > 0


def test_pips_ninja_is_found_without_an_activated_environment(monkeypatch):
    import ninja

    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    monkeypatch.setenv("PATH", "/nowhere")
    build.put_ninja_on_path()
    assert os.environ["PATH"].split(os.pathsep)[0] == ninja.BIN_DIR


def test_march_features_follow_each_architectures_spelling(monkeypatch):
    monkeypatch.setenv(build.MARCH_ENV, "haswell+avxvnni")
    assert build.flags("x86_64")[1:3] == ["-march=haswell", "-mavxvnni"]
    monkeypatch.setenv(build.MARCH_ENV, "armv8.2-a+dotprod")
    assert build.flags("aarch64")[1:3] == ["-march=armv8.2-a+dotprod", "-fopenmp"]


def _cpu_has(flag: str) -> bool:
    return flag in build.cpu_features().split()


# The vector paths below the one this CPU builds by default: each built for an older CPU
# (SAGUARO_QGEMM_MARCH) and run through this file's kernel tests in a fresh process (one build
# per process registers the ops), so CI on an AVX-512 machine also runs the AVX2 and portable
# code, and the AVX2 + AVX-VNNI code where the CPU has AVX-VNNI. On aarch64 (`asimd`) the default
# build is the NEON dot-product path where the CPU has it, and armv8-a is the portable loop.
PATHS = [("haswell", "avx2", "avx2"), ("haswell+avxvnni", "avx2-vnni", "avx_vnni"), ("x86-64", "portable", "sse2"),
         ("armv8-a", "portable", "asimd")]


@pytest.mark.parametrize("march, isa, needs", PATHS, ids=["avx2", "avx2-vnni", "portable", "portable-aarch64"])
def test_every_vector_path_this_cpu_runs(march, isa, needs):
    import subprocess
    import sys

    if not _cpu_has(needs):
        pytest.skip(f"this CPU cannot run the {isa} path")
    env = dict(os.environ, SAGUARO_QGEMM_MARCH=march)
    probe = "from saguaro.quant.native.build import load_kernels, isa; assert load_kernels(); print(isa())"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == isa
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                            "-k", "not every_vector_path"], env=env, capture_output=True, text=True, timeout=900)
    assert tests.returncode == 0, tests.stdout[-3000:]


def test_the_packing_puts_row_j_in_lane_j_and_each_block_in_one_stretch():
    """The layout qgemm.cpp reads, on hand-made codes: byte 4j + r of vector v is row j's code
    4v + r (int4: v and v + 4 share a byte), then the block's 16 scales and 16 mins."""
    from saguaro.quant.native.linear import high_pairs, nibbles, pack

    rows, cols = 17, 64  # two groups (the second padded with zero rows), two blocks
    q = torch.tensor([[(3 * n + e + 5 * (e // 16)) % 16 for e in range(cols)] for n in range(rows)], dtype=torch.uint8)
    scale = torch.arange(rows * 2, dtype=torch.float32).reshape(rows, 2) + 1
    packed = pack([nibbles(q)], scale, -scale)
    assert packed.shape == (2, 2 * 320)
    block = packed[0, 320:640]  # group 0, block 1
    for j, v, r in [(0, 0, 0), (5, 2, 3), (15, 3, 1)]:
        byte = int(block[64 * v + 4 * j + r])
        assert byte & 0x0F == q[j, 32 + 4 * v + r] and byte >> 4 == q[j, 32 + 16 + 4 * v + r]
    sm = block[256:].view(torch.float16).float()
    assert torch.equal(sm[:16], scale[:16, 1]) and torch.equal(sm[16:], -scale[:16, 1])
    assert int(packed[1, 4:64].count_nonzero()) == 0  # rows 17-31 of group 1 are zero
    six = torch.tensor([[(5 * e + n) % 64 for e in range(32)] for n in range(2)], dtype=torch.uint8)
    pairs = high_pairs(six)  # [2, 1, 8]
    for n, h, p, r in [(0, 0, 0, 0), (1, 1, 3, 2), (0, 1, 2, 3)]:
        assert (int(pairs[n, 0, 4 * h + r]) >> (2 * p)) & 3 == six[n, 16 * h + 4 * p + r] >> 4
