"""What quantization costs in quality: each target precision against float32 under teacher forcing,
and each draft precision's acceptance against the target.

`python -m saguaro.bench.quality` prints, on about 2k tokens of held-out text (a Python
standard-library module's source), the target's top-1 agreement with float32 and perplexity, and
the draft's greedy and sampled acceptance (saguaro.bench.draft_acceptance), as JSON and tables.
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
def chunk_logits(decoder, ids: list[int], draft: bool = False):
    """Teacher forcing in chunks of CHUNK tokens: yields (start, logits [len(piece), vocab]), the
    logits predicting ids[start + 1:start + 1 + len(piece)]."""
    from saguaro.engine.runner import ModelRunner

    runner = ModelRunner(decoder, draft=draft)
    cache = runner.new_cache(1, len(ids))
    for start in range(0, len(ids) - 1, CHUNK):
        piece = ids[start:min(start + CHUNK, len(ids) - 1)]
        yield start, runner.feed(cache, [piece], all_logits=True)[0]


def teacher_forced(decoder, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax [n], log-probability of the true next token [n]) at every position."""
    tops, logps = [], []
    for start, logits in chunk_logits(decoder, ids):
        nxt = torch.tensor(ids[start + 1:start + 1 + len(logits)])
        tops.append(logits.argmax(-1))
        logps.append(torch.log_softmax(logits, -1).gather(1, nxt.unsqueeze(1)).squeeze(1))
    return torch.cat(tops), torch.cat(logps)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m saguaro.bench.quality", description=__doc__)
    p.add_argument("--target", default="qwen2.5-coder-1.5b")
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--precisions", nargs="*", default=["float32", "bfloat16", "int8", "int4"])
    p.add_argument("--draft", default="qwen2.5-coder-0.5b")
    p.add_argument("--draft-precisions", nargs="*", default=["int4", "int8", "none"],
                   help="each draft precision's acceptance against the target as the main job runs it")
    p.add_argument("--draft-head-tokens", type=int, default=None, help="as generate's (default: the CPU default)")
    p.add_argument("--out", default=None, help="JSON file for the results")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = target_rows(args.target, args.precisions, args.tokens)
    lines = [f"{'target precision':18} {'top-1 = ' + args.precisions[0]:>20} {'perplexity':>11}"] if rows else []
    lines += [f"{r['precision']:18} {r['top1_agreement_vs_first']:20.4f} {r['perplexity']:11.3f}" for r in rows]
    drafts = []
    if args.draft_precisions:
        from saguaro.bench import draft_acceptance

        drafts = draft_report(args)
        lines += ([""] if lines else []) + draft_acceptance.table(drafts)
    sys.stdout.write("\n".join(lines) + "\n")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"target": args.target, "rows": rows, "draft": args.draft, "drafts": drafts,
                       "table": "\n".join(lines)}, f, indent=1)
    return 0


def target_rows(target: str, precisions: list[str], tokens: int) -> list[dict]:
    """Each target precision's top-1 agreement with the first one, and its perplexity."""
    from saguaro.loading.loader import load_model

    rows, reference = [], None
    for precision in precisions:
        dtype = precision if precision in ("float32", "bfloat16") else "bfloat16"
        quant = "none" if precision in ("float32", "bfloat16") else precision
        loaded = load_model(target, dtype=dtype, quantize=quant)
        ids = held_out_ids(loaded.tokenizer, tokens)
        top, logp = teacher_forced(loaded.decoder, ids)
        del loaded
        if reference is None:
            reference = top
        rows.append({"precision": precision, "tokens": len(top),
                     "top1_agreement_vs_first": float((top == reference).float().mean()),
                     "perplexity": float(torch.exp(-logp.mean()))})
        log.info("%s: %s", precision, rows[-1])
    return rows


def draft_report(args) -> list[dict]:
    """The draft at each of args.draft_precisions against the target at its defaults (the main job's)."""
    from saguaro.bench.draft_acceptance import draft_rows
    from saguaro.loading.loader import load_model
    from saguaro.model.head_subset import draft_head_tokens

    target = load_model(args.target)
    ids = held_out_ids(target.tokenizer, args.tokens)
    head = draft_head_tokens(args.draft_head_tokens, "cpu")

    def loader(precision: str):
        return lambda: load_model(args.draft, head_tokens=head, quantize=precision, draft=True).decoder

    return draft_rows(target.decoder, [(q, loader(q)) for q in args.draft_precisions], ids)


if __name__ == "__main__":
    raise SystemExit(main())
