"""The GPU fast path in one run: `python -m saguaro.bench.gpu_check --out DIR` (scripts/gpu_check.sh).

Random weights at real shapes (the 7B target, the 0.5B draft, and an `agree` pair of the two
that shares a bigram core, for a nonzero acceptance at the same cost), batch 1, a 512-token
context, static shapes and CUDA graphs as the engine runs them by default on a GPU. It prints
one JSON object and writes it to DIR/gpu_check.json:

- device, torch; floor_ms: the target's weight bytes over the copy bandwidth measured here;
  ar_7b_tok_s (and without graphs), ar_7b_tok_s_fraction_of_floor = floor_ms x tok/s / 1000;
- verify_ms for K + 1 = 2, 5 and 9; draft_step_ms (the 0.5B, one token); branch_step_ms for 8
  and 16 branches (SSD's batched branch step);
- sd_over_ar and ssd_over_sd end to end on the agree pair, with acceptance, hit rate and plan,
  and the GPU's utilisation sampled while SSD drafts concurrently; ar_batch8_over_batch1
  (aggregate tokens/s);
- exact_fp32_sd, exact_fp32_ssd: greedy SD and SSD token-identical to AR in float32 at the real
  shapes; chi2_ok: the tiny pair's chi-square on the device (SD and SSD, 20k samples each).

Every part is guarded: one that fails records its error and the others still run. On a CPU
(`--device cpu` with tiny shapes) it is a dry run of the same code, which the tests use.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from saguaro.bench.gpu_ssd import DraftProbe, VerifyProbe, median_ms, model_args
from saguaro.bench.roofline import weight_bytes_per_token
from saguaro.engine.graphs import GRAPHS_ENV
from saguaro.engine.runner import ModelRunner
from saguaro.loading.loader import load_model
from saguaro.sampling.params import SamplingParams

log = logging.getLogger(__name__)
VERIFY_WIDTHS = (2, 5, 9)
BRANCH_K = 3  # branch steps run (K + 1) x fan-out branches: 8 and 16 at fan-outs 2 and 4
ALPHA = 1e-3


def copy_bandwidth(device: torch.device, mib: int, reps: int = 10) -> float:
    """Bytes per second a device-to-device copy moves (read plus write), median of `reps`."""
    src = torch.empty(mib << 20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(reps):
        _sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        times.append(time.perf_counter() - start)
    return 2 * src.numel() / statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _verify_times(args) -> tuple[dict[int, float], int, int]:
    """The target's verify time per width, its weight bytes and its vocabulary size."""
    target = ModelRunner(load_model(args.target, device=args.device, dtype=args.dtype).decoder, static_shapes=True)
    for width in VERIFY_WIDTHS:
        target.register_width(width)
    verify = VerifyProbe(target, args.context)
    times = {}
    for width in VERIFY_WIDTHS:
        verify(width - 1)  # captures
        times[width] = median_ms(lambda w=width: verify(w - 1), args.reps, _stream(target.device))
    return times, weight_bytes_per_token(target.decoder), target.vocab_size


def components(args) -> dict:
    """Forward times on static-shaped runners (graph replays on CUDA), and the weight floor."""
    device = torch.device(args.device)
    bandwidth = copy_bandwidth(device, args.copy_mib)
    verify_ms, weights, vocab = _verify_times(args)  # the target is freed before the draft loads
    draft = ModelRunner(load_model(args.draft, device=args.device, dtype=args.dtype).decoder, draft=True,
                        static_shapes=True)
    step = VerifyProbe(draft, args.context)
    step(0)
    draft_step = median_ms(lambda: step(0), args.reps, _stream(device))
    probe = DraftProbe(draft, vocab, args.context, BRANCH_K)
    probe.glue()
    glue = median_ms(probe.glue, args.reps, _stream(device))
    branch = {}
    for fan in (2, 4):
        probe.round(fan)
        round_ms = median_ms(lambda f=fan: probe.round(f), args.reps, _stream(device))
        branch[fan * (BRANCH_K + 1)] = (round_ms - glue) / BRANCH_K
    floor_ms = weights / bandwidth * 1e3
    return {"copy_gb_s": bandwidth / 1e9, "target_weight_gb": weights / 1e9, "floor_ms": floor_ms,
            "verify_ms": verify_ms, "draft_step_ms": draft_step, "glue_ms": glue, "branch_step_ms": branch}


def _stream(device: torch.device):
    return torch.cuda.current_stream(device) if device.type == "cuda" else None


@contextlib.contextmanager
def _env(name: str, value: str | None):
    before = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def generate(args, target: str, prompts: list[list[int]], tokens: int, graphs: str | None = None,
             dtype: str | None = None, watch: bool = False, **options) -> dict:
    """One LLM over `prompts` (greedy, `tokens` each, after a warm-up): tok/s, tokens, figures."""
    from saguaro import LLM

    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    with _env(GRAPHS_ENV, graphs):
        llm = LLM(target=target, device=args.device, dtype=dtype or args.dtype, static_shapes=True, **options)
    try:
        llm.generate(prompts, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))  # warm-up, captures
        sampler = _Utilisation(torch.device(args.device)) if watch else None
        start = time.perf_counter()
        results = llm.generate(prompts, params)
        wall = time.perf_counter() - start
        utilisation = sampler.stop() if sampler else None
    finally:
        llm.close()
        del llm
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    m = results[0].metrics.to_dict()
    out = {"tok_s": m["decode_tokens"] / m["decode_s"], "aggregate_tok_s": sum(len(r.token_ids) for r in results) / wall,
           "token_ids": [r.token_ids for r in results]}
    if m.get("drafted"):
        out["acceptance"] = m["accepted"] / m["drafted"]
    for key in ("hit_rate", "k", "branches", "worker_fault"):
        if key in m:
            out[key] = m[key]
    if utilisation is not None:
        out["gpu_utilisation"] = utilisation
    log.info("%s %s: %.1f tok/s", target, options.get("mode", "ar"), out["tok_s"])
    return out


class _Utilisation:
    """The GPU's utilisation (percent, from NVML) sampled every 50 ms on a thread, while SSD runs."""

    def __init__(self, device: torch.device):
        self.device, self.samples, self.done = device, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(0.05):
            try:
                self.samples.append(torch.cuda.utilization(self.device))
            except Exception:  # no NVML (pynvml) or no CUDA: nothing to report
                return

    def stop(self) -> dict | None:
        self.done.set()
        self.thread.join()
        if not self.samples:
            return None
        return {"mean": statistics.mean(self.samples), "median": statistics.median(self.samples),
                "samples": len(self.samples)}


def prompt(length: int, salt: int = 0) -> list[int]:
    return [(13 * i + 7 * salt) % 5000 + 1 for i in range(length)]


def speedups(args) -> dict:
    """AR (with and without graphs), SD and SSD on the agree pair, and AR at batch 8."""
    one = [prompt(args.context)]
    target, draft = f"{args.target}:agree={args.agree}", f"{args.draft}:agree={args.agree}"
    ar = generate(args, args.target, one, args.tokens)
    out = {"ar_7b_tok_s": ar["tok_s"]}
    out["ar_7b_tok_s_no_graphs"] = generate(args, args.target, one, args.tokens, graphs="off")["tok_s"]
    batch8 = generate(args, args.target, [prompt(args.context, s) for s in range(8)], args.tokens)
    out["ar_batch8_over_batch1"] = batch8["aggregate_tok_s"] / ar["aggregate_tok_s"]
    pair = {"ar": generate(args, target, one, args.tokens),
            "sd": generate(args, target, one, args.tokens, mode="sd", draft=draft, k=args.k),
            "ssd": generate(args, target, one, args.tokens, watch=True, mode="ssd", draft=draft)}
    out["sd_over_ar"] = pair["sd"]["tok_s"] / pair["ar"]["tok_s"]
    out["ssd_over_sd"] = pair["ssd"]["tok_s"] / pair["sd"]["tok_s"]
    out["agree_pair"] = {name: {k: v for k, v in r.items() if k != "token_ids"} for name, r in pair.items()}
    out["agree_pair_equal_greedy"] = {m: pair[m]["token_ids"] == pair["ar"]["token_ids"] for m in ("sd", "ssd")}
    return out


def exact_fp32(args) -> dict:
    """Greedy SD and SSD against AR in float32 at the real shapes (the agree pair, so both accept)."""
    target, draft = f"{args.target}:agree={args.agree}", f"{args.draft}:agree={args.agree}"
    one = [prompt(args.context)]
    runs = {"ar": generate(args, target, one, args.exact_tokens, dtype="float32"),
            "sd": generate(args, target, one, args.exact_tokens, dtype="float32", mode="sd", draft=draft, k=args.k),
            "ssd": generate(args, target, one, args.exact_tokens, dtype="float32", mode="ssd", draft=draft)}
    want = runs["ar"]["token_ids"]
    return {"exact_fp32_sd": runs["sd"]["token_ids"] == want, "exact_fp32_ssd": runs["ssd"]["token_ids"] == want,
            "exact_fp32_acceptance": {m: runs[m].get("acceptance") for m in ("sd", "ssd")}}


def chi_square(args) -> dict:
    """The tiny pair's sampled continuations on the device against the enumerated distribution of
    the target as the device runs it: SD (T = 1) and SSD (T = 0.7, top-k 5, top-p 0.9)."""
    from saguaro import LLM
    from saguaro.testing.exactness import (chi_square_pvalue, engine_logits, enumerate_distribution,
                                           sample_continuations, write_tiny_pair)

    runs = {"sd": (dict(mode="sd", k=3), SamplingParams(temperature=1.0)),
            "ssd": (dict(mode="ssd", k=2, fanout=2, ssd_worker="thread"),
                    SamplingParams(temperature=0.7, top_k=5, top_p=0.9))}
    prompt_ids, n_tokens = [3, 5, 7, 3, 5, 7, 3], 3
    pvalues = {}
    with tempfile.TemporaryDirectory() as tmp:
        target, draft = write_tiny_pair(Path(tmp))
        runner = ModelRunner(load_model(target, device=args.device, dtype="float32").decoder)
        for name, (options, params) in runs.items():
            want = enumerate_distribution(lambda rows: engine_logits(runner, rows), prompt_ids, n_tokens,
                                          params.temperature, params.top_k, params.top_p)
            llm = LLM(target=target, draft=draft, device=args.device, dtype="float32", **options)
            try:
                counts = sample_continuations(llm, prompt_ids, n_tokens, params, args.samples,
                                              batch=min(2000, args.samples))
            finally:
                llm.close()
            pvalues[name] = chi_square_pvalue(counts, want)
            log.info("chi-square %s: p = %.4f over %d samples", name, pvalues[name], args.samples)
    return {"chi2_ok": all(p > ALPHA for p in pvalues.values()), "chi2_pvalues": pvalues,
            "chi2_samples": args.samples}


PARTS = {"components": components, "speedups": speedups, "exact": exact_fp32, "chi2": chi_square}


def run(args, save=None) -> dict:
    """Every part in turn; `save(results)` after each, so a run cut short keeps what it measured."""
    results = {"device": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu",
               "torch": torch.__version__, "target": args.target, "draft": args.draft, "dtype": args.dtype,
               "context": args.context, "agree": args.agree, "k": args.k}
    for name in args.parts:
        start = time.perf_counter()
        try:
            results.update(PARTS[name](args))
        except Exception as e:  # the other parts still run; the JSON shows the error
            log.exception("%s failed", name)
            results[f"{name}_error"] = f"{type(e).__name__}: {e}"
        results.setdefault("part_s", {})[name] = time.perf_counter() - start
        if "floor_ms" in results and "ar_7b_tok_s" in results:
            results["ar_7b_tok_s_fraction_of_floor"] = results["floor_ms"] * results["ar_7b_tok_s"] / 1000
        if save:
            save(results)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m saguaro.bench.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    model_args(p)
    p.add_argument("--tokens", type=int, default=128, help="greedy tokens per timed run")
    p.add_argument("--exact-tokens", type=int, default=48, help="tokens per float32 exactness run")
    p.add_argument("--k", type=int, default=4, help="SD's K")
    p.add_argument("--agree", type=float, default=0.03, help="layer scale of the agreeing pair")
    p.add_argument("--samples", type=int, default=20_000, help="chi-square samples per mode")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--copy-mib", type=int, default=1024, help="buffer size of the bandwidth copy")
    p.add_argument("--parts", nargs="*", choices=list(PARTS), default=list(PARTS))
    p.add_argument("--out", default=None, help="folder for gpu_check.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    save = None
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        save = lambda results: (Path(args.out) / "gpu_check.json").write_text(json.dumps(results, indent=1))  # noqa: E731
    print(json.dumps(run(args, save), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
