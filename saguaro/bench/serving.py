"""`saguaro bench engine`: the step-wise Engine under concurrent load, AR, SD and SSD side by side.

Closed loop: c clients each keep one request in flight (a finished request is replaced at once)
at c = 1, 4, 8, 16; each level's aggregate tokens/s is compared with the same mode's c = 1.
Open loop: requests arrive as a Poisson process at a fixed rate (seeded), for latency under load.

Each mode runs in its own process with its own core pinning:
`python -m saguaro.bench.serving CONFIG_JSON` measures one mode and prints one JSON line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from saguaro.bench.passes import run_interleaved

log = logging.getLogger(__name__)

LEVELS = [1, 4, 8, 16]
WARMUP_TOKENS = 8
BAR = (8, 3.0)  # the bar: AR's aggregate at concurrency 8 is at least 3x its concurrency 1


# ---- the drivers (in the measuring process) ----------------------------------------------------


@dataclass
class Request:
    """One request as its client saw it; times from the driver's clock."""

    request_id: str
    arrival: float  # when it was due (open loop) or submitted (closed loop)
    first_token: float | None = None
    finished: float | None = None
    tokens: int = 0
    metrics: dict = field(default_factory=dict)  # the engine's figures, once finished

    @property
    def latency(self) -> float:
        return self.finished - self.arrival

    @property
    def ttft(self) -> float:
        return self.first_token - self.arrival


class Tracker:
    """Submits requests to an engine and folds its step outputs into `Request` records."""

    def __init__(self, engine, params, clock=time.perf_counter):
        self.engine, self.params, self.clock = engine, params, clock
        self.open: dict[str, Request] = {}
        self.done: list[Request] = []
        self.count = 0

    @property
    def in_flight(self) -> int:
        return len(self.open)

    def submit(self, prompt, arrival: float | None = None) -> None:
        arrival = self.clock() if arrival is None else arrival
        rid = f"r{self.count}"
        self.count += 1
        self.engine.add_request(prompt, self.params, request_id=rid)
        self.open[rid] = Request(rid, arrival)

    def step(self) -> None:
        outputs = self.engine.step()
        now = self.clock()
        for out in outputs:
            req = self.open[out.request_id]
            if out.new_token_ids and req.first_token is None:
                req.first_token = now
            req.tokens += len(out.new_token_ids)
            if out.finished:
                req.finished, req.metrics = now, out.metrics.to_dict()
                self.done.append(self.open.pop(out.request_id))

    def abort_open(self) -> list[Request]:
        """Abort what is still in flight; returns those requests (their tokens so far count)."""
        left = list(self.open.values())
        for req in left:
            self.engine.abort(req.request_id)
        self.open.clear()
        return left


def closed_loop(engine, prompts: list, params, concurrency: int, requests: int,
                clock=time.perf_counter) -> dict:
    """Keep exactly `concurrency` requests in flight until `requests` have finished, then abort
    the rest. Aggregate tokens/s counts every token generated in that window, finished or not."""
    feed = itertools.cycle(prompts)
    tracker = Tracker(engine, params, clock)
    trace = []  # requests in flight before each step
    start = clock()
    while len(tracker.done) < requests:
        while tracker.in_flight < concurrency:
            tracker.submit(next(feed))
        trace.append(tracker.in_flight)
        tracker.step()
    wall = clock() - start
    aborted = tracker.abort_open()
    return dict(summarize(tracker.done, aborted, wall), concurrency=concurrency, in_flight=trace)


def poisson_arrivals(rate: float, n: int, seed: int) -> list[float]:
    """Arrival offsets in seconds of `n` requests at `rate` per second: the first at 0, then
    exponential gaps from a seeded generator (the same schedule for every mode)."""
    rng = random.Random(seed)
    times = [0.0]
    for _ in range(n - 1):
        times.append(times[-1] + rng.expovariate(rate))
    return times[:n]


def open_loop(engine, prompts: list, params, arrivals: list[float], clock=time.perf_counter,
              sleep=time.sleep) -> dict:
    """Submit each request at its arrival offset, stepping the engine in between, until all
    finish. Latency and TTFT count from the due time, so a slow step's queueing shows."""
    feed = itertools.cycle(prompts)
    tracker = Tracker(engine, params, clock)
    start, i, peak = clock(), 0, 0
    while len(tracker.done) < len(arrivals):
        now = clock() - start
        while i < len(arrivals) and arrivals[i] <= now:
            tracker.submit(next(feed), arrival=start + arrivals[i])
            i += 1
        peak = max(peak, tracker.in_flight)
        if engine.has_unfinished():
            tracker.step()
        elif i < len(arrivals):
            sleep(max(0.0, arrivals[i] - now))
    wall = max(r.finished for r in tracker.done) - start
    out = summarize(tracker.done, [], wall)
    span = arrivals[-1] if len(arrivals) > 1 else 0.0
    offered = (len(arrivals) - 1) / span if span > 0 else float("nan")
    return dict(out, offered_rate=offered, max_in_flight=peak)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear between the nearest ranks."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def summarize(done: list[Request], aborted: list[Request], wall: float) -> dict:
    """A level's figures from its finished requests (and the tokens of aborted ones)."""
    tokens = sum(r.tokens for r in done) + sum(r.tokens for r in aborted)
    decode = [r.metrics["decode_tokens"] / r.metrics["decode_s"] for r in done if r.metrics.get("decode_s")]
    latencies = [r.latency for r in done]
    return {
        "requests": len(done),
        "aborted": len(aborted),
        "tokens": tokens,
        "wall_s": wall,
        "aggregate_tok_s": tokens / wall if wall > 0 else float("nan"),
        "requests_per_s": len(done) / wall if wall > 0 else float("nan"),
        "mean_decode_tok_s": _mean(decode),
        "mean_ttft_s": _mean([r.ttft for r in done if r.first_token is not None]),
        "mean_latency_s": _mean(latencies),
        "p90_latency_s": percentile(latencies, 90),
    }


def requests_at(concurrency: int, per_client: int, min_requests: int) -> int:
    """Requests to finish at one concurrency level: `per_client` each, at least `min_requests`."""
    return max(min_requests, per_client * concurrency)


# ---- one mode, in its own process ---------------------------------------------------------------


def build_engine(cfg: dict, max_seq_len: int):
    from saguaro import Engine

    knobs = ("k", "fanout", "saguaro_c", "backup", "draft_head_tokens", "quantize_target", "quantize_draft")
    kwargs = {k: cfg[k] for k in knobs if cfg.get(k) is not None}
    draft = cfg.get("draft") if cfg["mode"] != "ar" else None
    return Engine(cfg["target"], draft, cfg["mode"], max_batch=cfg["max_batch"], max_seq_len=max_seq_len,
                  dtype=cfg["dtype"], target_cores=cfg.get("cores"), draft_cores=cfg.get("draft_cores"), **kwargs)


def warm_up(engine, prompt, max_batch: int) -> None:
    """One request alone, then a full batch of short ones, so no level pays first-call costs."""
    from saguaro import SamplingParams

    closed_loop(engine, [prompt], SamplingParams(temperature=0, max_tokens=WARMUP_TOKENS, ignore_eos=True), 1, 1)
    short = SamplingParams(temperature=0, max_tokens=WARMUP_TOKENS // 2, ignore_eos=True)
    closed_loop(engine, [prompt], short, max_batch, max_batch)


def run_mode(cfg: dict) -> dict:
    """Every closed-loop level, then the Poisson run, on one engine."""
    from saguaro import SamplingParams
    from saguaro.bench.run_one import _chat_ids

    params = SamplingParams(temperature=0, max_tokens=cfg["max_tokens"], ignore_eos=True)
    t0 = time.perf_counter()
    # A KV pool sized to these prompts (not 2048 slots a row): allocated small, grown once to fit.
    engine = build_engine(cfg, max_seq_len=cfg["max_tokens"] + 1)
    try:
        ids = [_chat_ids(engine.tokenizer, text) for _, text in cfg["prompts"]]
        engine.reserve(engine.max_batch, max(len(p) for p in ids) + max(cfg["max_tokens"], WARMUP_TOKENS))
        load_s = time.perf_counter() - t0
        warm_up(engine, ids[0], cfg["max_batch"])
        levels = []
        for c in cfg["levels"]:
            n = requests_at(c, cfg["per_client"], cfg["min_requests"])
            level = closed_loop(engine, ids, params, c, n)
            trace = level.pop("in_flight")
            levels.append(dict(level, in_flight_min=min(trace), in_flight_max=max(trace)))
            log.info("%s c=%d: %.2f tok/s", cfg["name"], c, levels[-1]["aggregate_tok_s"])
        poisson = None
        if cfg.get("poisson_requests"):
            arrivals = poisson_arrivals(cfg["rate"], cfg["poisson_requests"], cfg["seed"])
            poisson = dict(open_loop(engine, ids, params, arrivals), rate=cfg["rate"], seed=cfg["seed"])
        return {"name": cfg["name"], "mode": cfg["mode"], "load_s": load_s, "levels": levels, "poisson": poisson}
    finally:
        engine.close()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    cfg = json.loads((argv or sys.argv[1:])[0])
    print(json.dumps({"config": cfg, **run_mode(cfg)}))
    return 0


# ---- the suite (in the parent process) ----------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The engine suite's own flags on `saguaro bench`."""
    g = p.add_argument_group("engine suite")
    g.add_argument("--levels", type=int, nargs="*", default=LEVELS, help="closed-loop concurrency levels")
    g.add_argument("--per-client", type=int, default=3, help="requests finished per client at each level")
    g.add_argument("--min-requests", type=int, default=6, help="requests finished per level at least")
    g.add_argument("--max-batch", type=int, default=16, help="the engine's max_batch")
    g.add_argument("--rate", type=float, default=0.5, help="Poisson arrivals per second")
    g.add_argument("--poisson-requests", type=int, default=16, help="requests in the Poisson run (0: none)")
    g.add_argument("--seed", type=int, default=0, help="the Poisson schedule's seed")
    g.add_argument("--modes", nargs="*", default=["ar", "sd", "ssd"], help="engine suite: which modes")


def engine_configs(args) -> list[dict]:
    """One configuration per mode: AR and SD k=3 on both cores, SSD's target on core 0 and its
    draft worker on core 1 (as the cpu suite's ssd)."""
    from saguaro.bench.prompts import all_prompts

    base = dict(engine="serving", target=args.target, draft=args.draft, dtype=args.dtype,
                max_tokens=args.max_tokens, prompts=all_prompts(args.kinds), draft_head_tokens=args.draft_head_tokens,
                quantize_target=args.quantize[0], quantize_draft=args.quantize_draft[0], max_batch=args.max_batch,
                levels=args.levels, per_client=args.per_client, min_requests=args.min_requests, rate=args.rate,
                poisson_requests=args.poisson_requests, seed=args.seed)
    modes = {"ar": dict(mode="ar", cores=[0, 1]),
             "sd": dict(mode="sd", k=3, cores=[0, 1]),
             "ssd": dict(mode="ssd", cores=[0], draft_cores=[1], k=args.ssd_k, fanout=args.fanout)}
    return [dict(base, name=f"engine {m}", **modes[m]) for m in args.modes]


def run_engine_config(cfg: dict) -> dict:
    """One mode in its own process; raises RuntimeError with stderr's tail if it fails."""
    out = subprocess.run([sys.executable, "-m", "saguaro.bench.serving", json.dumps(cfg)],
                         capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        raise RuntimeError(f"engine benchmark failed for {cfg['name']}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def merge_levels(runs: list[dict]) -> dict:
    """One level's passes -> one: aggregate over all passes' tokens and wall time, means averaged."""
    if len(runs) == 1:
        return runs[0]
    tokens, wall = sum(r["tokens"] for r in runs), sum(r["wall_s"] for r in runs)
    requests = sum(r["requests"] for r in runs)
    merged = dict(runs[-1], tokens=tokens, wall_s=wall, aggregate_tok_s=tokens / wall, requests=requests,
                  requests_per_s=requests / wall, passes_tok_s=[r["aggregate_tok_s"] for r in runs])
    for key in ("mean_decode_tok_s", "mean_ttft_s", "mean_latency_s", "p90_latency_s"):
        merged[key] = _mean([r[key] for r in runs])
    merged.pop("in_flight", None)
    return merged


def merge_mode_passes(runs: list[dict]) -> dict:
    merged = dict(runs[-1], levels=[merge_levels(list(ls)) for ls in zip(*(r["levels"] for r in runs))])
    if runs[-1].get("poisson"):
        merged["poisson"] = merge_levels([r["poisson"] for r in runs])
    return merged


def _table_row(name: str, figures: dict, ratio: str) -> str:
    f = figures
    return (f"{name:26} {f['aggregate_tok_s']:9.2f} {ratio:>7} {f['mean_decode_tok_s']:9.2f} {f['mean_ttft_s']:7.2f} "
            f"{f['mean_latency_s']:7.2f} {f['p90_latency_s']:7.2f}")


def ratio_table(results: list[dict]) -> str:
    """Each level's aggregate tokens/s against the same mode's concurrency-1 aggregate; then the
    Poisson run's throughput and latencies."""
    lines = [f"{'configuration':26} {'agg tok/s':>9} {'vs c=1':>7} {'req tok/s':>9} {'TTFT s':>7} "
             f"{'lat s':>7} {'p90 s':>7}"]
    for r in results:
        one = next((lv for lv in r["levels"] if lv["concurrency"] == 1), None)
        for lv in r["levels"]:
            ratio = lv["aggregate_tok_s"] / one["aggregate_tok_s"] if one else float("nan")
            lines.append(_table_row(f"{r['name']} c={lv['concurrency']}", lv, f"{ratio:.2f}x"))
        if r.get("poisson"):
            lines.append(_table_row(f"{r['name']} poisson {r['poisson']['rate']:g}/s", r["poisson"], "-"))
    return "\n".join(lines)


def bar_note(results: list[dict]) -> str:
    """The issue's bar: AR's aggregate at concurrency 8 against its concurrency 1."""
    ar = next((r for r in results if r["mode"] == "ar"), None)
    by_c = {lv["concurrency"]: lv["aggregate_tok_s"] for lv in ar["levels"]} if ar else {}
    c, need = BAR
    if 1 not in by_c or c not in by_c:
        return ""
    ratio = by_c[c] / by_c[1]
    return f"bar: ar aggregate c={c} / c=1 = {ratio:.2f}x (needs >= {need:g}x: {'pass' if ratio >= need else 'FAIL'})"


def plot_levels(results: list[dict], path: Path, title: str) -> None:
    from saguaro.bench.main import pyplot

    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        xs = [lv["concurrency"] for lv in r["levels"]]
        ax.plot(xs, [lv["aggregate_tok_s"] for lv in r["levels"]], marker="o", label=r["name"])
    ax.set_xlabel("concurrent requests (closed loop)")
    ax.set_ylabel("aggregate generated tokens/s (greedy)")
    ax.set_xticks(sorted({lv["concurrency"] for r in results for lv in r["levels"]}))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run_suite(args) -> int:
    """Run every mode (interleaved `--repeat` passes), print the table, write JSON and PNG."""
    from saguaro.bench.main import cpu_flags

    if getattr(args, "baseline_rev", None):
        log.warning("--baseline-rev applies to the single-stream suites (the engine suite is new); ignored")
    configs = engine_configs(args)
    runs = run_interleaved(configs, args.repeat, run_engine_config, lambda r: ", ".join(
        f"c={lv['concurrency']}: {lv['aggregate_tok_s']:.2f} tok/s" for lv in r["levels"]))
    results = [merge_mode_passes(r) for r in runs]
    table = ratio_table(results)
    note = "\n".join(filter(None, [bar_note(results), f"CPU: {cpu_flags()}"])) + "\n"
    sys.stdout.write(table + "\n" + note)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_engine.json").write_text(json.dumps({"table": table, "note": note, "results": results}, indent=1))
    plot_levels(results, out / "bench_engine.png", f"saguaro bench engine: {args.target}, {args.quantize[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
