"""Turns a checkpoint's HF-named tensors into the decoder's fused weights.

QKV and gate/up are concatenated once here so each layer runs two fewer matmuls per token.
"""

from __future__ import annotations

from typing import Callable

import torch

from saguaro.errors import ModelLoadError
from saguaro.model.config import ModelConfig

Getter = Callable[[str], torch.Tensor]


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
        w = {
            "input_norm": take(p + "input_layernorm.weight"),
            "post_norm": take(p + "post_attention_layernorm.weight"),
            "qkv": cat(a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"),
            "o": take(a + "o_proj.weight"),
            "gate_up": cat(p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"),
            "down": take(p + "mlp.down_proj.weight"),
        }
        if cfg.attention_bias:
            w["qkv_bias"] = cat(a + "q_proj.bias", a + "k_proj.bias", a + "v_proj.bias")
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
