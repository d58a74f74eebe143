"""Measures one configuration in its own process (so core pinning never leaks between runs).

`python -m saguaro.bench.run_one CONFIG_JSON` prints one JSON line with tokens/s and figures.
"""

from __future__ import annotations

import json
import logging
import sys
import time

log = logging.getLogger(__name__)


def _chat_ids(tokenizer, text: str) -> list[int]:
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    return tokenizer.encode(prompt, add_special_tokens=False)


def run_saguaro(cfg: dict) -> dict:
    from saguaro import LLM, SamplingParams

    knobs = ("k", "fanout", "saguaro_c", "backup", "draft_head_tokens", "quantize_target", "quantize_draft")
    kwargs = {k: cfg[k] for k in knobs if cfg.get(k) is not None}
    llm = LLM(target=cfg["target"], draft=cfg.get("draft"), mode=cfg["mode"], dtype=cfg["dtype"],
              target_cores=cfg.get("cores"), draft_cores=cfg.get("draft_cores"), **kwargs)
    try:
        params = SamplingParams(temperature=0, max_tokens=cfg["max_tokens"], ignore_eos=True)
        ids = [_chat_ids(llm.tokenizer, text) for _, text in cfg["prompts"]]
        llm.generate([ids[0]], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))  # warm-up
        rows = []
        for (kind, _), prompt in zip(cfg["prompts"], ids):
            r = llm.generate([prompt], params)[0]
            m = r.metrics.to_dict()
            rows.append({"kind": kind, "tokens": m["decode_tokens"], "seconds": m["decode_s"],
                         "token_ids": r.token_ids, **{k: m[k] for k in FIGURES if k in m}})
        return {"rows": rows}
    finally:
        llm.close()


FIGURES = ("accepted", "drafted", "rounds", "hit_rate", "hits", "lookups", "k", "branches", "target_wait_s",
           "verify_s", "draft_s", "tokens_per_round_hit", "tokens_per_round_miss", "hit_rate_by_accepted",
           "worker_idle_s", "worker_glue_s", "worker_branch_s", "worker_backup_s", "target_wait_on_hit_s")


def run_hf(cfg: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from saguaro.loading.bundled import BUNDLED
    from saguaro.loading.loader import bundled_folder
    from saguaro.ssd.placement import pin_process
    from saguaro.tokenizer import Tokenizer

    pin_process(cfg.get("cores"))
    dtype = getattr(torch, cfg["dtype"])

    def load(ref):
        folder = bundled_folder(ref) if ref in BUNDLED else ref
        return AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).eval(), folder

    model, folder = load(cfg["target"])
    tokenizer = Tokenizer.from_folder(folder)
    extra = {}
    if cfg["mode"] == "hf_assisted":
        draft, _ = load(cfg["draft"])
        draft.generation_config.num_assistant_tokens = cfg.get("k") or 5
        draft.generation_config.num_assistant_tokens_schedule = "constant"
        extra["assistant_model"] = draft
    elif cfg["mode"] == "hf_lookup":
        extra["prompt_lookup_num_tokens"] = cfg.get("k") or 10
    n = cfg["max_tokens"]

    def generate(ids, tokens):
        x = torch.tensor([ids])
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(x, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                 attention_mask=torch.ones_like(x), pad_token_id=0, **extra)
        return time.perf_counter() - start, out[0, len(ids):].tolist()

    ids = [_chat_ids(tokenizer, text) for _, text in cfg["prompts"]]
    generate(ids[0], 8)  # warm-up
    rows = []
    for (kind, _), prompt in zip(cfg["prompts"], ids):
        first, _ = generate(prompt, 1)  # prefill and the first token, subtracted to match our decode time
        total, out = generate(prompt, n)
        rows.append({"kind": kind, "tokens": n - 1, "seconds": total - first, "token_ids": out})
    return {"rows": rows}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    cfg = json.loads((argv or sys.argv[1:])[0])
    result = run_hf(cfg) if cfg["engine"] == "hf" else run_saguaro(cfg)
    print(json.dumps({"config": cfg, **result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
