"""llama.cpp anchor for the CPU benchmarks, driven through the `xllamacpp` bindings in a separate venv.

Run as a script inside that venv (stdlib + xllamacpp only) it decodes the prompts and prints one JSON
line; imported from saguaro it finds or builds that venv and runs the script as a subprocess. Its
one-shot mode (`oneshot_command`) is a user's first request in a fresh process, for the startup suite.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

# xllamacpp is never a saguaro dependency: it lives in its own venv, by default .bench-env/ at the repo root.
DEFAULT_BENCH_ENV_PYTHON = Path(__file__).resolve().parents[2] / ".bench-env" / "bin" / "python"
ENV_VAR = "SAGUARO_LLAMACPP_PYTHON"
SCRIPT = Path(__file__).resolve()
WARMUP_MESSAGE = "Say hello."


def bench_python() -> str:
    """The benchmark venv's interpreter: $SAGUARO_LLAMACPP_PYTHON, else .bench-env/bin/python."""
    return os.environ.get(ENV_VAR) or str(DEFAULT_BENCH_ENV_PYTHON)


def _has_xllamacpp(python: str) -> bool:
    if not Path(python).exists():
        return False
    return subprocess.run([python, "-c", "import xllamacpp"], capture_output=True).returncode == 0


def ensure_env(python: str | os.PathLike | None = None) -> str:
    """Make sure `python` (a venv's bin/python) exists and imports xllamacpp, creating the venv if needed."""
    python = str(python or bench_python())
    if _has_xllamacpp(python):
        return python
    venv = Path(python).parent.parent
    if not Path(python).exists():
        base = shutil.which("python3") or sys.executable
        log.info("creating the llama.cpp benchmark venv at %s (%s -m venv)", venv, base)
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
    log.info("installing xllamacpp into %s", venv)
    subprocess.run([python, "-m", "pip", "install", "--quiet", "xllamacpp"], check=True)
    return python


def summarize(cfg: dict, result: dict) -> dict:
    """One run's rows -> the same summary shape as saguaro.bench.main.run_config."""
    rows = result["rows"]
    tokens, seconds = sum(r["tokens"] for r in rows), sum(r["seconds"] for r in rows)
    name = cfg.get("name") or ("llama.cpp sd" if cfg.get("draft") else "llama.cpp ar")
    summary = {"name": name, "tok_s": tokens / seconds if seconds else float("nan"),
               "tokens": tokens, "seconds": seconds}
    drafted = sum(r.get("draft_n", 0) for r in rows)
    if drafted:
        summary["acceptance"] = sum(r.get("draft_n_accepted", 0) for r in rows) / drafted
    return {**summary, "config": cfg, "rows": rows, "system_info": result.get("system_info")}


def run_llamacpp(cfg: dict, python: str | None = None) -> dict:
    """Run one llama.cpp configuration in the benchmark venv; raises RuntimeError with stderr's tail."""
    python = python or bench_python()
    child_cfg = {"draft": None, "n_max": 3, "ctx": 2048, **cfg}
    child_cfg["prompts"] = [list(p) for p in child_cfg["prompts"]]
    out = subprocess.run([python, str(SCRIPT), json.dumps(child_cfg)], capture_output=True, text=True)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"llama.cpp run failed (exit {out.returncode}) with {python}:\n{out.stderr[-3000:]}")
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError as e:
        raise RuntimeError(f"llama.cpp run printed no JSON ({e}):\n{out.stdout[-1000:]}\n{out.stderr[-2000:]}")
    return summarize(cfg, result)


def oneshot_command(model: str, prompt: str, max_tokens: int, threads: int, python: str | None = None) -> list[str]:
    """The command line of one fresh llama.cpp process that loads `model` and answers `prompt` once
    (greedy, `max_tokens` tokens, no warm-up); it prints one JSON line with `oneshot`'s stamps."""
    cfg = {"oneshot": True, "model": str(model), "prompt": prompt, "max_tokens": max_tokens, "threads": threads,
           "ctx": 2048, "draft": None}
    return [python or bench_python(), str(SCRIPT), json.dumps(cfg)]


# ---------------------------------------------------------------- the half that runs in the bench venv


def _server(cfg: dict):
    import xllamacpp as xlc

    p = xlc.CommonParams()
    p.model.path = cfg["model"]
    p.n_ctx = cfg["ctx"]
    p.n_parallel = 1
    p.cache_ram_mib = 0  # no host-side prompt cache: every prompt is processed from scratch
    threads = cfg["threads"]
    for cpu in (p.cpuparams, p.cpuparams_batch):
        cpu.n_threads = threads
    p.sampling.temp = 0.0
    p.sampling.top_k = 1
    if cfg.get("draft"):
        d = p.speculative.draft
        d.mparams.path = cfg["draft"]
        # a draft path alone loads the draft model but leaves speculation off; the type switches it on
        p.speculative.types = [xlc.common_speculative_type.COMMON_SPECULATIVE_TYPE_DRAFT_SIMPLE]
        d.n_max = cfg["n_max"]
        d.n_min = cfg.get("n_min", 0)
        if "p_min" in cfg:
            d.p_min = cfg["p_min"]
        for cpu in (d.cpuparams, d.cpuparams_batch):
            cpu.n_threads = threads
    return xlc, xlc.Server(p)


def _request(text: str, max_tokens: int) -> dict:
    return {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, "n_predict": max_tokens,
            "ignore_eos": True, "temperature": 0.0, "top_k": 1, "stream": False, "cache_prompt": False}


def _complete(server, text: str, max_tokens: int) -> dict:
    response = server.handle_chat_completions(_request(text, max_tokens))
    if not isinstance(response, dict) or "timings" not in response:
        raise RuntimeError(f"llama.cpp returned no timings: {json.dumps(response, default=str)[:2000]}")
    return response


def _row(kind: str, response: dict) -> dict:
    t = response["timings"]
    # The first token comes out of the prompt pass, so predicted_ms covers predicted_n - 1 decode steps
    # (llama.cpp's own predicted_per_token_ms divides by that too); count the same way as run_one does.
    row = {"kind": kind, "tokens": t["predicted_n"] - 1, "seconds": t["predicted_ms"] / 1000,
           "predicted_n": t["predicted_n"], "prompt_n": t.get("prompt_n"), "prompt_ms": t.get("prompt_ms"),
           "text": response["choices"][0]["message"].get("content")}
    for key in ("draft_n", "draft_n_accepted"):
        if key in t:
            row[key] = t[key]
    return row


def bench(cfg: dict) -> dict:
    xlc, server = _server(cfg)
    _complete(server, WARMUP_MESSAGE, cfg["max_tokens"])  # first request pays one-off allocation costs
    rows = []
    for kind, text in cfg["prompts"]:
        rows.append(_row(kind, _complete(server, text, cfg["max_tokens"])))
        if rows[-1]["predicted_n"] != cfg["max_tokens"]:
            print(f"warning: {kind}: {rows[-1]['predicted_n']} tokens, wanted {cfg['max_tokens']}", file=sys.stderr)
    return {"rows": rows, "system_info": xlc.get_system_info(), "xllamacpp": getattr(xlc, "__version__", None)}


def oneshot(cfg: dict, started: float) -> dict:
    """A user's first request: wall-clock stamps (time.time(), comparable with the parent's clock)
    when the interpreter ran main(), after importing xllamacpp, after the model load and after the answer."""
    stamps = {"main": started}
    import xllamacpp  # noqa: F401  timed here; _server's own import is then free

    stamps["imported"] = time.time()
    _, server = _server(cfg)
    stamps["loaded"] = time.time()
    row = _row("oneshot", _complete(server, cfg["prompt"], cfg["max_tokens"]))
    stamps["generated"] = time.time()
    return {"stamps": stamps, "row": row}


def main(argv: list[str]) -> int:
    started = time.time()
    if len(argv) != 1:
        print(f"usage: {Path(sys.argv[0]).name} CONFIG_JSON", file=sys.stderr)
        return 2
    cfg = json.loads(argv[0])
    # llama.cpp logs from C++ (some of it to stdout); point fd 1 at stderr and keep the real stdout
    # for the single JSON line the parent parses.
    sys.stdout.flush()
    result_fd = os.dup(1)
    os.dup2(2, 1)
    result = oneshot(cfg, started) if cfg.get("oneshot") else bench(cfg)
    with os.fdopen(result_fd, "w") as out:
        out.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
