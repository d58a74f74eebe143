"""CUDA graphs of a runner's static-shaped forwards: captured once per shape, then replayed.

With static shapes (saguaro.engine.runner) a decode, verify or branch forward repeats its shapes
from round to round, and everything it reads lives at fixed addresses: the KV pool, allocated
once, and the static input buffers kept here. One capture per shape key then replaces the
forward's few hundred kernel launches (and the Python that issues them) with a single replay.

The capture mechanics sit behind a small backend so the bookkeeping runs anywhere:
`CudaCapture` records real CUDA graphs; `EagerCapture` runs the recorded closure on the static
buffers instead of replaying, which is exactly the data path a replay takes (inputs copied into
the buffers the capture saw, the output read from the buffer the capture wrote), so CPU tests
check that nothing is read from or written to anywhere else.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch

from saguaro.errors import UnsupportedEnvironmentError

log = logging.getLogger(__name__)
GRAPHS_ENV = "SAGUARO_CUDA_GRAPHS"
GRAPH_CHOICES = ("auto", "off", "eager")
MAX_GRAPH_WIDTH = 16  # decode, verify (K + 1 <= 9), glue and branch steps; prompt chunks run eagerly


@dataclass(frozen=True, order=True)
class ShapeKey:
    """What a captured forward is specific to. `kind`: "last" (logits at one index per row),
    "all" (logits at every position) or "at" (caller-chosen positions and mask, SSD branches)."""

    rows: int
    width: int
    kind: str
    start: int = 0  # the view's first pool row

    @property
    def size(self) -> int:
        return self.rows * self.width


def capture_order(keys) -> list[ShapeKey]:
    """Largest first: later, smaller captures then fit in the memory the first one's pool reserved."""
    return sorted(set(keys), key=lambda k: (-k.size, -k.rows, k.kind, k.start))


class EagerCapture:
    """A stand-in backend: 'replay' runs the closure on the static buffers (CPU tests)."""

    def capture(self, body: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
        out = body()

        def replay() -> None:
            out.copy_(body())

        return replay, out


class CudaCapture:
    """Real CUDA graphs, all of one runner's in one memory pool, captured on the calling thread's
    stream context; `thread_local` capture so an SSD worker thread may launch work meanwhile."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pool = torch.cuda.graph_pool_handle()

    def capture(self, body: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):  # warm-up: lazy inits (cuBLAS handles, workspaces) before capture
            body()
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            out = body()
        return graph.replay, out


class _Graph:
    def __init__(self, replay: Callable[[], None], inputs: dict[str, torch.Tensor], out: torch.Tensor):
        self.replay, self.inputs, self.out = replay, inputs, out


class GraphSet:
    """The captured forwards of one runner over one KV pool, by shape key.

    `forward(key, pool, body, **inputs)`: `body(**static)` is the forward over static buffers
    shaped like `inputs`; the first call with a key captures it, every call copies `inputs` into
    the buffers and replays. Graphs are kept for the last POOLS pools used (an engine's pool and
    a scratch one, say); an older pool's graphs are dropped.
    """

    POOLS = 2

    def __init__(self, backend):
        self.backend = backend
        self.pools: OrderedDict[int, tuple[object, dict[ShapeKey, _Graph]]] = OrderedDict()
        self.captures = 0

    def graphs(self, pool) -> dict[ShapeKey, _Graph]:
        """The graphs writing into `pool` (a root KVCache), most recently used pool last."""
        entry = self.pools.get(id(pool))
        if entry is None or entry[0] is not pool:
            entry = self.pools[id(pool)] = (pool, {})
            while len(self.pools) > self.POOLS:
                self.pools.popitem(last=False)
        self.pools.move_to_end(id(pool))
        return entry[1]

    @torch.inference_mode()
    def forward(self, key: ShapeKey, pool, body: Callable[..., torch.Tensor], **inputs: torch.Tensor) -> torch.Tensor:
        graphs = self.graphs(pool)
        graph = graphs.get(key)
        if graph is None:
            static = {name: t.clone() for name, t in inputs.items()}
            replay, out = self.backend.capture(lambda: body(**static))
            graph = graphs[key] = _Graph(replay, static, out)
            self.captures += 1
            log.debug("captured %s (%d graphs for this pool)", key, len(graphs))
        for name, t in inputs.items():
            graph.inputs[name].copy_(t)
        graph.replay()
        return graph.out.clone()  # the buffer is rewritten by the next replay


def graphs_for(device: torch.device, static_shapes: bool) -> GraphSet | None:
    """The graphs a runner with static shapes uses, by SAGUARO_CUDA_GRAPHS: auto (CUDA graphs on a
    CUDA device, none elsewhere), off (static shapes without graphs: A/B timing), eager (the
    stand-in backend on any device: tests of the capture bookkeeping on CPU)."""
    choice = os.environ.get(GRAPHS_ENV, "auto").strip().lower() or "auto"
    if choice not in GRAPH_CHOICES:
        raise UnsupportedEnvironmentError(f"{GRAPHS_ENV}={choice!r} is not one of {', '.join(GRAPH_CHOICES)}")
    if not static_shapes or choice == "off":
        return None
    if choice == "eager":
        return GraphSet(EagerCapture())
    return GraphSet(CudaCapture(device)) if device.type == "cuda" else None
