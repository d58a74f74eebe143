"""What quantization costs in quality: each target precision against float32 under teacher forcing.

`python -m saguaro.bench.quality` prints top-1 agreement with float32 and perplexity on about
2k tokens of held-out text (a Python standard-library module's source), as JSON and a table.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import sys

import torch

log = logging.getLogger(__name__)
CHUNK = 256


def held_out_ids(tokenizer, tokens: int) -> list[int]:
    import textwrap  # a file no benchmark prompt quotes

    ids = tokenizer.encode(inspect.getsource(textwrap), add_special_tokens=False)
    return ids[:tokens + 1]


@torch.inference_mode()
def teacher_forced(decoder, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax [n], log-probability of the true next token [n]) at every position."""
    from saguaro.engine.runner import ModelRunner

    runner = ModelRunner(decoder)
    cache = runner.new_cache(1, len(ids))
    tops, logps = [], []
    for start in range(0, len(ids) - 1, CHUNK):
        piece = ids[start:min(start + CHUNK, len(ids) - 1)]
        logits = runner.feed(cache, [piece], all_logits=True)[0]  # [len(piece), vocab]
        nxt = torch.tensor(ids[start + 1:start + 1 + len(piece)])
        tops.append(logits.argmax(-1))
        logps.append(torch.log_softmax(logits, -1).gather(1, nxt.unsqueeze(1)).squeeze(1))
    return torch.cat(tops), torch.cat(logps)


def main(argv: list[str] | None = None) -> int:
    from saguaro.loading.loader import load_model

    p = argparse.ArgumentParser(prog="python -m saguaro.bench.quality", description=__doc__)
    p.add_argument("--target", default="qwen2.5-coder-1.5b")
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--precisions", nargs="*", default=["float32", "bfloat16", "int8", "int4"])
    p.add_argument("--out", default=None, help="JSON file for the results")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows, reference = [], None
    for precision in args.precisions:
        dtype = precision if precision in ("float32", "bfloat16") else "bfloat16"
        quant = "none" if precision in ("float32", "bfloat16") else precision
        loaded = load_model(args.target, dtype=dtype, quantize=quant)
        ids = held_out_ids(loaded.tokenizer, args.tokens)
        top, logp = teacher_forced(loaded.decoder, ids)
        del loaded
        if reference is None:
            reference = top
        rows.append({"precision": precision, "tokens": len(top),
                     "top1_agreement_vs_first": float((top == reference).float().mean()),
                     "perplexity": float(torch.exp(-logp.mean()))})
        log.info("%s: %s", precision, rows[-1])
    lines = [f"{'target precision':18} {'top-1 = ' + args.precisions[0]:>20} {'perplexity':>11}"]
    lines += [f"{r['precision']:18} {r['top1_agreement_vs_first']:20.4f} {r['perplexity']:11.3f}" for r in rows]
    sys.stdout.write("\n".join(lines) + "\n")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"target": args.target, "rows": rows, "table": "\n".join(lines)}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
