"""The startup suite with its process runner stubbed: hand-made timings -> table, ratios, JSON;
and llama.cpp's one-shot mode (command line, config, stamps) against a fake xllamacpp."""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import pytest

from saguaro.bench import llamacpp, startup
from saguaro.bench.startup import ProcessRun

PROMPT = "Write a Python class for a stack with push, pop and peek methods."
# The INFO lines of a real warm SSD run (`saguaro generate -v`), each with its arrival time.
SSD_LOG = [
    (2.0, "INFO saguaro.cli.main: loading qwen2.5-coder-1.5b (mode ssd, draft qwen2.5-coder-0.5b)"),
    (3.0, "INFO saguaro.loading.gguf_tokenizer: built gpt2/qwen2 tokenizer from GGUF: 151936 tokens, 22 added"),
    (20.0, "INFO saguaro.loading.loader: loaded /c/gguf/qwen2.5-coder-1.5b.gguf (qwen2, 28 layers) as bf16 on cpu"),
    (24.0, "INFO saguaro.quant.transform: quantized qwen2 linears to int4 (head NativeInt6Linear)"),
    (25.0, "2026-12-07 17:57:43,905 saguaro-worker INFO built gpt2/qwen2 tokenizer from GGUF: 151936 tokens"),
    (40.0, "2026-12-07 17:58:02,599 saguaro-worker INFO loaded /c/gguf/qwen2.5-coder-0.5b.gguf (qwen2, 24 layers)"),
    (44.0, "INFO saguaro.engine.engine: KV pool: 1 rows x 273 slots"),
    (48.0, "2026-12-07 17:58:09,995 saguaro-worker INFO budget: K=2, 6 branches (draft 112 ms vs verify 104 ms)"),
    (50.0, "16 tokens, 12.8 tokens/s, mode ssd, acceptance 78.6%, hit rate 42.9%"),
]


def test_milestones_are_read_from_the_log_lines():
    found = startup.match_milestones(SSD_LOG, "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b")
    assert found == {"imports": 2.0, "target": 20.0, "worker": 25.0, "draft": 40.0, "engine": 44.0,
                     "calibrated": 48.0, "generated": 50.0}
    # An AR run logs no draft, worker or budget: those stay out rather than fail.
    ar = startup.match_milestones([SSD_LOG[0], SSD_LOG[2], SSD_LOG[6]], "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b")
    assert ar == {"imports": 2.0, "target": 20.0, "engine": 44.0}
    assert startup._decode_seconds(SSD_LOG[-1][1]) == pytest.approx(16 / 12.8)
    assert startup._decode_seconds("16 tokens, fast") is None and startup._decode_seconds("") is None


def _args(**kw) -> argparse.Namespace:
    base = dict(target="qwen2.5-coder-1.5b", draft="qwen2.5-coder-0.5b", dtype="auto", prompt=PROMPT, max_tokens=16)
    return argparse.Namespace(**{**base, **kw})


def test_generate_runs_the_cli_defaults_greedy():
    cmd = startup.generate_command(_args(), "ssd", 16)
    assert cmd[cmd.index("generate"):] == ["generate", "-v", "--chat", "--mode", "ssd", "--max-tokens", "16",
                                           "--temperature", "0", "--ignore-eos", PROMPT]
    other = startup.generate_command(_args(target="t.gguf", draft="d.gguf"), "sd", 1)
    assert other[other.index("--target") + 1] == "t.gguf" and other[other.index("--draft") + 1] == "d.gguf"
    assert "--draft" not in startup.generate_command(_args(target="t.gguf", draft="d.gguf"), "ar", 1)


def test_oneshot_command_carries_a_one_shot_config():
    cmd = llamacpp.oneshot_command(Path("/c/t.gguf"), PROMPT, 16, 2, python="/env/bin/python")
    assert cmd[:2] == ["/env/bin/python", str(llamacpp.SCRIPT)] and len(cmd) == 3
    cfg = json.loads(cmd[2])
    assert cfg == {"oneshot": True, "model": "/c/t.gguf", "prompt": PROMPT, "max_tokens": 16, "threads": 2,
                   "ctx": 2048, "draft": None}


def _fake_xllamacpp(seen: dict) -> types.ModuleType:
    ns = types.SimpleNamespace

    class Server:
        def __init__(self, params):
            seen["params"] = params

        def handle_chat_completions(self, request):
            seen.setdefault("requests", []).append(request)
            timings = {"predicted_n": request["max_tokens"], "predicted_ms": 750.0, "prompt_n": 40, "prompt_ms": 900.0}
            return {"timings": timings, "choices": [{"message": {"content": "class Stack:"}}]}

    module = types.ModuleType("xllamacpp")
    module.Server = Server
    module.CommonParams = lambda: ns(model=ns(path=None), n_ctx=0, n_parallel=4, cache_ram_mib=-1,
                                     cpuparams=ns(n_threads=0), cpuparams_batch=ns(n_threads=0),
                                     sampling=ns(temp=0.8, top_k=40))
    return module


def test_oneshot_child_sends_one_greedy_request_and_stamps_it(monkeypatch):
    seen: dict = {}
    monkeypatch.setitem(sys.modules, "xllamacpp", _fake_xllamacpp(seen))
    cfg = json.loads(llamacpp.oneshot_command("/c/t.gguf", PROMPT, 16, 2)[2])
    out = llamacpp.oneshot(cfg, started=1.0)
    p = seen["params"]
    assert p.model.path == "/c/t.gguf" and p.cpuparams.n_threads == 2 and p.cpuparams_batch.n_threads == 2
    assert p.sampling.temp == 0.0 and p.sampling.top_k == 1 and p.cache_ram_mib == 0
    [request] = seen["requests"]  # no warm-up request: a user's first
    assert request["messages"] == [{"role": "user", "content": PROMPT}]
    assert request["max_tokens"] == 16 and request["ignore_eos"] and request["temperature"] == 0.0
    stamps = out["stamps"]
    assert stamps["main"] == 1.0 < stamps["imported"] <= stamps["loaded"] <= stamps["generated"]
    assert out["row"]["predicted_n"] == 16 and out["row"]["text"] == "class Stack:"


# Seconds per pass of each (engine, tokens); the median is the middle one, the min the smallest.
# (Skewed, so that a mean would not pass for the median.)
TIMES = {("llama.cpp", 1): [3.0, 7.0, 4.0], ("llama.cpp", 16): [4.0, 9.0, 5.0],
         ("ar", 1): [9.0, 8.0, 13.0], ("ar", 16): [11.0, 10.0, 15.0],
         ("sd", 1): [12.0, 12.0, 12.0], ("sd", 16): [13.0, 14.0, 18.0],
         ("ssd", 1): [15.0, 14.0, 19.0], ("ssd", 16): [20.0, 18.0, 25.0]}


class FakeRunner:
    """Stands in for run_process: times from TIMES by pass, log lines for saguaro, stamps for llama.cpp."""

    def __init__(self, fail: str | None = None):
        self.calls: list[tuple[str, int, dict | None]] = []
        self.fail = fail

    def __call__(self, cmd, env=None):
        if cmd[1] == "-c":
            self.calls.append(("python", 0, env))
            return ProcessRun(0.5, 0, "", [], 100.0)
        if "generate" in cmd:
            engine, tokens = cmd[cmd.index("--mode") + 1], int(cmd[cmd.index("--max-tokens") + 1])
        else:
            cfg = json.loads(cmd[2])
            engine, tokens = "llama.cpp", cfg["max_tokens"]
        n = sum(1 for e, t, _ in self.calls if (e, t) == (engine, tokens))
        self.calls.append((engine, tokens, env))
        if tokens == 1 and n == 0:
            return ProcessRun(99.0, 0, "", [], 100.0)  # the untimed warm-up (first-token runs are on)
        seconds = TIMES[engine, tokens][(n - (tokens == 1)) % 3]
        if engine == self.fail:
            return ProcessRun(seconds, 1, "", [(1.0, "Traceback: boom")], 100.0)
        if engine == "llama.cpp":
            child = {"stamps": {"main": 100.1, "imported": 100.2, "loaded": 102.0, "generated": 100.0 + seconds - 0.1},
                     "row": {"seconds": 0.75, "text": "class Stack:"}}
            return ProcessRun(seconds, 0, "llama log\n" + json.dumps(child) + "\n", [], 100.0)
        return ProcessRun(seconds, 0, "class Stack:\n", SSD_LOG if engine == "ssd" else SSD_LOG[:3], 100.0)


@pytest.fixture
def bench(monkeypatch, tmp_path):
    import saguaro.bench.main as bench
    from saguaro.bench import startup_llamacpp

    monkeypatch.setattr(llamacpp, "ensure_env", lambda *a: "/env/bin/python")
    monkeypatch.setattr(startup_llamacpp, "gguf_path", lambda ref: f"/c/{ref}.gguf")
    monkeypatch.setattr(startup, "plot", lambda *a, **k: None)
    monkeypatch.setenv("SAGUARO_CACHE", str(tmp_path / "user-cache"))
    return bench


def test_warm_passes_interleave_and_report_medians_against_llamacpp(bench, monkeypatch, tmp_path, capsys):
    runner = FakeRunner()
    monkeypatch.setattr(startup, "run_process", runner)
    assert bench.main(["startup", "--caches", "warm", "--out", str(tmp_path)]) == 0  # --repeat: 3 by default
    order = [(e, t) for e, t, _ in runner.calls]
    warm_up = [("llama.cpp", 1), ("ar", 1), ("sd", 1), ("ssd", 1)]
    one_pass = [("llama.cpp", 1), ("llama.cpp", 16), ("ar", 1), ("ar", 16), ("sd", 1), ("sd", 16),
                ("ssd", 1), ("ssd", 16)] + [("python", 0)] * 4
    assert order == warm_up + one_pass * 3
    printed = capsys.readouterr().out
    table = printed.split("\n\n")[0]
    rows = {line[7:19].strip(): line[19:].split() for line in table.splitlines() if line.startswith("warm ")}
    # median (min): llama.cpp 4.0 (3.0) and 5.0 (4.0); SSD 15.0 (14.0) and 20.0 (18.0)
    assert rows["llama.cpp"] == ["4.0", "s", "(3.0)", "1.00x", "5.0", "s", "(4.0)", "1.00x"]
    assert rows["saguaro ssd"] == ["15.0", "s", "(14.0)", "3.75x", "20.0", "s", "(18.0)", "4.00x"]
    assert rows["saguaro ar"][-1] == "2.20x"
    assert "SSD warm: 20.0 s to 16 tokens, 4.0x llama.cpp; first token 15.0 s, 3.8x llama.cpp" in printed
    assert "import torch 0.50 s" in printed

    data = json.loads((tmp_path / "bench_startup.json").read_text())
    assert data["table"] in printed and len(data["results"]) == 3 * 12
    ssd = next(r for r in data["summary"] if r["name"] == "saguaro ssd" and r["tokens"] == 16)
    assert ssd["median"] == 20.0 and ssd["min"] == 18.0 and ssd["runs"] == 3
    assert ssd["milestones"]["target"] == 20.0 and ssd["milestones"]["exit"] == 20.0
    assert ssd["decode_s"] == pytest.approx(1.25)
    llama = next(r for r in data["summary"] if r["name"] == "llama.cpp" and r["tokens"] == 16)
    assert llama["milestones"]["target"] == pytest.approx(2.0) and llama["decode_s"] == 0.75
    breakdown = next(line for line in data["breakdown"].splitlines() if line.startswith("warm   saguaro ar"))
    cells = [breakdown[20 + 11 * i:30 + 11 * i].strip() for i in range(9)]  # MILESTONES, then decode
    assert cells == ["2.0", "20.0", "", "", "", "", "", "11.0", ""]  # what AR's log lacks stays blank


def test_empty_cache_runs_get_a_new_cache_with_only_the_kernels(bench, monkeypatch, tmp_path):
    kernels = tmp_path / "user-cache" / "kernels" / "abc"
    kernels.mkdir(parents=True)
    (kernels / "saguaro_kernels.so").write_text("built")
    seen = []

    class Runner(FakeRunner):
        def __call__(self, cmd, env=None):
            if env is not None:
                root = Path(env["SAGUARO_CACHE"])
                seen.append((root, sorted(str(p.relative_to(root)) for p in root.rglob("*"))))
            return super().__call__(cmd, env)

    monkeypatch.setattr(startup, "run_process", Runner())
    out = tmp_path / "out"
    assert bench.main(["startup", "--caches", "empty", "--modes", "ssd", "--no-first-token", "--out", str(out)]) == 0
    assert len(seen) == 1  # one pass, SSD only; llama.cpp runs with no cache of its own
    root, files = seen[0]
    assert files == ["kernels", "kernels/abc", "kernels/abc/saguaro_kernels.so"]
    assert not root.exists()  # removed after the run
    assert root != tmp_path / "user-cache"
    data = json.loads((out / "bench_startup.json").read_text())
    assert {(r["cache"], r["name"]) for r in data["results"]} == {("empty", "llama.cpp"), ("empty", "saguaro ssd")}


def test_a_failed_run_is_left_out_and_fails_the_suite(bench, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(startup, "run_process", FakeRunner(fail="sd"))
    assert bench.main(["startup", "--caches", "warm", "--repeat", "1", "--out", str(tmp_path)]) == 1
    sd = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("warm   saguaro sd"))
    assert sd.split()[3:] == ["-", "-", "-", "-"]
    data = json.loads((tmp_path / "bench_startup.json").read_text())
    failed = [r for r in data["results"] if "error" in r]
    assert {r["name"] for r in failed} == {"saguaro sd"} and "boom" in failed[0]["error"]
