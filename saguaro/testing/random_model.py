"""Writes small HF-format model folders with random weights and a toy tokenizer.

Used by the exactness tests (vocabulary of a few dozen tokens) and by benchmarks at real shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TOY_TOKENS = ["<eos>"] + [chr(ord("a") + i) for i in range(26)] + [" ", ".", ",", "!", "?"]


def toy_tokenizer_files(vocab: int) -> tuple[dict, dict]:
    """A word-level tokenizer over single characters: (tokenizer.json dict, tokenizer_config dict)."""
    tokens = (TOY_TOKENS + [f"<t{i}>" for i in range(vocab)])[:vocab]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": 0, "content": "<eos>", "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Split", "pattern": {"String": ""}, "behavior": "Isolated", "invert": False},
        "post_processor": None,
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": {t: i for i, t in enumerate(tokens)}, "unk_token": "<eos>"},
    }
    config = {
        "eos_token": "<eos>",
        "bos_token": None,
        "add_bos_token": False,
        "chat_template": "{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }}.{% endfor %}"
        "{% if add_generation_prompt %}a:{% endif %}",
    }
    return tokenizer, config


def random_config(model_type: str = "qwen2", vocab: int = 32, hidden: int = 64, layers: int = 2,
                  heads: int = 4, kv_heads: int = 2, intermediate: int = 128, context: int = 256,
                  **overrides) -> dict:
    cfg = {
        "model_type": model_type,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hidden // heads,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "max_position_embeddings": context,
        "tie_word_embeddings": False,
        "eos_token_id": 0,
    }
    cfg.update(overrides)
    return cfg


def weight_specs(cfg: dict, scale: float = 0.5) -> dict[str, tuple[tuple[int, ...], float, float]]:
    """HF name -> (shape, std, mean) of each weight, in generation order."""
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd

    def rnd(*shape, s=None):
        return shape, (s if s is not None else shape[-1] ** -0.5), 0.0

    norm = ((h,), 0.1, 1.0)
    w = {"model.embed_tokens.weight": rnd(v, h, s=1.0), "model.norm.weight": ((h,), 0.0, 1.0)}
    if not cfg.get("tie_word_embeddings"):
        w["lm_head.weight"] = rnd(v, h, s=scale)
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        w[p + "input_layernorm.weight"] = norm
        w[p + "post_attention_layernorm.weight"] = norm
        for name, rows in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            w[p + f"self_attn.{name}.weight"] = rnd(rows, h)
            if cfg["model_type"] == "qwen2":
                w[p + f"self_attn.{name}.bias"] = rnd(rows, s=0.1)
        if cfg["model_type"] == "qwen3":
            w[p + "self_attn.q_norm.weight"] = ((hd,), 0.1, 1.0)
            w[p + "self_attn.k_norm.weight"] = ((hd,), 0.1, 1.0)
        w[p + "self_attn.o_proj.weight"] = rnd(h, q)
        w[p + "mlp.gate_proj.weight"] = rnd(i, h)
        w[p + "mlp.up_proj.weight"] = rnd(i, h)
        w[p + "mlp.down_proj.weight"] = rnd(h, i)
    return w


def random_tensor(shape, std: float, mean: float, generator: torch.Generator, device="cpu",
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    if std == 0.0:
        return torch.full(shape, mean, device=device, dtype=dtype)
    x = torch.randn(*shape, generator=generator, device=device, dtype=dtype) * std
    return x + mean if mean else x


def random_weights(cfg: dict, seed: int = 0, scale: float = 0.5) -> dict[str, torch.Tensor]:
    """HF-named float32 weights; `scale` sets how peaked the output distributions are."""
    g = torch.Generator().manual_seed(seed)
    return {name: random_tensor(shape, std, mean, g) for name, (shape, std, mean) in weight_specs(cfg, scale).items()}


def write_random_model(folder: str | Path, seed: int = 0, scale: float = 0.5,
                       dtype: torch.dtype = torch.float32, **config) -> Path:
    """Create `folder` with config.json, model.safetensors, tokenizer files; returns the folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = random_config(**config)
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    weights = {k: t.to(dtype).contiguous() for k, t in random_weights(cfg, seed, scale).items()}
    save_file(weights, str(folder / "model.safetensors"))
    tok, tok_cfg = toy_tokenizer_files(cfg["vocab_size"])
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    return folder
