"""Feeds new tokens of a batch of sequences through a decoder, one forward for the whole batch.

The cache of each model holds its trunk minus the last token; a feed appends tokens per row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from saguaro.engine.graphs import MAX_GRAPH_WIDTH, GraphSet, ShapeKey, capture_order, graphs_for
from saguaro.kv_cache import KVCache
from saguaro.model.decoder import Decoder


MAX_STATIC_WIDTH = 64  # wider feeds (prompt chunks) keep their exact shape


def causal_mask(lengths: list[int], width: int, kv_len: int, device) -> torch.Tensor:
    """[B, width, kv_len] bool: row b's query i sits at slot lengths[b] + i and sees slots up to it."""
    return append_inputs(torch.tensor(lengths, device=device), width, kv_len)[1]


def append_inputs(lengths: torch.Tensor, width: int, kv_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Slots (= RoPE positions) [B, width] and mask [B, width, kv_len] for appending `width`
    tokens to rows of these lengths (a device tensor [B]): made on the device, no host values.

    Padded queries (past a row's real count) see garbage; their outputs are dropped.
    """
    slots = lengths.view(-1, 1) + torch.arange(width, device=lengths.device)  # [B, width]
    kv = torch.arange(kv_len, device=lengths.device).view(1, 1, -1)
    return slots, kv <= slots.unsqueeze(-1)


def bucket(n: int, extra=()) -> int:
    """The static size a dimension of n is padded to: the next power of two, or a registered
    size in between (a verify width K + 1, say)."""
    power = 1 << max(n - 1, 0).bit_length()
    return min([power] + [e for e in extra if n <= e < power])


class ModelRunner:
    def __init__(self, decoder: Decoder, draft: bool = False, static_shapes: bool = False,
                 graphs: GraphSet | None | str = "auto"):
        """`draft`: tokens this model cannot embed (a target's larger vocabulary, e.g. its padding
        rows) are fed as token 0 instead of failing. Only a draft may do this: its proposals are
        verified, so a poorer guess costs speed, never exactness.

        `static_shapes`: capture-ready forwards. Decode, verify and branch feeds pad the batch to
        a bucket (the pool rows after it run as padding), the width to a bucket, and attend over
        the cache's whole capacity with a mask made on the device from a lengths tensor, so a
        forward's shapes repeat from round to round (CUDA graphs, torch.compile).

        `graphs`: where static forwards of up to MAX_GRAPH_WIDTH tokens over the pool's leading
        rows are captured and replayed (saguaro.engine.graphs); "auto" is CUDA graphs with static
        shapes on a CUDA device, None is none.
        """
        self.decoder = decoder
        self.device = decoder.device
        self.draft = draft
        self.static_shapes = static_shapes
        self.widths: set[int] = set()  # extra width buckets (register_width)
        self.graphs = graphs_for(self.device, static_shapes) if graphs == "auto" else graphs

    def register_width(self, width: int) -> None:
        """A width this runner will feed often (SD's K + 1): a bucket of its own, not padded."""
        self.widths.add(width)

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
        width = max(counts, default=0)
        if width < 1:
            raise ValueError("nothing to feed")
        # Short rows are padded; pads land past the row's length and are overwritten later.
        tokens = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=self.device)
        return self.feed_tokens(cache, tokens, counts, all_logits)

    def feed_tokens(self, cache: KVCache, tokens: torch.Tensor, counts: list[int] | None = None,
                    all_logits: bool = False) -> torch.Tensor:
        """`feed` with the tokens already on the device, [B, width] (counts[b] real per row, all
        by default): a drafted token goes straight back in without a host round trip."""
        b, width = tokens.shape
        counts = [width] * b if counts is None else counts
        lengths = list(cache.lengths)
        cache.check_room(max(n + width for n in lengths))
        view, rows, ww, kv_len = self._static(cache, width) or (cache, b, width, max(n + width for n in lengths))
        if (rows, ww) != (b, width):
            tokens = F.pad(tokens, (0, ww - width, 0, rows - b))
        slots, mask = append_inputs(torch.tensor(list(view.lengths), device=self.device), ww, kv_len)
        index = None
        if not all_logits:
            last = [max(n - 1, 0) for n in counts] + [0] * (rows - b)
            index = torch.tensor(last, device=self.device).unsqueeze(1)  # [rows, 1]
        logits = self._forward("all" if all_logits else "last", view, self._inputs(tokens), slots, slots, mask, index)
        for row, n in enumerate(counts):
            cache.advance(row, n)
        logits = logits[:b].float()
        return logits[:, :width] if all_logits else logits[:, 0]

    def _static(self, cache: KVCache, width: int) -> tuple[KVCache, int, int, int] | None:
        """(view, rows, width, kv_len) of the padded static shape, or None to run exactly."""
        if not self.static_shapes or width > MAX_STATIC_WIDTH:
            return None
        ww = bucket(width, self.widths)
        if max(cache.lengths, default=0) + ww > cache.capacity:
            ww = width
        for rows in (bucket(cache.batch), cache.batch):  # a smaller pool: pad the width only
            padded = cache.padded(rows, ww)
            if padded is not None:
                return padded[0], rows, ww, cache.capacity
        return None

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
        With static shapes the batch is padded to a bucket and the mask to the whole capacity.
        """
        cache.check_room(int(slots.max()) + 1)
        tokens, positions, slots, mask = (x.to(self.device) for x in (tokens, positions, slots, mask))
        b, t = tokens.shape
        static = self.static_shapes and cache.padded(bucket(b), t)
        forward = self._exact
        if static:
            view, spare = static
            rows, cap = view.batch, cache.capacity
            spare_slots, spare_mask = append_inputs(torch.tensor(spare, device=self.device, dtype=torch.long), t, cap)
            tokens = F.pad(tokens, (0, 0, 0, rows - b))
            positions = torch.cat([positions, spare_slots])
            slots = torch.cat([slots, spare_slots])
            mask = torch.cat([F.pad(mask, (0, cap - mask.shape[-1])), spare_mask])
            cache, forward = view, self._forward
        return forward("at", cache, self._inputs(tokens), positions, slots, mask, None)[:b].float()

    def _exact(self, kind, view, tokens, positions, slots, mask, index) -> torch.Tensor:
        return self.decoder.forward(tokens, positions, view, slots, mask, logit_index=index)

    def _forward(self, kind: str, view: KVCache, tokens, positions, slots, mask, index) -> torch.Tensor:
        """The decoder's forward, replayed from a captured graph where this shape has one."""
        rows, width = tokens.shape
        if self.graphs is None or view.capacity != mask.shape[-1] or width > MAX_GRAPH_WIDTH or view._start:
            return self._exact(kind, view, tokens, positions, slots, mask, index)

        fixed = view.window(0, rows)  # its batch stays `rows`, whatever happens to the pool's

        def body(tokens, positions, slots, mask, index=None):  # called under inference mode
            return self.decoder.compute(tokens, positions, fixed, slots, mask, logit_index=index)

        inputs = dict(tokens=tokens, positions=positions, slots=slots, mask=mask)
        if index is not None:
            inputs["index"] = index
        return self.graphs.forward(ShapeKey(rows, width, kind), view._root, body, **inputs)

    def capture(self, pool: KVCache) -> int:
        """Capture ahead of time, largest first, the decode and verify graphs of an empty pool's
        power-of-two batches: one-token feeds and each registered width (SD's K + 1) with all
        logits. Each capture feeds zeros to temporary rows, then drops them. Returns how many."""
        if self.graphs is None or pool.batch:
            return 0
        rows = [1 << i for i in range(pool.max_rows.bit_length()) if 1 << i <= pool.max_rows]
        shapes = [(1, "last")] + [(w, "all") for w in self.widths if w <= MAX_GRAPH_WIDTH]
        keys = capture_order(ShapeKey(r, w, kind) for r in rows for w, kind in shapes if w <= pool.capacity)
        before = self.graphs.captures
        for key in keys:
            self.feed_tokens(pool.add_rows(key.rows), torch.zeros(key.rows, key.width, dtype=torch.long,
                                                                   device=self.device), all_logits=key.kind == "all")
            pool.keep_rows([])
        return self.graphs.captures - before
