"""The messages between the engine and the draft worker, as fixed-size tensors.

Round messages are tensors so the worker can post a non-blocking receive and keep drafting
until the outcome arrives; rarer control messages are pickled objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CMD_ROUND, CMD_END = 1, 2
K_MAX = 16  # the widest speculation a reply can carry


HEAD = 4  # command, rows the worker holds, the engine's verify time (us), rows added this round


def outcome_buffer(max_batch: int) -> torch.Tensor:
    return torch.zeros(HEAD + 3 * max_batch, dtype=torch.int64)


def encode_outcomes(max_batch: int, keep: list[bool], outcomes: list[tuple[int, int]], verify_us: int,
                    added: int = 0) -> torch.Tensor:
    """keep: one flag per row the worker holds now; outcomes: (n, t) for each kept row, in order,
    then for each of the `added` new rows (whose trunks follow as an object message)."""
    if sum(keep) + added != len(outcomes) or len(keep) > max_batch or len(outcomes) > max_batch:
        raise ValueError("one outcome per kept or added row, at most max_batch rows")
    buf = outcome_buffer(max_batch)
    buf[0], buf[1], buf[2], buf[3] = CMD_ROUND, len(keep), verify_us, added
    buf[HEAD : HEAD + len(keep)] = torch.tensor([int(x) for x in keep], dtype=torch.int64)
    flat = [v for pair in outcomes for v in pair]
    if flat:
        buf[HEAD + len(keep) : HEAD + len(keep) + len(flat)] = torch.tensor(flat, dtype=torch.int64)
    return buf


def encode_end(max_batch: int) -> torch.Tensor:
    buf = outcome_buffer(max_batch)
    buf[0] = CMD_END
    return buf


def decode_outcomes(buf: torch.Tensor) -> tuple[int, list[bool], list[tuple[int, int]], int, int]:
    """-> (command, keep flags, outcomes of kept then added rows, engine's verify time in
    microseconds, rows added)."""
    cmd, rows, verify_us, added = (int(x) for x in buf[:HEAD].tolist())
    keep = [bool(x) for x in buf[HEAD : HEAD + rows].tolist()]
    flat = buf[HEAD + rows : HEAD + rows + 2 * (sum(keep) + added)].tolist()
    return cmd, keep, list(zip(flat[0::2], flat[1::2])), verify_us, added


@dataclass
class Reply:
    """The worker's answer to a round: the next speculation of each row."""

    tokens: list[list[int]]  # per row, the speculation (may be empty: a plain AR step)
    hit: list[bool]  # whether it came from the speculation cache
    q: torch.Tensor | None  # [rows_with_q, K, vocab] float32, for rows whose flag has_q is set
    has_q: list[bool]
    stats: dict  # the worker's figures for this round

    STAT_NAMES = ("glue_s", "branch_s", "idle_s", "backup_s", "k", "branches")


def reply_buffers(max_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty (header [max_batch, 3 + K_MAX] int64, stats float64) tensors to receive a reply into."""
    return torch.zeros(max_batch, 3 + K_MAX, dtype=torch.int64), torch.zeros(len(Reply.STAT_NAMES), dtype=torch.float64)


def encode_reply(reply: Reply, max_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    head = reply_buffers(max_batch)[0]
    for b, toks in enumerate(reply.tokens):
        head[b, 0], head[b, 1], head[b, 2] = int(reply.hit[b]), len(toks), int(reply.has_q[b])
        if len(toks) > K_MAX:
            raise ValueError(f"speculation of {len(toks)} tokens exceeds K_MAX={K_MAX}")
        if toks:
            head[b, 3 : 3 + len(toks)] = torch.tensor(toks, dtype=torch.int64)
    stats = torch.tensor([float(reply.stats.get(n, 0.0)) for n in Reply.STAT_NAMES], dtype=torch.float64)
    return head, stats


def decode_reply(head: torch.Tensor, stats: torch.Tensor, rows: int) -> Reply:
    tokens = [head[b, 3 : 3 + int(head[b, 1])].tolist() for b in range(rows)]
    hit = [bool(head[b, 0]) for b in range(rows)]
    has_q = [bool(head[b, 2]) for b in range(rows)]
    return Reply(tokens, hit, None, has_q, dict(zip(Reply.STAT_NAMES, stats.tolist())))


def pack_q(qs: list[torch.Tensor | None], k: int, vocab: int) -> torch.Tensor | None:
    """Stack the q of rows that have one into [count, K, vocab], zero-padded past each row's length."""
    present = [q for q in qs if q is not None]
    if not present:
        return None
    out = torch.zeros(len(present), k, vocab, dtype=torch.float32)
    for i, q in enumerate(present):
        out[i, : q.shape[0]] = q
    return out
