"""Host time per round: the wall time of one decode / verify round on a tiny random model, whose
kernels cost next to nothing, so what remains is Python, bookkeeping and dispatch.

`python -m saguaro.bench.host_time [--baseline-rev REV]` measures AR, SD and SSD at batch 1 and 8
with this tree's code and, side by side, with another revision's (interleaved repeats).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys

log = logging.getLogger(__name__)
CASES = [("ar", 1), ("ar", 8), ("sd", 1), ("sd", 8), ("ssd", 1), ("ssd", 8)]
OPTIONS = {"ar": {}, "sd": dict(k=3), "ssd": dict(k=3, fanout=1, backup="ngram", ssd_worker="thread")}


def measure(mode: str, batch: int, tokens: int) -> float:
    """Milliseconds per round (median of three calls) of `batch` greedy requests of `tokens` tokens."""
    import statistics

    import torch

    from saguaro import LLM, SamplingParams

    torch.set_num_threads(1)
    draft = None if mode == "ar" else "random:tiny:7"
    with LLM("random:tiny", draft=draft, mode=mode, dtype="float32", **OPTIONS[mode]) as llm:
        params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
        prompts = [[1 + i, 2, 3, 4] for i in range(batch)]
        llm.generate(prompts, params)  # warm-up (and the SSD plan)
        per_round = []
        for _ in range(3):
            res = llm.generate(prompts, params)
            m = res[0].metrics
            rounds = m.speculation.rounds if m.speculation is not None else m.decode_tokens
            per_round.append(max(r.metrics.decode_s for r in res) / rounds * 1e3)
    return statistics.median(per_round)


def run_case(mode: str, batch: int, tokens: int, env: dict) -> float:
    # By path, not -m: another revision (on PYTHONPATH) may not have this module.
    cmd = [sys.executable, __file__, "--one", mode, str(batch), "--tokens", str(tokens)]
    out = subprocess.run(cmd, capture_output=True, text=True, **env)
    if out.returncode != 0:
        raise RuntimeError(f"host-time run {mode} x{batch} failed:\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m saguaro.bench.host_time", description=__doc__)
    p.add_argument("--one", nargs=2, metavar=("MODE", "BATCH"), help=argparse.SUPPRESS)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--baseline-rev", default=None, help="also run this git revision's code, side by side")
    p.add_argument("--repeat", type=int, default=2, help="interleaved passes")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.one:
        print(measure(args.one[0], int(args.one[1]), args.tokens))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from saguaro.bench.main import baseline_worktree, revision_env

    trees = {"this tree": {}}
    if args.baseline_rev:
        path = str(baseline_worktree(args.baseline_rev))
        trees[f"@{args.baseline_rev}"] = revision_env({"pythonpath": path})
    times = {(name, case): [] for name in trees for case in CASES}
    for rep in range(args.repeat):
        for case in CASES:
            for name, env in trees.items():
                times[(name, case)].append(run_case(*case, args.tokens, env))
                log.info("pass %d %s %s x%d: %.2f ms/round", rep + 1, name, *case, times[(name, case)][-1])
    lines = [f"{'mode':6} {'batch':>5} " + " ".join(f"{name + ' ms':>16}" for name in trees)
             + ("   new / old" if args.baseline_rev else "")]
    rows = []
    for case in CASES:
        ms = [min(times[(name, case)]) for name in trees]
        rows.append({"mode": case[0], "batch": case[1], **dict(zip(trees, ms))})
        lines.append(f"{case[0]:6} {case[1]:5d} " + " ".join(f"{m:16.2f}" for m in ms)
                     + (f"   {ms[0] / ms[1]:9.2f}x" if len(ms) == 2 else ""))
    table = "\n".join(lines)
    sys.stdout.write(table + "\n")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"table": table, "rows": rows, "tokens": args.tokens}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
