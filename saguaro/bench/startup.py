"""`saguaro bench startup`: a fresh process's wall time to its first token and to N tokens.

What a user waits for, from the moment `saguaro generate` starts to its exit: Saguaro AR, SD and
SSD with a warm cache and an empty one (only the compiled kernels that setup leaves), next to a
fresh llama.cpp process on the same GGUF. Each run is its own process, timed from the outside.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from saguaro.bench.passes import run_interleaved
from saguaro.bench.prompts import PROMPTS
from saguaro.bench.startup_llamacpp import llamacpp_config, llamacpp_milestones
from saguaro.loading.bundled import CACHE_ENV, DEFAULT_DRAFT, DEFAULT_TARGET, cache_dir

log = logging.getLogger(__name__)

IMPORTS = {"python": "pass", "import torch": "import torch", "import saguaro.cli.main": "import saguaro.cli.main",
           "import saguaro.llm": "import saguaro.llm"}
# Milestones of a saguaro child, from its INFO log (stderr): each is the arrival time of the first
# line that matches. Lines change as the engine does; a milestone not found stays empty.
MILESTONES = ("imports", "target", "draft", "worker", "engine", "calibrated", "generated", "exit")
LEGEND = ("imports: torch and the engine imported (llama.cpp: xllamacpp); target, draft: loaded; worker: the SSD "
          "worker's first line;\nengine: KV pool built; calibrated: SSD budget measured; generated: the summary "
          "line; decode: the decode time it reports")


@dataclass
class ProcessRun:
    """One child process as seen from outside: its wall time, exit status, stdout and stderr lines."""

    seconds: float
    returncode: int
    stdout: str
    lines: list[tuple[float, str]] = field(default_factory=list)  # (seconds since the spawn, stderr line)
    started: float = 0.0  # time.time() just before the spawn, for stamps the child prints


def run_process(cmd: list[str], env: dict | None = None) -> ProcessRun:
    """Spawn `cmd` and time it to its exit; stderr is read as it comes so each line gets its arrival time."""
    with tempfile.TemporaryFile("w+") as out:
        started, t0 = time.time(), time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True, errors="replace", env=env)
        lines = [(time.perf_counter() - t0, line.rstrip("\n")) for line in proc.stderr]
        returncode = proc.wait()
        seconds = time.perf_counter() - t0
        out.seek(0)
        return ProcessRun(seconds, returncode, out.read(), lines, started)


def saguaro_command() -> list[str]:
    """The `saguaro` entry point of this interpreter's venv (what a user runs), else `python -m saguaro`."""
    script = Path(sys.executable).parent / "saguaro"
    return [str(script)] if script.exists() else [sys.executable, "-m", "saguaro"]


def generate_command(args, mode: str, tokens: int) -> list[str]:
    """`saguaro generate` with the defaults but greedy and exactly `tokens` tokens, as llama.cpp runs;
    -v for the INFO lines the breakdown reads. The model flags only where they are not the defaults."""
    cmd = [*saguaro_command(), "generate", "-v", "--chat", "--mode", mode, "--max-tokens", str(tokens),
           "--temperature", "0", "--ignore-eos"]
    if args.target != DEFAULT_TARGET:
        cmd += ["--target", args.target]
    if mode != "ar" and (args.draft != DEFAULT_DRAFT or args.target != DEFAULT_TARGET):
        cmd += ["--draft", args.draft]
    if args.dtype != "auto":
        cmd += ["--dtype", args.dtype]
    return [*cmd, args.prompt]


def configs(args, cache: str) -> list[dict]:
    """One pass's runs in order: llama.cpp, then each Saguaro mode, each at 1 and N tokens; the import
    probes with the warm cache only (no cache is involved)."""
    counts = [1, args.max_tokens] if args.first_token and args.max_tokens != 1 else [args.max_tokens]
    out = []
    if not args.no_llamacpp:
        out += [llamacpp_config(args, cache, n) for n in counts]
    for mode in args.modes:
        out += [{"name": f"saguaro {mode}", "engine": "saguaro", "mode": mode, "cache": cache, "tokens": n,
                 "cmd": generate_command(args, mode, n)} for n in counts]
    if cache == "warm":
        out += [{"name": name, "engine": "python", "cache": "-", "tokens": None, "cmd": [sys.executable, "-c", code]}
                for name, code in IMPORTS.items()]
    return out


@contextmanager
def empty_cache(kernels: Path):
    """A new SAGUARO_CACHE holding only a copy of the compiled kernels, removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="saguaro-empty-cache-"))
    try:
        if kernels.is_dir():
            shutil.copytree(kernels, root / "kernels", symlinks=True)
        else:
            log.warning("no compiled kernels in %s: the empty-cache run also builds them", kernels)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def match_milestones(lines: list[tuple[float, str]], target: str, draft: str) -> dict[str, float]:
    """Seconds since the spawn at which each milestone's first log line arrived (absent: not found)."""
    def key(ref: str) -> str:
        name = Path(ref).name
        return name[:-5] if name.endswith(".gguf") else name

    tests = {"imports": lambda l: "saguaro.cli.main: loading " in l,
             "target": lambda l: " loaded " in f" {l}" and key(target) in l,
             "draft": lambda l: " loaded " in f" {l}" and key(draft) in l,
             "worker": lambda l: "saguaro-worker" in l,
             "engine": lambda l: "KV pool:" in l,
             "calibrated": lambda l: "budget: K=" in l,
             "generated": lambda l: _decode_seconds(l) is not None}
    found: dict[str, float] = {}
    for t, line in lines:
        for name, test in tests.items():
            if name not in found and test(line):
                found[name] = t
    return found


def _decode_seconds(line: str) -> float | None:
    """The decode time in the CLI's summary line ("16 tokens, 12.8 tokens/s, mode ssd, ..."), or None."""
    parts = line.split(", ")
    try:
        tokens, rate = int(parts[0].removesuffix(" tokens")), float(parts[1].removesuffix(" tokens/s"))
    except (IndexError, ValueError):
        return None
    return tokens / rate if rate > 0 and parts[1].endswith(" tokens/s") else None


def measure(cfg: dict, run: ProcessRun, target: str, draft: str) -> dict:
    """One child's result: wall seconds and its milestones, or the error with stderr's tail."""
    result = {"name": cfg["name"], "cache": cfg["cache"], "tokens": cfg["tokens"], "seconds": run.seconds}
    if run.returncode != 0:
        tail = "\n".join(line for _, line in run.lines[-30:])
        log.error("%s (%s cache) exited with %d:\n%s", cfg["name"], cfg["cache"], run.returncode, tail)
        return dict(result, error=f"exit {run.returncode}: {tail[-3000:]}")
    if cfg["engine"] == "saguaro":
        result["milestones"] = dict(match_milestones(run.lines, target, draft), exit=run.seconds)
        decode = [d for _, line in run.lines if (d := _decode_seconds(line)) is not None]
        if decode:
            result["decode_s"] = decode[-1]
    elif cfg["engine"] == "llamacpp":
        result.update(llamacpp_milestones(run))
    return result


def summarize(results: list[dict]) -> list[dict]:
    """Each (cache, name, tokens): median and min seconds over its passes (failed runs left out) and
    each milestone's median."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["cache"], r["name"], r["tokens"]), []).append(r)
    out = []
    for (cache, name, tokens), runs in groups.items():
        ok = [r for r in runs if "error" not in r]
        row = {"cache": cache, "name": name, "tokens": tokens, "runs": len(ok), "failed": len(runs) - len(ok)}
        if ok:
            secs = [r["seconds"] for r in ok]
            row.update(median=statistics.median(secs), min=min(secs))
            stones = [r.get("milestones", {}) for r in ok]
            row["milestones"] = {m: statistics.median(v) for m in MILESTONES
                                 if (v := [s[m] for s in stones if m in s])}
            if decode := [r["decode_s"] for r in ok if "decode_s" in r]:
                row["decode_s"] = statistics.median(decode)
        out.append(row)
    return out


def _cell(row: dict | None) -> str:
    text = f"{row['median']:.1f} s ({row['min']:.1f})" if row and "median" in row else "-"
    return f"{text:>15}"


def _ratio(row: dict | None, base: dict | None) -> str:
    if row and base and "median" in row and "median" in base and base["median"] > 0:
        return f"{row['median'] / base['median']:6.2f}x"
    return f"{'-':>7}"


def _rows(summary: list[dict]) -> tuple[dict, list[tuple[str, str]]]:
    """The summary by (cache, name, tokens), and the (cache, engine) rows in run order."""
    by = {(r["cache"], r["name"], r["tokens"]): r for r in summary}
    return by, list(dict.fromkeys((r["cache"], r["name"]) for r in summary if r["tokens"] is not None))


def _vs(row: dict | None, base: dict | None) -> str:
    return f", {row['median'] / base['median']:.1f}x llama.cpp" if base and "median" in base else ""


def time_table(summary: list[dict], max_tokens: int) -> tuple[str, list[str]]:
    """Median (min) seconds to the first and the last token, ratios against llama.cpp's fresh process
    in the same passes, and one sentence per Saguaro row."""
    by, names = _rows(summary)
    lines = [f"{'cache':6} {'engine':12} {'first token':>15} {'vs llama':>8} "
             f"{f'{max_tokens} tokens':>15} {'vs llama':>8}"]
    sentences = []
    for cache, name in names:
        first, full = by.get((cache, name, 1)), by.get((cache, name, max_tokens))
        base1, base = by.get((cache, "llama.cpp", 1)), by.get((cache, "llama.cpp", max_tokens))
        lines.append(f"{cache:6} {name:12} {_cell(first)} {_ratio(first, base1):>8} "
                     f"{_cell(full)} {_ratio(full, base):>8}")
        if name != "llama.cpp" and full and "median" in full:
            text = f"{name.split()[-1].upper()} {cache}: {full['median']:.1f} s to {max_tokens} tokens{_vs(full, base)}"
            if first and "median" in first and max_tokens != 1:
                text += f"; first token {first['median']:.1f} s{_vs(first, base1)}"
            sentences.append(text)
    probes = [r for r in summary if r["tokens"] is None and "median" in r]
    if probes:
        lines.append("fresh interpreters: " + ", ".join(f"{r['name']} {r['median']:.2f} s" for r in probes))
    return "\n".join(lines), sentences


def breakdown_table(summary: list[dict], max_tokens: int) -> str:
    """Median seconds since the spawn at which each milestone of the N-token runs was logged, and the
    decode time; a milestone a run did not log stays blank."""
    by, names = _rows(summary)
    columns = (*MILESTONES, "decode")
    lines = [f"where the seconds go, {max_tokens} tokens (median s since the spawn):",
             f"{'cache':6} {'engine':12} " + " ".join(f"{m:>10}" for m in columns)]
    for cache, name in names:
        row = by.get((cache, name, max_tokens)) or {}
        stones = dict(row.get("milestones", {}), decode=row.get("decode_s"))
        cells = " ".join(f"{stones[m]:10.1f}" if stones.get(m) is not None else f"{'':>10}" for m in columns)
        lines.append(f"{cache:6} {name:12} {cells}".rstrip())
    return "\n".join([*lines, LEGEND])


def plot(summary: list[dict], max_tokens: int, path: Path) -> None:
    from saguaro.bench.main import pyplot

    plt = pyplot()
    rows = [r for r in summary if r["tokens"] == max_tokens and "median" in r]
    if plt is None or not rows:
        return
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.5))
    ax.barh([f"{r['name']} ({r['cache']})" for r in rows][::-1], [r["median"] for r in rows][::-1], color="#3a7d44")
    ax.set_xlabel(f"seconds from the process's start to its exit with {max_tokens} tokens (median)")
    ax.set_title("saguaro bench startup: fresh processes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def add_arguments(p) -> None:
    """The startup suite's own flags on `saguaro bench` (it also reads --target, --draft, --dtype,
    --modes, --max-tokens, --repeat, --no-llamacpp and --out)."""
    g = p.add_argument_group("startup suite")
    g.add_argument("--caches", nargs="*", choices=["warm", "empty"], default=["warm", "empty"],
                   help="warm: the user's cache after one untimed run; empty: a new cache with only the kernels")
    g.add_argument("--empty-repeat", type=int, default=1, help="passes with an empty cache (each run takes minutes)")
    g.add_argument("--first-token", action=argparse.BooleanOptionalAction, default=True,
                   help="also time fresh processes that stop at their first token")
    g.add_argument("--prompt", default=PROMPTS["code"][0], help="the prompt (a chat message), for every engine")
    g.add_argument("--llamacpp-threads", type=int, default=2, help="llama.cpp's threads")


def warm_up(todo: list[dict], runner) -> None:
    """One untimed run of each engine (its shortest), so the warm passes find the user's cache filled
    (assembled GGUF, converted weights) and the files in the page cache."""
    seen = set()
    for cfg in sorted((c for c in todo if c["engine"] != "python"), key=lambda c: c["tokens"]):
        if cfg["name"] not in seen:
            seen.add(cfg["name"])
            log.info("warming up: %s (untimed)", cfg["name"])
            runner(cfg["cmd"])


def run_suite(args, runner=None) -> int:
    """The warm passes (after one untimed run of each), then the empty-cache passes; the tables on
    stdout and the JSON and PNG under --out."""
    from saguaro.bench.main import cpu_flags

    runner = runner or run_process
    kernels = cache_dir() / "kernels"

    def run(cfg: dict) -> dict:
        if cfg["cache"] != "empty" or cfg["engine"] != "saguaro":  # llama.cpp keeps no cache
            return measure(cfg, runner(cfg["cmd"]), args.target, args.draft)
        with empty_cache(kernels) as root:
            child = runner(cfg["cmd"], dict(os.environ, **{CACHE_ENV: str(root)}))
        return measure(cfg, child, args.target, args.draft)

    def describe(r: dict) -> str:
        return "failed" if "error" in r else f"{r['seconds']:.1f} s"

    results = []
    for cache, repeat in (("warm", args.repeat), ("empty", args.empty_repeat)):
        if cache not in args.caches or repeat < 1:
            continue
        todo = configs(args, cache)
        if cache == "warm":
            warm_up(todo, runner)
        results += [r for runs in run_interleaved(todo, repeat, run, describe) for r in runs]
    summary = summarize(results)
    table, sentences = time_table(summary, args.max_tokens)
    breakdown = breakdown_table(summary, args.max_tokens)
    note = f"prompt: {args.prompt!r}; CPU: {cpu_flags()}"
    sys.stdout.write("\n".join([table, "", breakdown, "", *sentences, note]) + "\n")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_startup.json").write_text(json.dumps(
        {"table": table, "breakdown": breakdown, "sentences": sentences, "note": note, "summary": summary,
         "results": results}, indent=1))
    plot(summary, args.max_tokens, out / "bench_startup.png")
    return 0 if all("error" not in r for r in results) else 1
