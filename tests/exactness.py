"""Statistical exactness harness for the tests: saguaro.testing.exactness, plus the exact
distribution computed with transformers (independent of Saguaro's decoder) by default."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from saguaro.testing.exactness import (
    TOP_P_MARGIN,
    chi_square_pvalue,
    chi_square_pvalue_joint,
    engine_logits,
    enumerate_distribution,
    filtered_probs,
    sample_continuations,
    sample_continuations_multi,
    write_tiny_pair,
)

__all__ = ["TOP_P_MARGIN", "chi_square_pvalue", "chi_square_pvalue_joint", "engine_logits", "enumerate_distribution",
           "exact_distribution", "filtered_probs", "hf_logits", "sample_continuations", "sample_continuations_multi",
           "write_tiny_pair"]


@functools.lru_cache(maxsize=8)
def hf_model(folder: str):
    """The transformers model of an HF folder, float32, eval mode (cached per folder)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model.eval()


@torch.no_grad()
def hf_logits(folder: str | Path, rows: list[list[int]]) -> torch.Tensor:
    """float32 logits `[len(rows), vocab]` after the last token of each row (rows of equal length)."""
    model = hf_model(str(folder))
    ids = torch.tensor(rows, dtype=torch.long)  # [rows, length]
    return model(input_ids=ids).logits[:, -1].float()


def exact_distribution(target_folder: str | Path, prompt_ids: list[int], n_tokens: int, temperature: float,
                       top_k: int = 0, top_p: float = 1.0, logits_fn=None) -> dict[tuple[int, ...], float]:
    """enumerate_distribution with the transformers model of `target_folder` unless `logits_fn`
    is given (a target as Saguaro executes it, e.g. quantized)."""
    logits_fn = logits_fn or (lambda rows: hf_logits(target_folder, rows))
    return enumerate_distribution(logits_fn, prompt_ids, n_tokens, temperature, top_k, top_p)
