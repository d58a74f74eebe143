"""`saguaro bench {ar,sd,ssd,cpu,engine,serve,startup}`: side-by-side benchmarks in one run, printed as ratio tables.

Every configuration runs in its own subprocess with its own core pinning; ratios are against
baselines measured in the same run (these machines are noisy). Results go to JSON and a PNG.
`--baseline-rev REV` also runs each Saguaro configuration with the code of another git revision
(from a worktree under /tmp), side by side. The engine suite (concurrent load) is saguaro.bench.serving;
the serve suite (HTTP load on `saguaro serve` and llama.cpp's server) is saguaro.bench.serve_load;
the startup suite (fresh processes to their first tokens) is saguaro.bench.startup.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from saguaro.bench import serve_load, serving, startup
from saguaro.bench.passes import run_interleaved
from saguaro.bench.prompts import all_prompts
from saguaro.bench.rounds import rounds_table
from saguaro.loading.bundled import DEFAULT_DRAFT, DEFAULT_TARGET

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]


def run_config(cfg: dict) -> dict:
    if cfg["engine"] == "llamacpp":
        from saguaro.bench.llamacpp import run_llamacpp

        return run_llamacpp(cfg)
    out = subprocess.run([sys.executable, "-m", "saguaro.bench.run_one", json.dumps(cfg)],
                         capture_output=True, text=True, **revision_env(cfg))
    if out.returncode != 0:
        raise RuntimeError(f"benchmark run failed for {cfg['name']}:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    rows = result["rows"]
    tokens, seconds = sum(r["tokens"] for r in rows), sum(r["seconds"] for r in rows)
    summary = {"name": cfg["name"], "tok_s": tokens / seconds, "tokens": tokens, "seconds": seconds}
    drafted = sum(r.get("drafted", 0) for r in rows)
    if drafted:
        summary["acceptance"] = sum(r.get("accepted", 0) for r in rows) / drafted
    if any("hit_rate" in r for r in rows):
        summary["hit_rate"] = sum(r["hit_rate"] for r in rows) / len(rows)
        summary["k"] = rows[-1].get("k")
        summary["branches"] = rows[-1].get("branches")
    return {**summary, "config": cfg, "rows": rows}


def revision_env(cfg: dict) -> dict:
    """subprocess.run arguments that make a configuration import another revision's code: cwd
    and PYTHONPATH at its worktree (`pythonpath`); none for the working tree's own code."""
    if not cfg.get("pythonpath"):
        return {}
    return {"cwd": cfg["pythonpath"], "env": dict(os.environ, PYTHONPATH=cfg["pythonpath"])}


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, check=True).stdout.strip()


def baseline_worktree(rev: str, root: Path = REPO) -> Path:
    """A detached git worktree of `rev` under /tmp, made once and reused (the working tree is untouched)."""
    commit = _git(root, "rev-parse", "--verify", f"{rev}^{{commit}}")
    path = Path(tempfile.gettempdir()) / f"saguaro-{commit[:12]}"
    if not (path / ".git").exists():
        _git(root, "worktree", "prune")
        log.info("checking out %s (%s) into %s", rev, commit[:12], path)
        _git(root, "worktree", "add", "--detach", str(path), commit)
    elif _git(path, "rev-parse", "HEAD") != commit:
        raise RuntimeError(f"{path} holds another commit than {rev} ({commit[:12]}); remove it")
    return path


def with_baseline(configs: list[dict], rev: str, path: Path) -> list[dict]:
    """After each Saguaro configuration, the same one run by revision `rev`'s code ("<name> @<rev>")."""
    out = []
    for cfg in configs:
        out.append(cfg)
        if cfg["engine"] == "saguaro":
            out.append(dict(cfg, name=f"{cfg['name']} @{rev}", revision=rev, pythonpath=str(path)))
    return out


def merge_passes(runs: list[dict]) -> dict:
    """One configuration's passes -> one result: tokens/s over all passes, each pass's figure kept."""
    if len(runs) == 1:
        return runs[0]
    tokens, seconds = sum(r["tokens"] for r in runs), sum(r["seconds"] for r in runs)
    merged = dict(runs[-1], tok_s=tokens / seconds, tokens=tokens, seconds=seconds,
                  passes_tok_s=[r["tok_s"] for r in runs], rows=[row for r in runs for row in r["rows"]])
    for key in ("acceptance", "hit_rate"):
        if key in runs[0]:
            merged[key] = sum(r[key] for r in runs) / len(runs)
    return merged


def suite_configs(suite: str, args) -> list[dict]:
    prompts = all_prompts(args.kinds)
    edit = all_prompts(["editing"])
    base = dict(target=args.target, draft=args.draft, dtype=args.dtype, max_tokens=args.max_tokens, prompts=prompts,
                draft_head_tokens=args.draft_head_tokens)
    both, one, two = [0, 1], [0], [1]
    if suite == "ar":
        return [dict(base, name="hf ar", engine="hf", mode="hf_greedy", cores=both),
                dict(base, name="saguaro ar", engine="saguaro", mode="ar", cores=both)]
    if suite == "sd":
        out = [dict(base, name="saguaro ar", engine="saguaro", mode="ar", cores=both),
               dict(base, name="hf ar", engine="hf", mode="hf_greedy", cores=both),
               dict(base, name="hf assisted k=5", engine="hf", mode="hf_assisted", k=5, cores=both),
               dict(base, name="hf prompt lookup", engine="hf", mode="hf_lookup", cores=both)]
        out += [dict(base, name=f"saguaro sd k={k}", engine="saguaro", mode="sd", k=k, cores=both)
                for k in args.ks]
        out += [dict(base, name="saguaro ar (editing)", engine="saguaro", mode="ar", cores=both, prompts=edit),
                dict(base, name="saguaro sd ngram k=4 (editing)", engine="saguaro", mode="sd", draft="ngram",
                     k=4, cores=both, prompts=edit)]
        return out
    if suite == "ssd":
        out = []
        for setting, cores in (("a", one), ("b", both)):
            if setting not in args.settings:
                continue
            out.append(dict(base, name=f"({setting}) saguaro ar", engine="saguaro", mode="ar", cores=cores))
            out += [dict(base, name=f"({setting}) saguaro sd k={k}", engine="saguaro", mode="sd", k=k, cores=cores)
                    for k in args.ks]
            out.append(dict(base, name=f"({setting}) saguaro ssd", engine="saguaro", mode="ssd", cores=one,
                            draft_cores=two, k=args.ssd_k, fanout=args.fanout))
        return out
    if suite == "cpu":
        return cpu_configs(args, base, both, one, two)
    raise ValueError(suite)


def cpu_configs(args, base: dict, both: list[int], one: list[int], two: list[int]) -> list[dict]:
    """llama.cpp on the same GGUF files against Saguaro at each precision, all on 2 threads."""
    from saguaro.loading.bundled import gguf_path as gguf

    out = []
    if not getattr(args, "no_llamacpp", False):
        llama = dict(base, engine="llamacpp", model=gguf(args.target), threads=2, n_max=args.ssd_k or 3)
        out += [dict(llama, name="llama.cpp ar", draft=None),
                dict(llama, name="llama.cpp spec", draft=gguf(args.draft))]
    for quant in args.quantize:
        q = dict(base, engine="saguaro", quantize_target=quant)
        out.append(dict(q, name=f"saguaro ar {quant}", mode="ar", cores=both))
        for dq in args.quantize_draft:
            tag = quant if dq == "auto" else f"{quant} draft {dq}"
            out += [dict(q, name=f"saguaro sd k=3 {tag}", mode="sd", k=3, cores=both, quantize_draft=dq),
                    dict(q, name=f"saguaro ssd {tag}", mode="ssd", cores=one, draft_cores=two, k=args.ssd_k,
                         fanout=args.fanout, quantize_draft=dq)]
    return out


def cpu_flags(info: str | None = None) -> str:
    """The CPU's model and the SIMD flags that pick kernels (from /proc/cpuinfo), for the record."""
    try:
        info = Path("/proc/cpuinfo").read_text() if info is None else info
    except OSError:
        return "unknown"
    model = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")), "?")
    flags = next((l.split(":", 1)[1].split() for l in info.splitlines() if l.startswith("flags")), [])
    keep = [f for f in flags if f.startswith(("avx", "amx")) or f in ("fma", "f16c")]
    return f"{model}: {' '.join(keep)}"


def print_table(results: list[dict], baseline: str, rev: str | None = None) -> str:
    """tok/s and ratios against `baseline`; with `rev`, also each row against its "<name> @<rev>" copy."""
    base = {r["name"]: r for r in results}
    width = max([34] + [len(r["name"]) for r in results])
    vs_rev = f"vs @{rev}" if rev else ""
    lines = [f"{'configuration':{width}} {'tok/s':>7} {'vs ' + baseline:>14} {'accept':>7} {'hit':>6} {'K/B':>6}"
             + (f" {vs_rev:>{len(vs_rev) + 1}}" if rev else "")]
    for r in results:
        ref = base.get(r["name"].split(") ")[0] + ") " + baseline if r["name"].startswith("(") else baseline)
        ratio = r["tok_s"] / ref["tok_s"] if ref else float("nan")
        acc = f"{r['acceptance']:.2f}" if "acceptance" in r else "-"
        hit = f"{r['hit_rate']:.2f}" if "hit_rate" in r else "-"
        kb = f"{r.get('k')}/{r.get('branches')}" if "hit_rate" in r else "-"
        line = f"{r['name']:{width}} {r['tok_s']:7.2f} {ratio:13.2f}x {acc:>7} {hit:>6} {kb:>6}"
        if rev:
            old = base.get(f"{r['name']} @{rev}")
            line += f" {r['tok_s'] / old['tok_s']:{len(vs_rev)}.2f}x" if old else f" {'-':>{len(vs_rev) + 1}}"
        lines.append(line)
    return "\n".join(lines)


def pyplot():
    """matplotlib's pyplot on a file backend, or None (with a warning) when it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed; no plot written")
        return None
    return plt


def plot(results: list[dict], path: Path, title: str) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(results) + 1.5))
    names = [r["name"] for r in results][::-1]
    ax.barh(names, [r["tok_s"] for r in results][::-1], color="#3a7d44")
    ax.set_xlabel("decode tokens/s (greedy)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="saguaro bench", description=__doc__)
    p.add_argument("suite", choices=["ar", "sd", "ssd", "cpu", "engine", "serve", "startup"])
    p.add_argument("--target", default=DEFAULT_TARGET)
    p.add_argument("--draft", default=DEFAULT_DRAFT)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--quantize", nargs="*", default=["auto"],
                   help="cpu suite: target precisions to run (auto none int8 int4); engine suite: the first")
    p.add_argument("--quantize-draft", nargs="*", default=["auto"],
                   help="cpu suite: the draft's precisions; engine suite: the first")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="new tokens per request (128; engine suite 64, serve suite 48, startup suite 16)")
    p.add_argument("--kinds", nargs="*", help="prompt kinds (code instruction math editing); default all")
    p.add_argument("--ks", type=int, nargs="*", default=[2, 3, 4, 5, 6, 7, 8], help="SD lookaheads")
    p.add_argument("--ssd-k", type=int, default=None, help="SSD lookahead (default: from the budget)")
    p.add_argument("--fanout", default="flat")
    p.add_argument("--draft-head-tokens", type=int, default=None,
                   help="SD/SSD drafts keep only this many frequent tokens in their LM head")
    p.add_argument("--settings", nargs="*", default=["a", "b"], help="ssd suite: which CPU settings to run")
    p.add_argument("--out", default="docs", help="folder for the JSON and PNG")
    p.add_argument("--repeat", type=int, default=None,
                   help="interleaved passes over all configurations (1; startup suite 3, with a warm cache)")
    p.add_argument("--baseline-rev", default=None,
                   help="also run each saguaro configuration with this git revision's code, side by side")
    p.add_argument("--no-llamacpp", action="store_true",
                   help="cpu and startup suites: skip the llama.cpp rows (and their venv)")
    serving.add_arguments(p)
    serve_load.add_arguments(p)
    startup.add_arguments(p)
    args = p.parse_args(argv)
    if Path(args.out).exists() and not Path(args.out).is_dir():
        p.error(f"--out {args.out} is a file; it names the folder the JSON and PNG go to")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.max_tokens is None:
        args.max_tokens = {"engine": 64, "serve": 48, "startup": 16}.get(args.suite, 128)
    if args.repeat is None:
        args.repeat = 3 if args.suite == "startup" else 1
    if args.suite == "engine":
        return serving.run_suite(args)
    if args.suite == "serve":
        return serve_load.run_suite(args)
    if args.suite in ("cpu", "startup") and not args.no_llamacpp:
        from saguaro.bench.llamacpp import ensure_env

        ensure_env()
    if args.suite == "startup":
        return startup.run_suite(args)
    configs = suite_configs(args.suite, args)
    if args.baseline_rev:
        configs = with_baseline(configs, args.baseline_rev, baseline_worktree(args.baseline_rev))
    runs = run_interleaved(configs, args.repeat, run_config, lambda r: f"{r['tok_s']:.2f} tok/s")
    results = [merge_passes(r) for r in runs]
    baseline = {"ar": "hf ar", "sd": "saguaro ar", "ssd": "saguaro ar", "cpu": "llama.cpp ar"}[args.suite]
    if not any(r["name"] == baseline for r in results):  # e.g. --no-llamacpp
        baseline = results[0]["name"]
    table = print_table(results, baseline, args.baseline_rev)
    extra = ""
    if args.suite == "ar":
        extra = roofline_note(args, results)
    if args.suite == "cpu":
        extra = f"\nCPU: {cpu_flags()}\n"
    if rounds := rounds_table(results):
        extra += f"\n{rounds}\n"
    sys.stdout.write(table + "\n" + extra)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"bench_{args.suite}.json").write_text(json.dumps({"table": table, "note": extra, "results": results}, indent=1))
    plot(results, out / f"bench_{args.suite}.png", f"saguaro bench {args.suite}: {args.target}, {args.dtype}")
    return 0


def roofline_note(args, results: list[dict]) -> str:
    from saguaro.bench.roofline import measure_read_bandwidth, weight_bytes_per_token
    from saguaro.loading.loader import load_model
    from saguaro.ssd.placement import pin_process

    pin_process([0, 1])
    bandwidth = measure_read_bandwidth()
    weights = weight_bytes_per_token(load_model(args.target, dtype=args.dtype).decoder)
    ceiling = bandwidth / weights
    ours = next(r for r in results if r["name"] == "saguaro ar")["tok_s"]
    return (f"\nroofline: {bandwidth / 1e9:.1f} GB/s measured read bandwidth, {weights / 1e9:.2f} GB of weights "
            f"per token -> ceiling {ceiling:.2f} tok/s; saguaro ar reaches {ours / ceiling:.0%} of it\n")


if __name__ == "__main__":
    raise SystemExit(main())
