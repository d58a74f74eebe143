"""Reads a GGUF file: architecture settings, dequantized tensors under HF names, tokenizer.

Every tensor type the `gguf` package can dequantize is accepted; results are float32.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from saguaro.errors import ModelLoadError

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


def open_gguf(path: str | Path):
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except FileNotFoundError:
        raise ModelLoadError(f"no such GGUF file: {path}") from None
    except Exception as e:  # the reader raises assorted errors on corrupt or truncated files
        raise ModelLoadError(f"corrupt or truncated GGUF file {path}: {e}") from None


def field(reader, name: str, default: Any = None) -> Any:
    f = reader.fields.get(name)
    return default if f is None else f.contents()


def hf_config(reader) -> dict[str, Any]:
    arch = field(reader, "general.architecture")
    if arch not in ARCH_TO_MODEL_TYPE:
        raise ModelLoadError(f"unsupported architecture {arch!r} in GGUF file")
    g = lambda key, default=None: field(reader, f"{arch}.{key}", default)  # noqa: E731
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
        "bos_token_id": field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": field(reader, "tokenizer.ggml.eos_token_id"),
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


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    # llama.cpp's converter interleaves the rotary halves of Q/K rows for the llama architecture.
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_tensors(reader, cfg: dict[str, Any]) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (HF name, float32 array in HF [out, in] orientation) for each tensor."""
    from gguf.quants import dequantize

    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None:
            log.debug("skipping GGUF tensor %s", t.name)
            continue
        try:
            arr = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        except NotImplementedError as e:
            raise ModelLoadError(f"cannot dequantize {t.name} ({t.tensor_type.name}): {e}") from None
        arr = arr.reshape(tuple(int(d) for d in reversed(t.shape)))
        if cfg["model_type"] == "llama":
            if name.endswith("q_proj.weight"):
                arr = unpermute(arr, cfg["num_attention_heads"])
            elif name.endswith("k_proj.weight"):
                arr = unpermute(arr, cfg["num_key_value_heads"])
        yield name, arr
