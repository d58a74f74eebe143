"""What a GGUF file says about precision: Q4_K and Q6_K tensors as grids, and each tensor's bits.

The quantize transform runs Q4_K and Q6_K weights on their own grids and keeps other tensors that
the file stores at 6 bits or more (Q8_0, F16) off the 4-bit kernel.
"""

from __future__ import annotations

import torch

from saguaro.loading.gguf_file import hf_name, unpermute
from saguaro.model.config import ModelConfig
from saguaro.quant.grids import Int4Grid, Int6Grid, grid_from_q4_k, grid_from_q6_k, map_rows

BITS = {"Q4_0": 4, "Q4_1": 4, "Q4_K": 4, "IQ4_NL": 4, "IQ4_XS": 4, "Q5_0": 5, "Q5_1": 5, "Q5_K": 5,
        "Q2_K": 2, "Q3_K": 3, "Q6_K": 6, "Q8_0": 8, "Q8_K": 8, "BF16": 16, "F16": 16, "F32": 32}


def source_bits(reader) -> dict[str, int]:
    """HF name -> bits per weight of the file's own encoding (unknown types count as 16)."""
    return {name: BITS.get(t.tensor_type.name, 16) for t in reader.tensors if (name := hf_name(t.name))}


READERS = {"Q4_K": grid_from_q4_k, "Q6_K": grid_from_q6_k}


def native_grids(reader, cfg: ModelConfig) -> dict[str, Int4Grid | Int6Grid]:
    """HF name -> the tensor's own grid, for every Q4_K and Q6_K matrix in the file."""
    grids = {}
    for t in reader.tensors:
        name = hf_name(t.name)
        read = READERS.get(t.tensor_type.name)
        if name is None or read is None:
            continue
        grid = read(t.data, tuple(int(d) for d in reversed(t.shape)))
        heads = _permuted_heads(name, cfg)
        if heads:  # llama.cpp interleaved the rotary halves of these rows
            grid = map_rows(grid, lambda x: torch.from_numpy(unpermute(x.numpy(), heads)))
        grids[name] = grid
    return grids


def _permuted_heads(name: str, cfg: ModelConfig) -> int:
    if cfg.model_type != "llama":
        return 0
    if name.endswith("q_proj.weight"):
        return cfg.num_heads
    return cfg.num_kv_heads if name.endswith("k_proj.weight") else 0
