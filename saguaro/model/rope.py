"""Rotary position embeddings, including Llama-3's frequency scaling.

Frequencies are computed in float32 from the config; the cos/sin table is built once, up to the
context (plus slack), and gathered per token position without a host sync.
"""

from __future__ import annotations

import math

import torch

from saguaro.model.config import ModelConfig


def inverse_frequencies(cfg: ModelConfig) -> torch.Tensor:
    """[head_dim // 2] float32."""
    dim = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = cfg.rope_scaling_dict
    if scaling is None:
        return inv
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "llama3":
        return _llama3_scale(inv, scaling)
    if kind == "linear":
        return inv / float(scaling["factor"])
    raise ValueError(f"unsupported rope scaling {kind!r}")


def _llama3_scale(inv: torch.Tensor, s: dict) -> torch.Tensor:
    # Long wavelengths are slowed by `factor`, short ones kept, the band between interpolated.
    factor, low, high = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old_ctx = float(s["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_ctx / wavelen - low) / (high - low)
    mid = (1 - smooth) * scaled / factor + smooth * scaled
    is_mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(is_mid, mid, scaled)


# Positions the table covers past the model's context. The engine refuses requests longer than
# the context, but SSD branch drafting places tokens up to about 2 K past a sequence's end.
POSITION_SLACK = 1024


class Rotary:
    """A cos/sin table built once, at construction, and gathered per token position.

    `cos_sin` is a pure device-side gather (no host sync, the table never changes during a
    forward), so a forward using it can be captured (CUDA graphs, torch.compile). The table covers `length` positions
    (callers pass the model's context plus POSITION_SLACK: 33792 positions of a 128-wide head
    are 17 MB in bfloat16). A position past it is an indexing error (IndexError on the CPU, a
    device-side assert on CUDA), never a silently wrong rotation; a caller that knows, host-side,
    that it needs more can `reserve` it before the forward (Decoder.forward reserves its kv_len).
    """

    def __init__(self, cfg: ModelConfig, device: torch.device, dtype: torch.dtype, length: int | None = None):
        self.inv_freq = inverse_frequencies(cfg).to(device)  # [head_dim // 2]
        self.dtype = dtype
        self._len = 0
        self._cos = self._sin = None
        self.reserve(cfg.max_position_embeddings + POSITION_SLACK if length is None else length)

    @property
    def length(self) -> int:
        """Positions 0..length-1 are in the table."""
        return self._len

    def reserve(self, length: int) -> None:
        """Make positions 0..length-1 available (host-side; rebuilds the table only if it is shorter).

        A rebuild replaces the tables, so do it outside any captured region."""
        if length <= self._len:
            return
        t = torch.arange(length, device=self.inv_freq.device, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq)  # [length, head_dim // 2]
        emb = torch.cat([freqs, freqs], dim=-1)  # [length, head_dim]
        self._cos, self._sin = emb.cos().to(self.dtype), emb.sin().to(self.dtype)
        self._len = length

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B, T], each < `length` -> cos, sin [B, 1, T, head_dim]."""
        return self._cos[positions].unsqueeze(1), self._sin[positions].unsqueeze(1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, T, head_dim] rotated by half-split pairs (the HF convention)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin
