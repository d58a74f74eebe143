"""Feeds new tokens of a batch of sequences through a decoder, one forward for the whole batch.

The cache of each model holds its trunk minus the last token; a feed appends tokens per row.
"""

from __future__ import annotations

import torch

from saguaro.kv_cache import KVCache
from saguaro.model.decoder import Decoder


def causal_mask(lengths: list[int], width: int, kv_len: int, device) -> torch.Tensor:
    """[B, width, kv_len] bool: row b's query i sits at slot lengths[b] + i and sees slots up to it."""
    start = torch.tensor(lengths, device=device).view(-1, 1, 1)
    q = torch.arange(width, device=device).view(1, -1, 1)
    kv = torch.arange(kv_len, device=device).view(1, 1, -1)
    return kv <= start + q  # padded queries (i >= counts[b]) see garbage; their outputs are dropped


class ModelRunner:
    def __init__(self, decoder: Decoder, draft: bool = False):
        """`draft`: tokens this model cannot embed (a target's larger vocabulary, e.g. its padding
        rows) are fed as token 0 instead of failing. Only a draft may do this: its proposals are
        verified, so a poorer guess costs speed, never exactness."""
        self.decoder = decoder
        self.device = decoder.device
        self.draft = draft

    def _inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.draft:
            return tokens.masked_fill(tokens >= self.vocab_size, 0)
        return tokens

    @property
    def vocab_size(self) -> int:
        return self.decoder.cfg.vocab_size

    def new_cache(self, batch: int, capacity: int, max_rows: int | None = None) -> KVCache:
        return self.decoder.new_cache(batch, capacity, max_rows)

    def feed(self, cache: KVCache, rows: list[list[int]], all_logits: bool = False) -> torch.Tensor:
        """Append rows[b] to sequence b of `cache` and run one forward.

        Returns float32 logits [B, width, vocab] for every fed position when `all_logits`
        (padded positions are garbage), else [B, vocab] at each row's last fed token. A row may
        be empty (its logits are garbage), so rows of a batch can be fed unevenly.
        """
        counts = [len(r) for r in rows]
        width = max(counts)
        if width < 1:
            raise ValueError("nothing to feed")
        lengths = list(cache.lengths)
        kv_len = max(l + width for l in lengths)
        cache.check_room(kv_len)
        # Short rows are padded; pads land past the row's length and are overwritten later.
        tokens = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=self.device)
        slots = torch.tensor(lengths, device=self.device).unsqueeze(1) + torch.arange(width, device=self.device)
        mask = causal_mask(lengths, width, kv_len, self.device)
        index = None
        if not all_logits:
            index = (torch.tensor(counts, device=self.device).unsqueeze(1) - 1).clamp(min=0)  # [B, 1]
        logits = self.decoder.forward(self._inputs(tokens), slots, cache, slots, mask, logit_index=index)
        for b, n in enumerate(counts):
            cache.advance(b, n)
        logits = logits.float()
        return logits if all_logits else logits[:, 0]

    def prefill(self, cache: KVCache, rows: list[list[int]], chunk: int = 512) -> None:
        """Fill the cache with each row's tokens (rows may be empty), in chunks to bound memory."""
        for start in range(0, max(map(len, rows), default=0), chunk):
            self.feed(cache, [r[start : start + chunk] for r in rows])

    def sync(self) -> None:
        """Wait for this thread's queued device work (timing on CUDA); a no-op on CPU."""
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()

    def forward_at(self, cache: KVCache, tokens, positions, slots, mask) -> torch.Tensor:
        """A forward with caller-chosen positions, slots and mask (SSD branches); lengths unchanged.

        tokens, positions, slots [B, T]; mask [B, T, kv_len]. Returns float32 logits [B, T, vocab].
        """
        cache.check_room(int(slots.max()) + 1)
        tokens, positions, slots, mask = (x.to(self.device) for x in (tokens, positions, slots, mask))
        return self.decoder.forward(self._inputs(tokens), positions, cache, slots, mask).float()
