"""`saguaro bench serve`: `saguaro serve` against llama.cpp's own server under the same HTTP load.

The engine suite (serving.py) drives the Engine in-process; this one measures what a client of
the OpenAI-compatible server sees, HTTP, JSON and SSE included. Each server runs as a subprocess
on a loopback port (Saguaro's bundled pair in AR, SD K=3 and SSD; llama.cpp on the same target
GGUF with 2 threads, from the `xllamacpp` benchmark venv), and gets the same closed-loop load:
c clients, each keeping one streamed greedy chat request in flight, at every concurrency level.

Per request, from the client's clock: TTFT (sent to the first content chunk) and TPOT (last token
minus first token, over tokens - 1); per level: their p50/p99, requests/s and generated tokens/s
over the level's wall time. Requests ask for `ignore_eos` so every answer has max_tokens tokens
and both servers do the same work, and `cache_prompt: false` so llama.cpp does not skip prefill
of the prompts it has seen (Saguaro has no prefix cache; it ignores the field).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from saguaro.bench.passes import run_interleaved
from saguaro.bench.serving import percentile

log = logging.getLogger(__name__)

LEVELS = [1, 4, 16]
SEQ_LEN = 512  # KV slots per request on both servers: the longest prompt (about 160 tokens) plus max_tokens
LOAD_TIMEOUT_S = 600.0
WARMUP_TOKENS = 8
LLAMACPP_SCRIPT = Path(__file__).with_name("llamacpp_server.py")


# ---- the client ---------------------------------------------------------------------------------


@dataclass
class RequestResult:
    """One streamed request as its client saw it (perf_counter seconds)."""

    sent: float
    first_token: float | None = None
    last_token: float | None = None
    tokens: int = 0
    text: str = ""
    error: str | None = None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.sent

    @property
    def tpot(self) -> float | None:
        """Mean seconds per token after the first; None with fewer than two tokens."""
        if self.first_token is None or self.tokens < 2:
            return None
        return (self.last_token - self.first_token) / (self.tokens - 1)


def chat_body(text: str, max_tokens: int) -> dict:
    """A greedy streamed chat request both servers read the same way."""
    return {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True, "cache_prompt": False}


async def stream_chat(client, url: str, body: dict, headers: dict | None = None) -> RequestResult:
    """POST one streamed chat completion and read its server-sent events to the end.

    Tokens come from the final usage chunk when the server sends one; otherwise each content
    chunk counts as one token (an undercount for servers that send several tokens a chunk)."""
    result = RequestResult(sent=time.perf_counter())
    chunks, usage = 0, None
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body, headers=headers) as r:
            if r.status_code != 200:
                result.error = f"HTTP {r.status_code}: {(await r.aread())[:300].decode(errors='replace')}"
                return result
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if event.get("error"):
                    result.error = str(event["error"].get("message", event["error"]))
                    break
                if event.get("usage"):
                    usage = event["usage"]
                piece = event["choices"][0].get("delta", {}).get("content") if event.get("choices") else None
                if piece:
                    now = time.perf_counter()
                    if result.first_token is None:
                        result.first_token = now
                    result.last_token = now
                    result.text += piece
                    chunks += 1
    except Exception as e:  # noqa: BLE001 - a failed request is counted, not fatal to the level
        result.error = f"{type(e).__name__}: {e}"
    result.tokens = usage["completion_tokens"] if usage else chunks
    return result


async def _closed_loop(url: str, bodies: list[dict], concurrency: int, n_requests: int,
                       headers: dict | None) -> tuple[list[RequestResult], float]:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    results: list[RequestResult] = []
    next_index = iter(range(n_requests))

    async def client_loop(client):
        for i in next_index:  # a shared iterator: each index goes to exactly one client
            results.append(await stream_chat(client, url, bodies[i % len(bodies)], headers))

    async with httpx.AsyncClient(timeout=httpx.Timeout(LOAD_TIMEOUT_S, connect=10), limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        return results, time.perf_counter() - t0


def closed_loop(url: str, bodies: list[dict], concurrency: int, n_requests: int,
                headers: dict | None = None) -> tuple[list[RequestResult], float]:
    """`concurrency` clients, each sending its next request as soon as its last one ends, until
    `n_requests` have been sent (bodies in turn); the results and the wall time."""
    return asyncio.run(_closed_loop(url, bodies, concurrency, n_requests, headers))


def summarize(results: list[RequestResult], wall_s: float) -> dict:
    """A level's figures; failed requests are counted apart and left out of the latencies."""
    ok = [r for r in results if r.error is None]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    tpot = [r.tpot for r in ok if r.tpot is not None]
    tokens = sum(r.tokens for r in ok)
    return {
        "requests": len(ok),
        "errors": len(results) - len(ok),
        "tokens": tokens,
        "wall_s": wall_s,
        "requests_per_s": len(ok) / wall_s if wall_s > 0 else float("nan"),
        "output_tok_s": tokens / wall_s if wall_s > 0 else float("nan"),
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p99_s": percentile(ttft, 99),
        "tpot_p50_s": percentile(tpot, 50),
        "tpot_p99_s": percentile(tpot, 99),
    }


# ---- the servers ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server subprocess with its log in a file; `start()` returns once /health answers 200.

    Stopped with SIGTERM (both servers finish cleanly on it), killed if it does not exit."""

    def __init__(self, name: str, command: list[str], port: int, env: dict | None = None):
        self.name, self.command, self.port, self.env = name, command, port, env
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        fd, path = tempfile.mkstemp(prefix=f"saguaro-bench-{name.replace(' ', '_')}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(path)

    def start(self, timeout: float = LOAD_TIMEOUT_S) -> "ServerProcess":
        import httpx

        log.info("starting %s: %s", self.name, " ".join(self.command))
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before it was ready:\n"
                                   f"{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} was not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop on SIGTERM; killing it", self.name)
            self.proc.kill()
            return self.proc.wait(10)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def saguaro_command(cfg: dict, port: int) -> list[str]:
    """`saguaro serve` for one mode: AR and SD on both cores, SSD's target on core 0 and its draft
    on core 1 (as the other suites)."""
    cmd = [sys.executable, "-c", "import sys; from saguaro.cli.main import main; sys.exit(main())", "serve",
           "--host", "127.0.0.1", "--port", str(port), "--target", cfg["target"], "--mode", cfg["mode"],
           "--max-batch", str(cfg["max_batch"]), "--max-seq-len", str(cfg["seq_len"]), "--dtype", cfg["dtype"],
           "--served-model-name", "bench"]
    if cfg["mode"] != "ar" and cfg.get("draft"):
        cmd += ["--draft", cfg["draft"]]
    flags = {"k": "--k", "fanout": "--fanout", "threads": "--threads", "draft_head_tokens": "--draft-head-tokens",
             "quantize_target": "--quantize-target", "quantize_draft": "--quantize-draft"}
    cmd += [arg for key, flag in flags.items() if cfg.get(key) is not None for arg in (flag, str(cfg[key]))]
    for key, flag in (("cores", "--target-cores"), ("draft_cores", "--draft-cores")):
        if cfg.get(key):
            cmd += [flag, ",".join(map(str, cfg[key]))]
    return cmd


def llamacpp_command(cfg: dict, port: int, python: str) -> list[str]:
    """llama.cpp's server (llamacpp_server.py in the xllamacpp venv): one slot per concurrent request."""
    settings = {"model": cfg["model"], "port": port, "threads": cfg["threads"], "parallel": cfg["max_batch"],
                "ctx_per_slot": cfg["seq_len"]}
    return [python, str(LLAMACPP_SCRIPT), json.dumps(settings)]


def server_configs(args) -> list[dict]:
    """llama.cpp first (the anchor), then each Saguaro mode."""
    from saguaro.loading.bundled import gguf_path

    base = dict(target=args.target, draft=args.draft, dtype=args.dtype, max_batch=args.max_batch, seq_len=SEQ_LEN,
                quantize_target=_first(args.quantize), quantize_draft=_first(args.quantize_draft),
                draft_head_tokens=args.draft_head_tokens)
    out = []
    if not args.no_llamacpp:
        model = gguf_path(args.target)
        out.append(dict(base, name="llama.cpp", engine="llamacpp", model=model, threads=2))
    modes = {"ar": dict(mode="ar", cores=[0, 1]),
             "sd": dict(mode="sd", k=3, cores=[0, 1]),
             "ssd": dict(mode="ssd", cores=[0], draft_cores=[1], k=args.ssd_k, fanout=args.fanout)}
    out += [dict(base, name=f"saguaro {m}", engine="saguaro", **modes[m]) for m in args.modes]
    return out


def _first(values) -> str | None:
    value = values[0] if values else None
    return None if value == "auto" else value


def start_server(cfg: dict) -> ServerProcess:
    port = free_port()
    if cfg["engine"] == "llamacpp":
        from saguaro.bench.llamacpp import ensure_env

        return ServerProcess(cfg["name"], llamacpp_command(cfg, port, ensure_env()), port).start()
    return ServerProcess(cfg["name"], saguaro_command(cfg, port), port).start()


# ---- the suite ------------------------------------------------------------------------------------


def requests_at(concurrency: int, per_level: int) -> int:
    return per_level * concurrency


def run_server(cfg: dict, bodies: list[dict], levels: list[int], per_level: int) -> dict:
    """Start one server, warm it up (one request alone, then one per slot at once), run every
    level, stop it; raw per-request results are kept for merging passes."""
    t0 = time.perf_counter()
    server = start_server(cfg)
    try:
        load_s = time.perf_counter() - t0
        warm = [dict(b, max_tokens=WARMUP_TOKENS) for b in bodies]
        _check(closed_loop(server.url, warm, 1, 1)[0], cfg["name"], "warm-up")
        _check(closed_loop(server.url, warm, max(levels), max(levels))[0], cfg["name"], "warm-up")
        out = []
        for c in levels:
            results, wall = closed_loop(server.url, bodies, c, requests_at(c, per_level))
            level = dict(concurrency=c, **summarize(results, wall), raw=[asdict(r) for r in results])
            out.append(level)
            log.info("%s c=%d: %.2f tok/s, TTFT p50 %.2f s, TPOT p50 %.0f ms%s", cfg["name"], c,
                     level["output_tok_s"], level["ttft_p50_s"], level["tpot_p50_s"] * 1000,
                     f", {level['errors']} errors" if level["errors"] else "")
    finally:
        code = server.stop()
        if code not in (0, None):
            log.warning("%s exited with %s; its log: %s", cfg["name"], code, server.log_path)
    return {"name": cfg["name"], "config": cfg, "load_s": load_s, "levels": out}


def _check(results: list[RequestResult], name: str, what: str) -> None:
    failed = [r.error for r in results if r.error]
    if failed:
        raise RuntimeError(f"{name}: {what} request failed: {failed[0]}")


def merge_passes(runs: list[dict]) -> dict:
    """One server's passes -> one: each level's figures over all its passes' requests and wall time."""
    if len(runs) == 1:
        return runs[0]
    if any(r.get("error") for r in runs):
        return next(r for r in runs if r.get("error"))
    levels = []
    for same in zip(*(r["levels"] for r in runs)):
        raw = [x for lv in same for x in lv["raw"]]
        results = [RequestResult(**x) for x in raw]
        levels.append(dict(concurrency=same[0]["concurrency"], **summarize(results, sum(lv["wall_s"] for lv in same)),
                           raw=raw, passes_tok_s=[lv["output_tok_s"] for lv in same]))
    return dict(runs[-1], levels=levels)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def ratio_table(results: list[dict], anchor: str = "llama.cpp") -> str:
    """Every server at every level; then each Saguaro mode over llama.cpp at the same level
    (throughput: higher is better; TTFT and TPOT: lower is better)."""
    lines = [f"{'server':16} {'c':>3} {'req/s':>6} {'tok/s':>7} {'TTFT p50':>9} {'TTFT p99':>9} "
             f"{'TPOT p50':>9} {'TPOT p99':>9} {'err':>4}",
             f"{'':16} {'':>3} {'':>6} {'':>7} {'s':>9} {'s':>9} {'ms':>9} {'ms':>9} {'':>4}"]
    for r in results:
        for lv in r["levels"]:
            lines.append(f"{r['name']:16} {lv['concurrency']:3d} {lv['requests_per_s']:6.2f} {lv['output_tok_s']:7.2f} "
                         f"{lv['ttft_p50_s']:9.2f} {lv['ttft_p99_s']:9.2f} {_ms(lv['tpot_p50_s']):>9} "
                         f"{_ms(lv['tpot_p99_s']):>9} {lv['errors']:4d}")
    base = next((r for r in results if r["name"] == anchor), None)
    if base is None or len(results) < 2:
        return "\n".join(lines)
    by_c = {lv["concurrency"]: lv for lv in base["levels"]}
    lines += ["", f"{'vs ' + anchor:16} {'c':>3} {'tok/s':>7} {'TTFT p50':>9} {'TPOT p50':>9} {'TPOT p99':>9}"]
    for r in results:
        if r is base:
            continue
        for lv in r["levels"]:
            ref = by_c.get(lv["concurrency"])
            if ref is None:
                continue
            lines.append(f"{r['name']:16} {lv['concurrency']:3d} {_ratio(lv, ref, 'output_tok_s'):>7} "
                         f"{_ratio(lv, ref, 'ttft_p50_s'):>9} {_ratio(lv, ref, 'tpot_p50_s'):>9} "
                         f"{_ratio(lv, ref, 'tpot_p99_s'):>9}")
    return "\n".join(lines)


def _ratio(a: dict, b: dict, key: str) -> str:
    x, y = a.get(key), b.get(key)
    if not x or not y or x != x or y != y:  # missing, zero or nan
        return "-"
    return f"{x / y:.2f}x"


def plot(results: list[dict], path: Path, title: str) -> None:
    from saguaro.bench.main import pyplot

    plt = pyplot()
    if plt is None:
        return
    panels = [("output_tok_s", "generated tokens/s", 1), ("ttft_p50_s", "TTFT p50 (s)", 1),
              ("tpot_p50_s", "TPOT p50 (ms)", 1000)]
    fig, axes = plt.subplots(1, len(panels), figsize=(13, 4.2))
    levels = sorted({lv["concurrency"] for r in results for lv in r["levels"]})
    for ax, (key, label, scale) in zip(axes, panels):
        for r in results:
            style = dict(color="black", linestyle="--") if r["config"]["engine"] == "llamacpp" else {}
            ax.plot([lv["concurrency"] for lv in r["levels"]], [lv[key] * scale for lv in r["levels"]],
                    marker="o", label=r["name"], **style)
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_xlabel("concurrent streamed requests")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def add_arguments(p) -> None:
    """The serve suite's own flags on `saguaro bench` (it also reads --modes, --max-batch,
    --kinds, --max-tokens, --ssd-k, --fanout, --repeat, --no-llamacpp and --out)."""
    g = p.add_argument_group("serve suite")
    g.add_argument("--serve-levels", type=int, nargs="*", default=LEVELS, help="concurrency levels (default 1 4 16)")
    g.add_argument("--per-level", type=int, default=2,
                   help="requests per level, as a multiple of its concurrency (default 2)")


def run_suite(args) -> int:
    """Every server (interleaved `--repeat` passes), then the table, JSON and PNG under --out."""
    from saguaro.bench.main import cpu_flags
    from saguaro.bench.prompts import all_prompts

    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    bodies = [chat_body(text, args.max_tokens) for _, text in all_prompts(args.kinds)]
    configs = server_configs(args)

    def run(cfg: dict) -> dict:
        try:
            return run_server(cfg, bodies, args.serve_levels, args.per_level)
        except RuntimeError as e:  # one server that fails to start or serve costs its rows, not the run
            log.error("%s failed: %s", cfg["name"], e)
            return {"name": cfg["name"], "config": cfg, "error": str(e)[:3000], "levels": []}

    results = [merge_passes(r) for r in run_interleaved(configs, args.repeat, run)]
    table = ratio_table(results)
    table += "".join(f"\n{r['name']} failed: {r['error'].splitlines()[0]}" for r in results if r.get("error"))
    note = (f"{args.max_tokens} greedy tokens a request (ignore_eos), {len(bodies)} prompts in turn, "
            f"{args.per_level} x c requests per level, max batch / slots {args.max_batch}\nCPU: {cpu_flags()}\n")
    sys.stdout.write(table + "\n\n" + note)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_serve.json").write_text(json.dumps({"table": table, "note": note, "results": results}, indent=1))
    plot(results, out / "bench_serve.png", f"saguaro bench serve: {args.target}, streamed over HTTP, "
                                           f"{args.max_tokens} tokens/request")
    return 1 if any(r.get("error") for r in results) else 0
