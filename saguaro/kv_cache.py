"""Per-layer key/value storage for a batch of sequences, allocated once and reused as a pool.

The tensors hold `max_rows` rows of `capacity` slots. The active sequences are rows
0..batch-1, in batch order: sequences join as the next rows (`add_rows`) and finished ones
leave by compaction (`keep_rows`), so a forward always reads the leading rows and nothing is
reallocated while an engine runs. Slots are written explicitly, so several tokens can be
appended at once, a sequence can be truncated (rollback of rejected tokens), and scratch tokens
(SSD branches) can live past the end.
"""

from __future__ import annotations

import torch

from saguaro.model.config import ModelConfig


class KVCache:
    def __init__(self, cfg: ModelConfig, batch: int, capacity: int, device, dtype, max_rows: int | None = None):
        """`batch` rows start active (length 0); `max_rows` (default `batch`) is the pool's size."""
        max_rows = batch if max_rows is None else max_rows
        if not 0 <= batch <= max_rows:
            raise ValueError(f"need 0 <= batch <= max_rows, got {batch} and {max_rows}")
        shape = (max_rows, cfg.num_kv_heads, capacity, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_layers)]
        self.capacity = capacity
        self.max_rows = max_rows
        self.lengths = [0] * batch  # committed tokens per active sequence
        self._root, self._start = self, 0  # a window's pool and first row (see `window`)

    @property
    def batch(self) -> int:
        return len(self.lengths)

    def check_room(self, needed: int) -> None:
        if needed > self.capacity:
            raise RuntimeError(f"KV cache overflow: {needed} slots needed, capacity {self.capacity}")

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """slots [B, T] for the first B rows; k, v [B, kv_heads, T, head_dim]."""
        rows = torch.arange(slots.shape[0], device=slots.device).unsqueeze(1)  # [B, 1]
        # Advanced indices around a slice put the indexed dims first: [B, T, kv_heads, head_dim].
        self.k[layer][rows, :, slots] = k.transpose(1, 2)
        self.v[layer][rows, :, slots] = v.transpose(1, 2)

    def view(self, layer: int, kv_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[batch, kv_heads, kv_len, head_dim] each: the active rows only."""
        b = self.batch
        return self.k[layer][:b, :, :kv_len], self.v[layer][:b, :, :kv_len]

    def truncate(self, seq: int, length: int) -> None:
        """Forget everything of `seq` past `length` (slots beyond are simply overwritten later)."""
        if not 0 <= length <= self.lengths[seq]:
            raise ValueError(f"cannot truncate sequence {seq} of length {self.lengths[seq]} to {length}")
        self.lengths[seq] = length

    def advance(self, seq: int, n: int) -> None:
        self.check_room(self.lengths[seq] + n)
        self.lengths[seq] += n

    # ---- the pool -------------------------------------------------------------------------------

    def add_rows(self, n: int) -> "KVCache":
        """`n` new empty sequences as the next rows; returns their window (to prefill them)."""
        if self.batch + n > self.max_rows:
            raise RuntimeError(f"KV pool full: {self.batch} of {self.max_rows} rows in use, {n} more asked")
        self.lengths += [0] * n
        return self.window(self.batch - n, self.batch)

    def keep_rows(self, rows: list[int]) -> None:
        """Keep the sequences `rows` (increasing), which become rows 0..len(rows)-1.

        Rows that move are copied down in place, up to their own length; nothing is reallocated.
        Copying in increasing order is safe: the source of row i is at or after i, and later
        sources lie after every row written before them.
        """
        if any(b <= a for a, b in zip(rows, rows[1:])) or any(not 0 <= r < self.batch for r in rows):
            raise ValueError(f"rows to keep must be increasing indices below {self.batch}, got {rows}")
        for i, r in enumerate(rows):
            n = self.lengths[r]
            if r != i and n:
                for t in self.k + self.v:
                    t[i, :, :n] = t[r, :, :n]
        self.lengths = [self.lengths[r] for r in rows]

    def window(self, start: int, stop: int) -> "KVCache":
        """Rows start..stop-1 as a cache of their own, sharing storage and lengths with this one
        (a joining sequence is prefilled alone; a round runs over the decoding rows only)."""
        if not 0 <= start <= stop <= self.batch:
            raise ValueError(f"bad row window {start}:{stop} of {self.batch} rows")
        part = object.__new__(KVCache)
        part.k = [t[start:stop] for t in self.k]
        part.v = [t[start:stop] for t in self.v]
        part.capacity = self.capacity
        part.max_rows = stop - start
        part.lengths = _LengthWindow(self.lengths, start, stop)
        part._root, part._start = self._root, self._start + start
        return part

    def padded(self, rows: int, width: int) -> tuple["KVCache", list[int]] | None:
        """These sequences plus the pool rows after them, `rows` in all, to run a padded batch
        (a static shape) that appends `width` tokens per row; None if the pool cannot.

        Returns that wider view and the lengths of the extra rows. A padding row writes its
        `width` slots right after its row's length, where anything is overwritten later, so
        whatever sequence owns that row (one still prefilling, or none) is left intact.
        """
        root, start, extra = self._root, self._start, rows - self.batch
        if extra < 0 or start + rows > root.max_rows:
            return None
        spare = [root.lengths[r] if r < root.batch else 0
                 for r in range(start + self.batch, start + rows)]
        if any(n + width > self.capacity for n in spare):
            return None
        part = object.__new__(KVCache)
        part.k = [t[start : start + rows] for t in root.k]
        part.v = [t[start : start + rows] for t in root.v]
        part.capacity, part.max_rows = self.capacity, rows
        part.lengths = list(self.lengths) + spare  # a copy: advancing is the caller's business
        part._root, part._start = root, start
        return part, spare


class _LengthWindow:
    """A live slice of a length list: reads and writes go to the parent list."""

    def __init__(self, parent: list[int], start: int, stop: int):
        self._parent, self._start, self._len = parent, start, stop - start

    def _index(self, i: int) -> int:
        if not -self._len <= i < self._len:
            raise IndexError(i)
        return self._start + (i % self._len)

    def __getitem__(self, i: int) -> int:
        return self._parent[self._index(i)]

    def __setitem__(self, i: int, value: int) -> None:
        self._parent[self._index(i)] = value

    def __len__(self) -> int:
        return self._len

    def __iter__(self):
        return iter(self._parent[self._start : self._start + self._len])

    def __eq__(self, other) -> bool:
        return list(self) == list(other)
