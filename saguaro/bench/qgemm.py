"""Quantized matmul kernels, Saguaro's native ones against PyTorch's, on the bundled target's shapes.

int6 (the file's Q6_K tensors) is compared with what those tensors run as on PyTorch's kernels,
int8 per channel; the int8 rows also show Saguaro's own int8, which they ran as before int6.

Each kernel cycles over enough weight copies that every call streams its weights from memory, as
decoding does; kernels are timed in interleaved passes and the median pass is reported, so a
busy neighbour on the same cores disturbs all of them alike.

    python -m saguaro.bench.qgemm [--threads 1 2] [--rows 1 4] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from saguaro.bench.roofline import linear_bytes
from saguaro.quant.grids import Int6Grid, grid_from_float
from saguaro.quant.linear import Int4Linear, Int8Linear
from saguaro.quant.native.build import isa, load_kernels
from saguaro.quant.native.linear import NativeInt4Linear, NativeInt6Linear, NativeInt8Linear

# (name, out, in) of Qwen2.5-Coder-1.5B's linears
SHAPES = [("gate_up", 17920, 1536), ("down", 1536, 8960), ("qkv", 2048, 1536), ("head", 151936, 1536)]
STREAM_BYTES = 256 << 20  # weights cycled per kernel: far beyond any cache
KERNELS = {  # (bits, path) -> a linear from the float weight and its int4 and int6 grids
    ("int4", "torch"): lambda w, g: Int4Linear(g["int4"], torch.bfloat16),
    ("int4", "native"): lambda w, g: NativeInt4Linear(g["int4"], torch.bfloat16),
    ("int8", "torch"): lambda w, g: Int8Linear(w, torch.bfloat16),
    ("int8", "native"): lambda w, g: NativeInt8Linear(w, torch.bfloat16),
    ("int6", "native"): lambda w, g: NativeInt6Linear(g["int6"], torch.bfloat16),
}
BASELINE = {"int4": ("int4", "torch"), "int6": ("int8", "torch"), "int8": ("int8", "torch")}


def copies(make, w: torch.Tensor, grid) -> list:
    first = make(w, grid)
    return [first] + [make(w, grid) for _ in range(max(1, STREAM_BYTES // linear_bytes(first)) - 1)]


def time_calls(linears: list, x: torch.Tensor, calls: int) -> float:
    """Milliseconds per call, cycling over the copies."""
    start = time.perf_counter()
    for i in range(calls):
        linears[i % len(linears)](x)
    return (time.perf_counter() - start) / calls * 1e3


def bench_shape(name: str, out: int, inp: int, threads: list[int], rows: list[int], repeats: int) -> list[dict]:
    w = torch.randn(out, inp) * 0.02
    six = Int6Grid(torch.randint(0, 64, (out, inp), dtype=torch.uint8), torch.rand(out, inp // 16) * 1e-3)
    grids = {"int4": grid_from_float(w, 32), "int6": six}
    kinds = [k for k in KERNELS if not (name == "head" and k[0] == "int4")]  # the target's head is int6/int8
    linears = {k: copies(KERNELS[k], w, grids) for k in kinds}
    del w, grids, six
    results = []
    for t in threads:
        torch.set_num_threads(t)
        for m in rows:
            x = torch.randn(m, inp).to(torch.bfloat16)
            calls = max(4, min(64, int(2e9 / (out * inp))))
            times = {k: [] for k in kinds}
            for k in kinds:
                time_calls(linears[k], x, len(linears[k]))  # warm up
            for _ in range(repeats):
                for k in kinds:
                    times[k].append(time_calls(linears[k], x, calls))
            for bits in ("int4", "int6", "int8"):
                if (bits, "native") not in times:
                    continue
                ms = {"torch": statistics.median(times[BASELINE[bits]]),
                      "native": statistics.median(times[(bits, "native")])}
                gbs = linear_bytes(linears[(bits, "native")][0]) / ms["native"] / 1e6
                results.append(dict(shape=name, out=out, inp=inp, bits=bits, threads=t, rows=m,
                                    torch_ms=round(ms["torch"], 4), native_ms=round(ms["native"], 4),
                                    speedup=round(ms["torch"] / ms["native"], 2), native_gbs=round(gbs, 1)))
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m saguaro.bench.qgemm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rows", type=int, nargs="+", default=[1, 4], help="activation rows (tokens) per call")
    p.add_argument("--shapes", nargs="+", default=[s[0] for s in SHAPES], choices=[s[0] for s in SHAPES])
    p.add_argument("--repeat", type=int, default=7, help="interleaved passes; the median is reported")
    p.add_argument("--out", help="also write the results as JSON here")
    args = p.parse_args(argv)
    if not load_kernels():
        raise SystemExit("Saguaro's CPU kernels do not build here; nothing to compare")
    rows = []
    for name, out, inp in SHAPES:
        if name in args.shapes:
            rows += bench_shape(name, out, inp, args.threads, args.rows, args.repeat)
    header = f"{'shape':<8} {'out x in':>13} {'bits':>4} {'thr':>3} {'M':>2} {'torch ms':>9} {'native ms':>9} " \
             f"{'speedup':>7} {'GB/s':>5}"
    print(f"kernels: {isa()}, torch {torch.__version__}")
    print(header)
    for r in rows:
        print(f"{r['shape']:<8} {r['out']:>6}x{r['inp']:<6} {r['bits']:>4} {r['threads']:>3} {r['rows']:>2} "
              f"{r['torch_ms']:>9.3f} {r['native_ms']:>9.3f} {r['speedup']:>6.2f}x {r['native_gbs']:>5.1f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"isa": isa(), "torch": torch.__version__, "repeat": args.repeat, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
