"""The decoder-only transformer shared by Qwen2/2.5, Qwen3 and Llama-3.

Weights are fused at construction (QKV in one matrix, gate and up in one) to cut matmul calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from saguaro.kv_cache import KVCache
from saguaro.model.config import ModelConfig
from saguaro.model.rope import Rotary, apply_rotary


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # Same arithmetic as the reference implementations: normalise in float32, scale in dtype.
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


@dataclass(frozen=True)
class LayerOps:
    """The elementwise steps between a layer's matmuls. PyTorch's ops by default; the native
    quantize transform swaps in fused C++ ones (saguaro.quant.native.glue)."""

    rms_norm: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
    rotary: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # x, cos, sin
    write_kv: Callable[[KVCache, int, torch.Tensor, torch.Tensor, torch.Tensor], None]  # cache, layer, slots, k, v


TORCH_OPS = LayerOps(rms_norm, apply_rotary, KVCache.write)


class Linear:
    """y = x W^T + b. Transforms (saguaro.model.cpu_packing) swap in faster kernels."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.weight = weight  # [out, in]
        self.bias = bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class Layer:
    def __init__(self, w: dict[str, torch.Tensor]):
        self.input_norm = w["input_norm"]
        self.qkv = Linear(w["qkv"], w.get("qkv_bias"))  # [q_size + 2 kv_size, hidden]
        self.q_norm = w.get("q_norm")
        self.k_norm = w.get("k_norm")
        self.o = Linear(w["o"])  # [hidden, q_size]
        self.post_norm = w["post_norm"]
        self.gate_up = Linear(w["gate_up"])  # [2 intermediate, hidden]
        self.down = Linear(w["down"])  # [hidden, intermediate]

    def linears(self) -> list[Linear]:
        return [self.qkv, self.o, self.gate_up, self.down]


class Decoder:
    """Forward over explicit cache slots and an explicit attention mask.

    The caller decides where each token's K/V goes (`slots`), its RoPE position (`positions`)
    and what it may attend to (`mask`); that one signature serves prefill, decode, multi-token
    verification and SSD's branch drafting.
    """

    def __init__(self, cfg: ModelConfig, weights: dict[str, torch.Tensor], device, dtype):
        self.cfg = cfg
        self.device = torch.device(device)
        self.dtype = dtype
        self.embed = weights["embed"]  # [vocab, hidden]
        self.final_norm = weights["final_norm"]
        self.lm_head = Linear(weights.get("lm_head", self.embed))  # [vocab, hidden]
        self.layers = [Layer(weights_of(weights, i)) for i in range(cfg.num_layers)]
        self.rotary = Rotary(cfg, self.device, dtype)
        self.ops = TORCH_OPS

    def linears(self) -> list[Linear]:
        return [l for layer in self.layers for l in layer.linears()] + [self.lm_head]

    def new_cache(self, batch: int, capacity: int, max_rows: int | None = None) -> KVCache:
        return KVCache(self.cfg, batch, capacity, self.device, self.dtype, max_rows)

    @torch.inference_mode()
    def forward(
        self,
        tokens: torch.Tensor,  # [B, T]
        positions: torch.Tensor,  # [B, T]
        cache: KVCache,
        slots: torch.Tensor,  # [B, T]
        mask: torch.Tensor,  # [B, T, kv_len] bool, True = may attend
        logit_index: torch.Tensor | None = None,  # [B, T'] which T positions need logits
    ) -> torch.Tensor:
        """Returns logits [B, T', vocab] (T' = T without logit_index) in the model dtype."""
        return self.compute(tokens, positions, cache, slots, mask, logit_index)

    def compute(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache,
        slots: torch.Tensor,
        mask: torch.Tensor,
        logit_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`forward` without its inference-mode wrapper: the body to torch.compile or capture.

        Call it (or its compiled form) under torch.inference_mode(): torch.compile fails on a
        function that itself enters inference mode (pytorch issue 180823). Nothing here reads a
        tensor's value on the host: shapes are Python ints from tensor shapes, RoPE is a gather
        from a prebuilt table, and GQA attention never materialises repeated K/V.
        """
        cfg = self.cfg
        b, t = tokens.shape
        kv_len = mask.shape[-1]
        x = F.embedding(tokens, self.embed)  # [B, T, hidden]
        # A token's position never exceeds its slot (< kv_len), so this covers every position; a
        # host-side no-op unless kv_len outruns the table built for the context (plus slack).
        self.rotary.reserve(kv_len)
        cos, sin = self.rotary.cos_sin(positions)  # no host sync
        # GQA without repeating K/V: query heads j*rep..(j+1)*rep-1 share KV head j, so each KV
        # head's group of queries is folded into the query length, [B, kv_heads, rep * T, hd]
        # (row r * T + i is head j*rep + r at token i); the mask is repeated to match.
        rep = cfg.num_heads // cfg.num_kv_heads
        attn_mask = mask.unsqueeze(1).expand(b, rep, t, kv_len).reshape(b, 1, rep * t, kv_len)
        ops = self.ops
        for i, layer in enumerate(self.layers):
            h = ops.rms_norm(x, layer.input_norm, cfg.rms_norm_eps)
            qkv = layer.qkv(h)  # [B, T, q_size + 2 kv_size]
            q, k, v = qkv.split([cfg.q_size, cfg.kv_size, cfg.kv_size], dim=-1)
            q = q.view(b, t, cfg.num_heads, cfg.head_dim).transpose(1, 2)  # [B, heads, T, hd]
            k = k.view(b, t, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
            v = v.view(b, t, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
            if layer.q_norm is not None:
                q = ops.rms_norm(q, layer.q_norm, cfg.rms_norm_eps)
                k = ops.rms_norm(k, layer.k_norm, cfg.rms_norm_eps)
            q, k = ops.rotary(q, cos, sin), ops.rotary(k, cos, sin)
            ops.write_kv(cache, i, slots, k, v)
            keys, values = cache.view(i, kv_len)  # [B, kv_heads, kv_len, hd]
            q = q.reshape(b, cfg.num_kv_heads, rep * t, cfg.head_dim)
            a = F.scaled_dot_product_attention(q, keys, values, attn_mask=attn_mask)  # [B, kv_heads, rep * T, hd]
            a = a.reshape(b, cfg.num_heads, t, cfg.head_dim).transpose(1, 2).reshape(b, t, cfg.q_size)
            x = x + layer.o(a)
            h = ops.rms_norm(x, layer.post_norm, cfg.rms_norm_eps)
            gate, up = layer.gate_up(h).chunk(2, dim=-1)
            x = x + layer.down(F.silu(gate) * up)
        if logit_index is not None:
            x = x.gather(1, logit_index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = ops.rms_norm(x, self.final_norm, cfg.rms_norm_eps)
        return self.lm_head(x)


def weights_of(weights: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    prefix = f"layers.{i}."
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
