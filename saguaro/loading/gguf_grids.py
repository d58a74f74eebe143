"""What a GGUF file says about precision: Q4_K and Q6_K tensors as grids, and each tensor's bits.

The quantize transform runs Q4_K and Q6_K weights on their own grids, read from their blocks with
no float in between, and keeps other tensors that the file stores at 6 bits or more (Q8_0, F16)
off the 4-bit kernel.
"""

from __future__ import annotations

from typing import Any


from saguaro.loading.gguf_file import permuted_heads, unpermute
from saguaro.loading.gguf_reader import TensorInfo
from saguaro.quant.grids import Int4Grid, Int6Grid, grid_from_q4_k, grid_from_q6_k, map_rows

BITS = {"Q4_0": 4, "Q4_1": 4, "Q4_K": 4, "IQ4_NL": 4, "IQ4_XS": 4, "Q5_0": 5, "Q5_1": 5, "Q5_K": 5,
        "Q2_K": 2, "Q3_K": 3, "Q6_K": 6, "Q8_0": 8, "Q8_K": 8, "BF16": 16, "F16": 16, "F32": 32}
READERS = {"Q4_K": grid_from_q4_k, "Q6_K": grid_from_q6_k}


def source_bits(named: dict[str, TensorInfo]) -> dict[str, int]:
    """HF name -> bits per weight of the file's own encoding (unknown types count as 16)."""
    return {name: BITS.get(t.tensor_type.name, 16) for name, t in named.items()}


def native_grids(named: dict[str, TensorInfo], cfg: dict[str, Any]) -> dict[str, Int4Grid | Int6Grid]:
    """HF name -> the tensor's own grid, for every Q4_K and Q6_K matrix in the file."""
    grids = {}
    for name, t in named.items():
        read = READERS.get(t.tensor_type.name)
        if read is None:
            continue
        grid = read(t.data, t.rows_cols)
        heads = permuted_heads(name, cfg)
        if heads:  # llama.cpp interleaved the rotary halves of these rows
            grid = map_rows(grid, lambda x: unpermute(x, heads))
        grids[name] = grid
    return grids
