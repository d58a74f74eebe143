"""Model architecture settings, read from an HF `config.json` dict.

One decoder covers Qwen2/Qwen2.5 (QKV bias), Qwen3 (QK norm) and Llama-3 (RoPE scaling).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from saguaro.errors import ModelLoadError

SUPPORTED = {
    "qwen2": dict(attention_bias=True, qk_norm=False),
    "qwen3": dict(attention_bias=False, qk_norm=True),
    "llama": dict(attention_bias=False, qk_norm=False),
}


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    qk_norm: bool
    rope_scaling: tuple[tuple[str, Any], ...] | None = None  # frozen form of the HF dict

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def rope_scaling_dict(self) -> dict[str, Any] | None:
        return dict(self.rope_scaling) if self.rope_scaling else None

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> "ModelConfig":
        model_type = cfg.get("model_type", "")
        if model_type not in SUPPORTED:
            raise ModelLoadError(
                f"unsupported architecture {model_type!r}; supported: {', '.join(sorted(SUPPORTED))}"
            )
        try:
            hidden = int(cfg["hidden_size"])
            heads = int(cfg["num_attention_heads"])
            scaling = cfg.get("rope_scaling") or None
            if scaling is not None and scaling.get("rope_type", scaling.get("type")) in (None, "default"):
                scaling = None
            return cls(
                model_type=model_type,
                vocab_size=int(cfg["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(cfg["intermediate_size"]),
                num_layers=int(cfg["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or hidden // heads),
                rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                rope_theta=float(cfg.get("rope_theta", 10000.0)),
                max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                attention_bias=bool(cfg.get("attention_bias", SUPPORTED[model_type]["attention_bias"])),
                qk_norm=SUPPORTED[model_type]["qk_norm"],
                rope_scaling=tuple(sorted(scaling.items())) if scaling else None,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelLoadError(f"invalid model config: {e!r}") from e


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
