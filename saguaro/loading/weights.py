"""Turns a checkpoint's HF-named tensors into the decoder's fused weights.

QKV and gate/up are concatenated once here so each layer runs two fewer matmuls per token.
"""

from __future__ import annotations

from typing import Callable

import torch

from saguaro.errors import ModelLoadError
from saguaro.model.config import ModelConfig, layer_parts

Getter = Callable[[str], torch.Tensor]


def fused_matrix(get: Getter, names: list[str], device, dtype) -> torch.Tensor:
    """The HF tensors `names` stacked by rows, in the decoder's device and dtype."""
    return torch.cat([get(name).to(device=device, dtype=dtype) for name in names], dim=0).contiguous()


def fuse_weights(cfg: ModelConfig, names: set[str], get: Getter, device, dtype,
                 shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, torch.Tensor]:
    """`shapes` (HF name -> shape) leaves the layers' matrices and an untied head as meta tensors
    of those shapes, never read: the quantize transform builds those linears from the file's own
    blocks, and asks `fused_matrix` for the float values of the few that cannot run on their grid."""
    def take(name: str, matrix: bool = False) -> torch.Tensor:
        if name not in names:
            raise ModelLoadError(f"checkpoint lacks tensor {name!r}")
        if matrix and shapes is not None:
            return torch.empty(shapes[name], device="meta", dtype=dtype)
        return get(name).to(device=device, dtype=dtype)

    def cat(*parts: str, matrix: bool = False) -> torch.Tensor:
        return torch.cat([take(p, matrix) for p in parts], dim=0).contiguous()

    out = {"embed": take("model.embed_tokens.weight"), "final_norm": take("model.norm.weight")}
    if "lm_head.weight" in names and not cfg.tie_word_embeddings:
        out["lm_head"] = take("lm_head.weight", matrix=True)
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        parts = layer_parts(cfg, i)
        w = {
            "input_norm": take(p + "input_layernorm.weight"),
            "post_norm": take(p + "post_attention_layernorm.weight"),
            **{linear: cat(*(name + ".weight" for name, _ in named), matrix=True) for linear, named in parts.items()},
        }
        if cfg.attention_bias:
            w["qkv_bias"] = cat(*(name + ".bias" for name, _ in parts["qkv"]))
        if cfg.qk_norm:
            w["q_norm"], w["k_norm"] = take(a + "q_norm.weight"), take(a + "k_norm.weight")
        out.update({f"layers.{i}.{k}": v for k, v in w.items()})
    _check_shapes(cfg, out)
    return out


def _check_shapes(cfg: ModelConfig, w: dict[str, torch.Tensor]) -> None:
    expected = {
        "embed": (cfg.vocab_size, cfg.hidden_size),
        "layers.0.qkv": (cfg.q_size + 2 * cfg.kv_size, cfg.hidden_size),
        "layers.0.gate_up": (2 * cfg.intermediate_size, cfg.hidden_size),
        "layers.0.down": (cfg.hidden_size, cfg.intermediate_size),
    }
    for name, shape in expected.items():
        if tuple(w[name].shape) != shape:
            raise ModelLoadError(f"tensor {name} has shape {tuple(w[name].shape)}, config implies {shape}")
