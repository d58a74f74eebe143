"""A GGUF file in HF terms: its architecture settings as an HF config, its tensors under HF names.

Tensors are dequantized to float32 only when asked for (saguaro.loading.gguf_dequant): a
quantized load reads most matrices straight from their blocks (saguaro.loading.gguf_grids).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from saguaro.errors import ModelLoadError
from saguaro.loading.gguf_dequant import dequantize
from saguaro.loading.gguf_reader import GGUFFile, TensorInfo

log = logging.getLogger(__name__)

ARCH_TO_MODEL_TYPE = {"qwen2": "qwen2", "qwen3": "qwen3", "llama": "llama"}
LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def hf_config(reader: GGUFFile) -> dict[str, Any]:
    field = reader.field
    arch = field("general.architecture")
    if arch not in ARCH_TO_MODEL_TYPE:
        raise ModelLoadError(f"unsupported architecture {arch!r} in GGUF file")
    g = lambda key, default=None: field(f"{arch}.{key}", default)  # noqa: E731
    names = {t.name for t in reader.tensors}
    embed = next(t for t in reader.tensors if t.name == "token_embd.weight")
    heads = int(g("attention.head_count"))
    hidden = int(g("embedding_length"))
    cfg = {
        "model_type": ARCH_TO_MODEL_TYPE[arch],
        "vocab_size": int(embed.shape[-1]),
        "hidden_size": hidden,
        "intermediate_size": int(g("feed_forward_length")),
        "num_hidden_layers": int(g("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(g("attention.head_count_kv", heads)),
        "head_dim": int(g("attention.key_length", hidden // heads)),
        "rms_norm_eps": float(g("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(g("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(g("context_length", 4096)),
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": field("tokenizer.ggml.bos_token_id"),
        "eos_token_id": field("tokenizer.ggml.eos_token_id"),
    }
    if "rope_freqs.weight" in names:
        raise ModelLoadError("GGUF files with rope_freqs (Llama-3.1 scaling) are not supported yet; use the HF folder")
    return cfg


def hf_name(name: str) -> str | None:
    base, _, suffix = name.rpartition(".")
    if base.startswith("blk."):
        _, layer, kind = base.split(".", 2)
        if kind not in LAYER_NAMES:
            return None
        return f"model.layers.{layer}.{LAYER_NAMES[kind]}.{suffix}"
    return f"{TOP_NAMES[base]}.{suffix}" if base in TOP_NAMES else None


def unpermute(w, heads: int):
    """A numpy array or a tensor: llama.cpp's converter interleaves the rotary halves of Q/K rows
    for the llama architecture."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permuted_heads(name: str, cfg: dict[str, Any]) -> int:
    """The heads whose rows llama.cpp interleaved in this HF tensor (0: none)."""
    if cfg["model_type"] != "llama":
        return 0
    if name.endswith("q_proj.weight"):
        return cfg["num_attention_heads"]
    return cfg["num_key_value_heads"] if name.endswith("k_proj.weight") else 0


def named_tensors(reader: GGUFFile) -> dict[str, TensorInfo]:
    """HF name -> the file's tensor, for every tensor the decoder reads."""
    named = {}
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None:
            log.debug("skipping GGUF tensor %s", t.name)
        else:
            named[name] = t
    return named


def float_tensor(t: TensorInfo, name: str, cfg: dict[str, Any]) -> torch.Tensor:
    """float32 in HF [out, in] orientation."""
    try:
        w = dequantize(t.data, t.tensor_type, t.rows_cols)
    except NotImplementedError as e:
        raise ModelLoadError(f"cannot dequantize {t.name} ({t.tensor_type.name}): {e}") from None
    heads = permuted_heads(name, cfg)
    return unpermute(w, heads) if heads else w




class GGUFWeights:
    """A GGUF file's tensors by HF name, dequantized only when asked for."""

    def __init__(self, reader: GGUFFile, cfg: dict[str, Any]):
        self.named = named_tensors(reader)
        self.cfg = cfg

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: t.rows_cols for name, t in self.named.items()}

    def float(self, name: str) -> torch.Tensor:
        return float_tensor(self.named[name], name, self.cfg)
