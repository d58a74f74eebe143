"""SSD on one GPU: the draft worker in-process on its own CUDA stream, random weights at real shapes.

`python -m saguaro.bench.gpu_ssd --out DIR` measures, on the target's device:
  1. verify time: one target forward over K + 1 tokens at a fixed context, K = 1..8;
  2. draft time: the glue forward and one batched branch step, for several branch counts;
  3. both again while the other runs at the same time on its own stream, which is how much
     concurrent drafting slows verification (and the reverse);
  4. end to end, greedy: AR, SD and SSD tokens/s, and whether SD and SSD equal AR token for token;
  0. first, on tiny random models in float32 on the device: greedy SD and SSD (thread and process
     workers) equal AR, and seeded sampled SSD reproduces itself.
Independent random weights never agree, so part 4 also runs `agree` pairs (random:<shape>:agree=S),
which share a bigram core and agree on many tokens, for a nonzero acceptance at the same cost.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import threading
import time
from pathlib import Path

import torch

from saguaro.bench.divergence import first_divergence
from saguaro.bench.run_one import FIGURES
from saguaro.engine.runner import ModelRunner
from saguaro.loading.loader import load_model
from saguaro.sampling.params import SamplingParams
from saguaro.ssd.branches import BranchDrafter, DraftSequence

log = logging.getLogger(__name__)


def median_ms(fn, reps: int, stream: torch.cuda.Stream | None) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        _sync(stream)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _sync(stream) -> None:
    if stream is not None:
        stream.synchronize()  # this stream only: the other one keeps running


class VerifyProbe:
    """The target verifying K + 1 tokens after a `context`-token trunk."""

    def __init__(self, runner: ModelRunner, context: int):
        self.runner = runner
        self.context = context
        self.cache = runner.new_cache(1, context + 32)
        runner.prefill(self.cache, [[(7 * i) % 1000 + 1 for i in range(context)]])

    def __call__(self, k: int) -> None:
        self.runner.feed(self.cache, [[5] * (k + 1)], all_logits=True)
        self.cache.truncate(0, self.context)


class DraftProbe:
    """The worker's per-round drafting: the glue forward, then `k` steps over `fan * (k + 1)` branches."""

    def __init__(self, runner: ModelRunner, vocab: int, context: int, k: int):
        self.k = k
        self.drafter = BranchDrafter(runner, vocab)
        params = SamplingParams(temperature=0, max_tokens=64)
        seq = DraftSequence(0, [(7 * i) % 1000 + 1 for i in range(context)], params, torch.Generator())
        self.drafter.start([seq], context + 64 * (k + 2))
        seq.speculation = [11 + i for i in range(k)]

    def glue(self) -> None:
        self.drafter.glue()

    def round(self, fan: int) -> None:
        self.drafter.draft_branches(self.k, [fan] * (self.k + 1))


def measure_components(target: ModelRunner, draft: ModelRunner, args) -> dict:
    device = target.device
    main_stream = torch.cuda.current_stream(device)
    worker_stream = torch.cuda.Stream(device)
    verify = VerifyProbe(target, args.context)
    with torch.cuda.stream(worker_stream):
        probe = DraftProbe(draft, target.vocab_size, args.context, args.k)
    worker_stream.synchronize()
    out: dict = {"context": args.context, "k": args.k}

    for k in range(1, 9):
        verify(k)  # warm-up
    out["verify_ms"] = {k: median_ms(lambda k=k: verify(k), args.reps, main_stream) for k in range(1, 9)}
    with torch.cuda.stream(worker_stream):
        probe.glue()
        out["glue_ms"] = median_ms(probe.glue, args.reps, worker_stream)
        out["draft_round_ms"] = {}
        for fan in args.fans:
            probe.round(fan)
            out["draft_round_ms"][fan * (args.k + 1)] = median_ms(lambda f=fan: probe.round(f), args.reps, worker_stream)
    out["draft_step_ms"] = {b: (ms - out["glue_ms"]) / args.k for b, ms in out["draft_round_ms"].items()}

    # Concurrency: the worker thread drafts rounds on its stream while this thread verifies.
    fan = args.fans[min(1, len(args.fans) - 1)]
    stop = threading.Event()
    worker_times: list[float] = []

    def worker_loop():
        with torch.cuda.stream(worker_stream):
            while not stop.is_set():
                start = time.perf_counter()
                probe.round(fan)
                worker_stream.synchronize()
                worker_times.append(time.perf_counter() - start)

    thread = threading.Thread(target=worker_loop, daemon=True)
    thread.start()
    time.sleep(0.2)
    busy = median_ms(lambda: verify(args.k), args.reps * 3, main_stream)
    stop.set()
    thread.join()
    alone = out["verify_ms"][args.k]
    out["concurrent"] = {
        "branches": fan * (args.k + 1),
        "verify_alone_ms": alone,
        "verify_while_drafting_ms": busy,
        "verify_slowdown": busy / alone,
        "draft_round_alone_ms": out["draft_round_ms"][fan * (args.k + 1)],
        "draft_round_while_verifying_ms": statistics.median(worker_times[1:]) * 1e3 if len(worker_times) > 1 else None,
    }
    return out


def end_to_end(args) -> dict:
    """AR, SD and SSD (automatic plan) per model pair: plain random weights, then `agree` pairs."""
    from saguaro import LLM

    params = SamplingParams(temperature=0, max_tokens=args.tokens, ignore_eos=True)
    prompt = [(13 * i) % 5000 + 1 for i in range(args.context)]
    results = {}
    pairs = [(args.target, args.draft, "random")] + [
        (f"{args.target}:agree={a}", f"{args.draft}:agree={a}", f"agree={a}") for a in args.agree]
    _generate(LLM(target=args.target, device=args.device, dtype=args.dtype), prompt, params)  # device warm-up
    for target, draft, label in pairs:
        reference = None
        configs = [("ar", dict(mode="ar")), (f"sd k={args.k}", dict(mode="sd", draft=draft, k=args.k)),
                   ("ssd auto plan", dict(mode="ssd", draft=draft))]
        if label != "random":  # the worker as a second process on the same GPU (its own CUDA context)
            configs.append(("ssd auto, process worker", dict(mode="ssd", draft=draft, ssd_worker="process")))
        for name, kw in configs:
            key = f"{label}: {name}"
            try:
                res = _generate(LLM(target=target, device=args.device, dtype=args.dtype, **kw), prompt, params)
            except Exception as e:  # keep measuring the others; the report shows the error
                log.exception("%s failed", key)
                results[key] = {"error": f"{type(e).__name__}: {e}"}
                continue
            m = res.metrics.to_dict()
            reference = reference or res.token_ids
            results[key] = {"tok_s": m["decode_tokens"] / m["decode_s"], "equals_ar": res.token_ids == reference,
                            "first_difference": first_divergence(reference, res.token_ids),
                            **{k: m[k] for k in FIGURES if k in m}}
            log.info("%s: %.1f tok/s", key, results[key]["tok_s"])
    return results


def _generate(llm, prompt, params):
    try:
        llm.generate([prompt], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))  # warm-up
        return llm.generate([prompt], params)[0]
    finally:
        llm.close()
        del llm
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def tiny_checks(device: str) -> dict:
    """Exactness of the device paths on tiny models (seconds): greedy equality with AR, seeded replay."""
    from saguaro import LLM

    prompts = [[1, 2, 3, 4], [9, 8, 7]]
    greedy = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    sampled = SamplingParams(temperature=0.8, top_p=0.9, seed=7, max_tokens=24, ignore_eos=True)
    base = dict(target="random:tiny", device=device, dtype="float32")
    pair = dict(base, draft="random:tiny:1")
    ar = LLM(**base)
    want = [r.token_ids for r in ar.generate(prompts, greedy)]
    ar.close()
    out = {}
    for name, kw in (("sd", dict(mode="sd", k=3)), ("ssd thread", dict(mode="ssd", k=3, fanout=2, ssd_worker="thread")),
                     ("ssd process", dict(mode="ssd", k=3, fanout=2, ssd_worker="process"))):
        llm = LLM(**pair, **kw)
        try:
            got = [r.token_ids for r in llm.generate(prompts, greedy)]
            first = llm.generate(prompts, sampled)
            again = llm.generate(prompts, sampled)
            out[name] = {"greedy_equals_ar": got == want,
                         "seeded_replay": [r.token_ids for r in first] == [r.token_ids for r in again],
                         "fault": first[0].metrics.extra.get("worker_fault")}
        finally:
            llm.close()
        log.info("tiny %s: %s", name, out[name])
    return out


def report(results: dict) -> str:
    lines = []
    if "tiny_checks" in results:
        lines.append("tiny exactness checks: " + json.dumps(results["tiny_checks"]))
    c = results.get("components")
    if c and "error" in c:
        lines.append(f"component timings failed: {c['error']}")
    elif c:
        lines += [f"verify (target, context {c['context']}), ms by K: "
                  + " ".join(f"K={k}:{v:.2f}" for k, v in c["verify_ms"].items()),
                  f"draft glue (K+1={c['k'] + 1} tokens): {c['glue_ms']:.2f} ms",
                  "draft step by branches: " + " ".join(f"B={b}:{v:.2f}" for b, v in c["draft_step_ms"].items()),
                  "draft round (glue + K steps): " + " ".join(f"B={b}:{v:.2f}" for b, v in c["draft_round_ms"].items())]
        cc = c["concurrent"]
        lines.append(f"concurrent (B={cc['branches']}): verify {cc['verify_alone_ms']:.2f} -> "
                     f"{cc['verify_while_drafting_ms']:.2f} ms (x{cc['verify_slowdown']:.2f}); draft round "
                     f"{cc['draft_round_alone_ms']:.2f} -> {cc['draft_round_while_verifying_ms'] or float('nan'):.2f} ms")
    kt = results.get("kernels")
    if kt and "error" in kt:
        lines.append(f"kernel timings failed: {kt['error']}")
    elif kt:
        lines.append(f"kernels only: weights {kt['target_weight_gb']:.2f} GB target, {kt['draft_weight_gb']:.2f} GB draft; "
                     "verify " + " ".join(f"K={k}:{v:.2f}" for k, v in kt["verify_kernels_ms"].items())
                     + f" ms; glue {kt['glue_kernels_ms']:.2f} ms; draft round "
                     + " ".join(f"B={b}:{v:.2f}" for b, v in kt["draft_round_kernels_ms"].items()) + " ms")
    if "end_to_end" in results:
        lines.append(_e2e_table(results["end_to_end"]))
    return "\n".join(lines)


def _e2e_table(e2e: dict) -> str:
    lines = [f"{'end to end (greedy)':28} {'tok/s':>8} {'= AR':>5} {'accept':>7} {'hit':>5} {'K/B':>6}"]
    for name, r in e2e.items():
        if "error" in r:
            lines.append(f"{name:28} error: {r['error'][:120]}")
            continue
        acc = r["accepted"] / r["drafted"] if r.get("drafted") else float("nan")
        kb = f"{r['k']}/{r['branches']}" if "branches" in r else "-"
        same = "yes" if r["equals_ar"] else f"@{r['first_difference']}"  # else: index of the first difference
        lines.append(f"{name:28} {r['tok_s']:8.1f} {same:>5} {acc:7.2f} "
                     f"{r.get('hit_rate', float('nan')):5.2f} {kb:>6}")
    return "\n".join(lines)


PARTS = ("tiny", "components", "kernels", "e2e")


def kernel_times(target: ModelRunner, draft: ModelRunner, args) -> dict:
    """GPU time of the kernels alone (profiler) in one verify, one glue and one draft round: the
    floor under the wall times once launch overhead is gone (CUDA graphs), next to the weight bytes."""
    from torch.profiler import ProfilerActivity, profile

    from saguaro.bench.roofline import weight_bytes_per_token

    verify = VerifyProbe(target, args.context)
    probe = DraftProbe(draft, target.vocab_size, args.context, args.k)

    def device_ms(fn, reps: int = 5) -> float:
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                fn()
            torch.cuda.synchronize()
        events = prof.key_averages()
        total_us = sum(getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0)
                       for e in events)
        return total_us / 1e3 / reps

    return {"target_weight_gb": weight_bytes_per_token(target.decoder) / 1e9,
            "draft_weight_gb": weight_bytes_per_token(draft.decoder) / 1e9,
            "verify_kernels_ms": {k: device_ms(lambda k=k: verify(k)) for k in sorted({1, args.k, 8})},
            "glue_kernels_ms": device_ms(probe.glue),
            "draft_round_kernels_ms": {f * (args.k + 1): device_ms(lambda f=f: probe.round(f)) for f in args.fans}}


def model_args(p: argparse.ArgumentParser) -> None:
    """The pair, device, dtype and context of the GPU benchmarks: random weights at real shapes."""
    p.add_argument("--target", default="random:qwen2.5-7b")
    p.add_argument("--draft", default="random:qwen2.5-0.5b")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--context", type=int, default=512)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m saguaro.bench.gpu_ssd", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    model_args(p)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--fans", type=int, nargs="*", default=[1, 2, 4])
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--tokens", type=int, default=64, help="end-to-end tokens per run")
    p.add_argument("--agree", type=float, nargs="*", default=[0.03, 0.1, 0.3],
                   help="layer scales of the agreeing random pairs run end to end (random:...:agree=S)")
    p.add_argument("--parts", nargs="*", choices=PARTS, default=list(PARTS))
    p.add_argument("--out", default=None, help="folder for the JSON")
    p.add_argument("--name", default="gpu_ssd", help="JSON file name (without .json)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    on_cuda = torch.device(args.device).type == "cuda"
    if on_cuda:
        log.info("device: %s, torch %s", torch.cuda.get_device_name(args.device), torch.__version__)
    results = {"target": args.target, "draft": args.draft, "dtype": args.dtype, "torch": torch.__version__,
               "device": torch.cuda.get_device_name(args.device) if on_cuda else "cpu"}
    if "tiny" in args.parts:
        results["tiny_checks"] = _guarded(tiny_checks, args.device)
    if {"components", "kernels"} & set(args.parts):
        target = ModelRunner(load_model(args.target, device=args.device, dtype=args.dtype).decoder)
        draft = ModelRunner(load_model(args.draft, device=args.device, dtype=args.dtype).decoder, draft=True)
        if "components" in args.parts:
            measure = measure_components if on_cuda else _cpu_components  # the CPU variant is a dry run
            results["components"] = _guarded(measure, target, draft, args)
        if "kernels" in args.parts and on_cuda:
            results["kernels"] = _guarded(kernel_times, target, draft, args)
        del target, draft
    if "e2e" in args.parts:
        results["end_to_end"] = end_to_end(args)
    print(report(results))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / f"{args.name}.json").write_text(json.dumps(results, indent=1))
    return 0


def _guarded(fn, *args):
    try:
        return fn(*args)
    except Exception as e:  # the other parts still run; the report shows the error
        log.exception("%s failed", fn.__name__)
        return {"error": f"{type(e).__name__}: {e}"}


def _cpu_components(target: ModelRunner, draft: ModelRunner, args) -> dict:
    verify = VerifyProbe(target, args.context)
    probe = DraftProbe(draft, target.vocab_size, args.context, args.k)
    rounds = {f * (args.k + 1): median_ms(lambda f=f: probe.round(f), 2, None) for f in args.fans}
    glue = median_ms(probe.glue, 2, None)
    v = {k: median_ms(lambda k=k: verify(k), 2, None) for k in range(1, 9)}
    b = args.fans[0] * (args.k + 1)
    return {"context": args.context, "k": args.k, "verify_ms": v, "glue_ms": glue, "draft_round_ms": rounds,
            "draft_step_ms": {n: (ms - glue) / args.k for n, ms in rounds.items()},
            "concurrent": {"branches": b, "verify_alone_ms": v[args.k], "verify_while_drafting_ms": v[args.k],
                           "verify_slowdown": 1.0, "draft_round_alone_ms": rounds[b],
                           "draft_round_while_verifying_ms": None}}


if __name__ == "__main__":
    raise SystemExit(main())
