"""Attention masks, positions and cache slots for drafting all SSD branches in one batched forward.

Draft KV layout for one sequence: [0, trunk_len) trunk, then s_1..s_K, then the branch region.
Branch b at depth d (d = 0 is its guessed token t) sits at slot trunk_len + K + d * num_branches + b.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _branch_base(trunk_len: int, k: int) -> int:
    return trunk_len + k


def _check_accepted(accepted: Sequence[int], k: int | None = None) -> None:
    if len(accepted) == 0:
        raise ValueError("need at least one branch")
    limit = k if k is not None else max(accepted)
    if any(n < 0 or n > limit for n in accepted):
        raise ValueError(f"accepted counts must be in 0..{limit}, got {list(accepted)}")


def branch_mask(
    trunk_len: int,
    k: int,
    accepted: Sequence[int],
    depth: int,
    kv_len: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Which slots each branch's query at `depth` may attend to (True = may attend).

    Branch b (outcome with accepted count accepted[b]) sees the trunk, s_1..s_{accepted[b]} and its
    own tokens at depths 0..depth; never other branches, rejected s_i, or later depths.
    Returns [num_branches, kv_len] bool; slots past the branch region are False.
    """
    _check_accepted(accepted, k)
    num_branches = len(accepted)
    base = _branch_base(trunk_len, k)
    if depth < 0 or kv_len < base + (depth + 1) * num_branches:
        raise ValueError(f"kv_len {kv_len} too small for depth {depth} with {num_branches} branches "
                         f"(need {base + (depth + 1) * num_branches})")
    slots = torch.arange(kv_len, device=device)  # [kv_len]
    n = torch.as_tensor(list(accepted), dtype=torch.long, device=device)  # [num_branches]
    # s_1..s_K directly follow the trunk, so trunk + s_1..s_n is one prefix of the cache.
    prefix = slots.unsqueeze(0) < (trunk_len + n).unsqueeze(1)  # [num_branches, kv_len]
    rel = slots - base  # [kv_len]
    in_region = (rel >= 0) & (rel < (depth + 1) * num_branches)  # [kv_len]
    branch_of_slot = rel.remainder(num_branches)  # [kv_len]
    own = in_region.unsqueeze(0) & (branch_of_slot.unsqueeze(0) == torch.arange(num_branches, device=device).unsqueeze(1))
    return prefix | own  # [num_branches, kv_len]


def branch_positions(trunk_len: int, accepted: Sequence[int], depth: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """RoPE positions of the branch tokens at `depth`: trunk_len + n_b + depth; [num_branches] int64.

    s_i sits at logical position trunk_len + i - 1, so the guessed token after s_n is at trunk_len + n.
    """
    _check_accepted(accepted)
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    n = torch.as_tensor(list(accepted), dtype=torch.long, device=device)  # [num_branches]
    return trunk_len + n + depth


def branch_slots(trunk_len: int, k: int, num_branches: int, depth: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Cache slots where the branch tokens at `depth` are written; [num_branches] int64."""
    if depth < 0 or num_branches < 1:
        raise ValueError(f"need depth >= 0 and num_branches >= 1, got {depth}, {num_branches}")
    start = _branch_base(trunk_len, k) + depth * num_branches
    return torch.arange(start, start + num_branches, device=device)  # [num_branches]


def causal_mask(lengths: torch.Tensor, new: int, kv_len: int) -> torch.Tensor:
    """Mask for appending `new` tokens per sequence after lengths[b] cached ones; [batch, new, kv_len] bool.

    New token i of sequence b sits at slot lengths[b] + i and sees slots 0..lengths[b] + i.
    """
    if new < 0 or bool((lengths + new > kv_len).any()):
        raise ValueError(f"kv_len {kv_len} cannot hold lengths {lengths.tolist()} plus {new} new tokens")
    slots = torch.arange(kv_len, device=lengths.device)  # [kv_len]
    limit = lengths.long().view(-1, 1) + torch.arange(new, device=lengths.device).view(1, -1) + 1  # [batch, new]
    return slots.view(1, 1, -1) < limit.unsqueeze(-1)  # [batch, new, kv_len]
