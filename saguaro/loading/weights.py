"""Turns a checkpoint's HF-named tensors into the decoder's fused weights.

QKV and gate/up are concatenated once here so each layer runs two fewer matmuls per token.
"""

from __future__ import annotations

from typing import Callable

import torch

from saguaro.errors import ModelLoadError
from saguaro.model.config import ModelConfig

Getter = Callable[[str], torch.Tensor]


def layer_parts(cfg: ModelConfig, i: int) -> dict[str, list[tuple[str, int]]]:
    """Each fused layer linear -> its HF tensors (name without .weight/.bias) and their rows, in order."""
    p = f"model.layers.{i}."
    return {
        "qkv": [(p + "self_attn.q_proj", cfg.q_size), (p + "self_attn.k_proj", cfg.kv_size),
                (p + "self_attn.v_proj", cfg.kv_size)],
        "o": [(p + "self_attn.o_proj", cfg.hidden_size)],
        "gate_up": [(p + "mlp.gate_proj", cfg.intermediate_size), (p + "mlp.up_proj", cfg.intermediate_size)],
        "down": [(p + "mlp.down_proj", cfg.hidden_size)],
    }


def fuse_weights(cfg: ModelConfig, names: set[str], get: Getter, device, dtype) -> dict[str, torch.Tensor]:
    def take(name: str) -> torch.Tensor:
        if name not in names:
            raise ModelLoadError(f"checkpoint lacks tensor {name!r}")
        return get(name).to(device=device, dtype=dtype)

    def cat(*parts: str) -> torch.Tensor:
        return torch.cat([take(p) for p in parts], dim=0).contiguous()

    out = {"embed": take("model.embed_tokens.weight"), "final_norm": take("model.norm.weight")}
    if "lm_head.weight" in names and not cfg.tie_word_embeddings:
        out["lm_head"] = take("lm_head.weight")
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        parts = layer_parts(cfg, i)
        w = {
            "input_norm": take(p + "input_layernorm.weight"),
            "post_norm": take(p + "post_attention_layernorm.weight"),
            **{linear: cat(*(name + ".weight" for name, _ in named)) for linear, named in parts.items()},
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
