"""`random:<shape>[:seed]` model references: random weights at a real model's shape, made on the device.

For benchmarks where the weights do not matter but the bytes and FLOPs do (e.g. a 7B target on a
GPU with no checkpoint at hand). The tokenizer is a toy one with the real tokenizer's size, the
same for every shape, so any two random models can pair as target and draft.
"""

from __future__ import annotations

import json
import zlib

import torch

from saguaro.errors import ModelLoadError
from saguaro.model.config import ModelConfig
from saguaro.testing.random_model import random_config, random_tensor, toy_tokenizer_files, weight_specs
from saguaro.tokenizer import Tokenizer

PREFIX = "random:"
QWEN_TOKENIZER_SIZE = 151665  # tokens in the Qwen2.5 tokenizer (the embeddings have padding rows)
QWEN = dict(model_type="qwen2", rope_theta=1000000.0, context=32768, rms_norm_eps=1e-6)
SHAPES = {
    "qwen2.5-0.5b": dict(QWEN, vocab=151936, hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864,
                         tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(QWEN, vocab=151936, hidden=1536, layers=28, heads=12, kv_heads=2, intermediate=8960,
                         tie_word_embeddings=True),
    "qwen2.5-7b": dict(QWEN, vocab=152064, hidden=3584, layers=28, heads=28, kv_heads=4, intermediate=18944),
    "tiny": dict(vocab=512, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, context=4096),
}


CORE_RANK = 64  # `agree` pairs share a rank-64 bigram core in their embeddings and heads
CORE_VOCAB = 152064
CORE_SEED = 20261126


def is_random_ref(ref: str) -> bool:
    return ref.startswith(PREFIX)


def parse_random_ref(ref: str) -> tuple[str, int, float | None]:
    """`random:<shape>[:seed][:agree=<scale>]` -> (shape, seed, layer scale or None)."""
    parts = ref[len(PREFIX):].split(":")
    shape, seed, agree = parts[0], 0, None
    if shape not in SHAPES:
        raise ModelLoadError(f"unknown random model {ref!r}; use random:<shape>[:seed][:agree=<scale>] with shape "
                             f"one of {', '.join(SHAPES)}")
    try:
        for i, part in enumerate(parts[1:]):
            if part.startswith("agree=") and agree is None:
                agree = float(part[len("agree="):])
                if not 0 <= agree <= 1:
                    raise ValueError
            elif i == 0:
                seed = int(part)
            else:
                raise ValueError
    except ValueError:
        raise ModelLoadError(f"bad random model {ref!r}: expected random:<shape>[:seed][:agree=<scale in 0..1>]") from None
    return shape, seed, agree


def random_hf_config(shape: str, agree: float | None = None) -> dict:
    spec = dict(SHAPES[shape])
    if agree is not None:
        spec["tie_word_embeddings"] = False  # the head holds the core's output side
    return random_config(**spec)


def random_tokenizer(size: int) -> Tokenizer:
    tok_json, tok_cfg = toy_tokenizer_files(size)
    return Tokenizer.from_files(json.dumps(tok_json), tok_cfg)


def load_random(ref: str, device: torch.device, dtype: torch.dtype):
    """-> (ModelConfig, tensor names, getter over HF names, tokenizer). Weights are drawn lazily on the device.

    With `agree=<scale>`, the model is mostly a bigram model shared by every such reference: its
    embedding and head carry one fixed rank-64 core (zero elsewhere) and each layer's output
    projections are scaled by `scale`. Two of them, of any shapes, then agree on most greedy
    tokens (less as `scale` grows), which gives draft/target pairs a realistic acceptance while
    costing exactly what their shapes cost.
    """
    shape, seed, agree = parse_random_ref(ref)
    hf = random_hf_config(shape, agree)
    specs = weight_specs(hf)
    gen_device = device if device.type == "cuda" else torch.device("cpu")
    core = _core(gen_device) if agree is not None else None

    def get(name: str) -> torch.Tensor:
        shape_, std, mean = specs[name]
        if core is not None and name in ("model.embed_tokens.weight", "lm_head.weight"):
            out = torch.zeros(shape_, device=gen_device, dtype=dtype)
            rows = min(shape_[0], QWEN_TOKENIZER_SIZE)  # padding rows stay zero, as in real checkpoints
            out[:rows, :CORE_RANK] = core[name == "lm_head.weight"][:rows].to(dtype)
            return out
        if core is not None and name.endswith(("o_proj.weight", "down_proj.weight")):
            std = std * agree
        g = torch.Generator(device=gen_device).manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        return random_tensor(shape_, std, mean, g, device=gen_device, dtype=dtype)

    size = min(hf["vocab_size"], QWEN_TOKENIZER_SIZE)
    return ModelConfig.from_hf(hf), set(specs), get, random_tokenizer(size)


def _core(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input side, output side) of the shared bigram core, [CORE_VOCAB, CORE_RANK] float32, drawn on the CPU
    so every device and shape sees the same numbers."""
    g = torch.Generator().manual_seed(CORE_SEED)
    e = torch.randn(CORE_VOCAB, CORE_RANK, generator=g)
    h = torch.randn(CORE_VOCAB, CORE_RANK, generator=g) * CORE_RANK**-0.5
    return e.to(device), h.to(device)
