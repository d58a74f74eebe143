"""Static shapes on the CPU: what capture-ready forwards cost where nothing is captured.

`python -m saguaro.bench.static_shapes` runs the bundled pair through the Engine with and
without static shapes (bucketed batch and width, attention over the pool's whole capacity),
interleaved, and prints decode tok/s with the static/dynamic ratio per mode and batch.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys

from saguaro.bench.prompts import PROMPTS

log = logging.getLogger(__name__)
CASES = [("ar", 1), ("ar", 3), ("sd", 1), ("sd", 3)]


def measure(mode: str, batch: int, static: bool, tokens: int, max_seq_len: int, dtype: str) -> float:
    """Aggregate decode tokens/s of `batch` greedy requests started together (after a warm-up)."""
    import time

    import torch

    from saguaro import Engine, SamplingParams

    torch.set_num_threads(2)
    options = dict(k=3) if mode == "sd" else {}
    with Engine(draft=None if mode == "ar" else "qwen2.5-coder-0.5b", mode=mode, dtype=dtype, max_batch=4,
                max_seq_len=max_seq_len, static_shapes=static, **options) as engine:
        params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
        prompts = [p for kind in PROMPTS.values() for p in kind][:batch]
        for rep in range(2):  # the first pass warms up
            for i, prompt in enumerate(prompts):
                engine.add_request(prompt, params, request_id=f"{rep}-{i}")
            started: set[str] = set()
            while len(started) < len(prompts):  # prefill: the clock starts once all decode
                started.update(o.request_id for o in engine.step() if o.new_token_ids)
            start, made = time.perf_counter(), 0
            while engine.has_unfinished():
                made += sum(len(o.new_token_ids) for o in engine.step())
            rate = made / (time.perf_counter() - start)
    return rate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m saguaro.bench.static_shapes", description=__doc__)
    p.add_argument("--one", nargs=3, metavar=("MODE", "BATCH", "STATIC"), help=argparse.SUPPRESS)
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--max-seq-len", type=int, default=2048, help="KV slots per row (the engine's default)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--repeat", type=int, default=2, help="interleaved passes")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.one:
        mode, batch, static = args.one
        print(measure(mode, int(batch), static == "1", args.tokens, args.max_seq_len, args.dtype))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results: dict[str, list[float]] = {}
    for _ in range(args.repeat):
        for mode, batch in CASES:
            for static in (0, 1):
                cmd = [sys.executable, "-m", "saguaro.bench.static_shapes", "--one", mode, str(batch), str(static),
                       "--tokens", str(args.tokens), "--max-seq-len", str(args.max_seq_len), "--dtype", args.dtype]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    raise RuntimeError(f"{mode} x{batch} static={static} failed:\n{out.stderr[-2000:]}")
                rate = float(out.stdout.strip().splitlines()[-1])
                results.setdefault(f"{mode} x{batch} static={static}", []).append(rate)
                log.info("%s x%d static=%d: %.2f tok/s", mode, batch, static, rate)
    best = {key: max(v) for key, v in results.items()}
    lines = ["| mode | batch | dynamic tok/s | static tok/s | static / dynamic |", "|---|---|---|---|---|"]
    for mode, batch in CASES:
        dyn, sta = best[f"{mode} x{batch} static=0"], best[f"{mode} x{batch} static=1"]
        lines.append(f"| {mode} | {batch} | {dyn:.2f} | {sta:.2f} | {sta / dyn:.2f} |")
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "runs": results, "best": best}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
