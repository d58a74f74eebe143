"""How often greedy SD departs from greedy AR in a given dtype, and at what logit margins.

`python -m saguaro.bench.divergence --dtype bfloat16`: the batched verify forward rounds
differently from the one-token forward, so near-ties can flip; this measures it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from saguaro.bench.prompts import all_prompts

log = logging.getLogger(__name__)


def first_divergence(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def main(argv: list[str] | None = None) -> int:
    from saguaro import LLM, SamplingParams

    p = argparse.ArgumentParser(prog="python -m saguaro.bench.divergence")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--out", default="docs/divergence.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    ar = LLM(dtype=args.dtype)
    prompts = [ar.chat_prompt([{"role": "user", "content": text}]) for _, text in all_prompts()]
    reference = [r.token_ids for r in ar.generate(prompts, params)]
    sd = LLM(mode="sd", k=args.k, dtype=args.dtype)
    rows = []
    for (kind, _), prompt, want in zip(all_prompts(), prompts, reference):
        have = sd.generate([prompt], params)[0].token_ids
        i = first_divergence(want, have)
        margin = None
        if i is not None:
            cache = ar.target.new_cache(1, len(prompt) + i + 1)
            logits = ar.target.feed(cache, [prompt + want[:i]])[0]
            top = logits.topk(2).values
            margin = float(top[0] - top[1])
        rows.append({"kind": kind, "diverged_at": i, "top2_margin": margin})
        log.info("%s: %s", kind, "identical" if i is None else f"diverges at token {i}, top-2 margin {margin:.4f}")
    with open(args.out, "w") as f:
        json.dump({"dtype": args.dtype, "k": args.k, "max_tokens": args.max_tokens, "rows": rows}, f, indent=1)
    same = sum(r["diverged_at"] is None for r in rows)
    sys.stdout.write(f"{same}/{len(rows)} prompts identical over {args.max_tokens} tokens in {args.dtype}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
