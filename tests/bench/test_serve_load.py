"""`saguaro bench serve`: its per-request and per-level figures, its table, the SSE client and the
closed loop against a live `saguaro serve` subprocess (random:tiny), the llama.cpp server's
settings (with a stand-in xllamacpp), and the whole suite on the tiny model."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import httpx
import pytest

from saguaro.bench import llamacpp_server, serve_load
from saguaro.bench import main as bench_main
from saguaro.bench.serve_load import RequestResult, ServerProcess, chat_body, closed_loop, summarize

TINY = dict(name="tiny", engine="saguaro", target="random:tiny", mode="ar", max_batch=4, seq_len=256,
            dtype="float32", threads=1)


def test_request_figures():
    r = RequestResult(sent=10.0, first_token=10.5, last_token=12.5, tokens=5)
    assert r.ttft == pytest.approx(0.5)
    assert r.tpot == pytest.approx(0.5)  # 2 s over the 4 tokens after the first
    assert RequestResult(sent=1.0, first_token=1.2, last_token=1.2, tokens=1).tpot is None
    assert RequestResult(sent=1.0).ttft is None and RequestResult(sent=1.0).tpot is None


def test_summary_percentiles_and_errors():
    # TTFT 0.1 .. 1.0 s; TPOT 10 ms except one slow request at 100 ms; one failed request.
    ok = [RequestResult(sent=0.0, first_token=0.1 * i, last_token=0.1 * i + (0.9 if i == 10 else 0.09), tokens=10)
          for i in range(1, 11)]
    failed = RequestResult(sent=0.0, first_token=5.0, last_token=9.0, tokens=3, error="HTTP 503")
    s = summarize(ok + [failed], wall_s=4.0)
    assert s["requests"] == 10 and s["errors"] == 1
    assert s["tokens"] == 100 and s["output_tok_s"] == pytest.approx(25.0) and s["requests_per_s"] == pytest.approx(2.5)
    assert s["ttft_p50_s"] == pytest.approx(0.55)  # linear between the 5th and 6th of ten
    assert s["ttft_p99_s"] == pytest.approx(0.991)
    assert s["tpot_p50_s"] == pytest.approx(0.01)
    assert s["tpot_p99_s"] == pytest.approx(0.01 + 0.91 * 0.09)  # 91% of the way to the slow one
    empty = summarize([], wall_s=1.0)
    assert empty["requests"] == 0 and empty["ttft_p50_s"] != empty["ttft_p50_s"]  # nan


def _level(c, tok_s, ttft, tpot):
    return dict(concurrency=c, requests=2 * c, errors=0, tokens=0, wall_s=1.0, requests_per_s=1.0,
                output_tok_s=tok_s, ttft_p50_s=ttft, ttft_p99_s=ttft, tpot_p50_s=tpot, tpot_p99_s=tpot, raw=[])


def test_ratio_table_divides_by_llamacpp_at_the_same_level():
    results = [{"name": "llama.cpp", "config": {"engine": "llamacpp"},
                "levels": [_level(1, 20.0, 0.5, 0.05), _level(4, 40.0, 1.0, 0.1)]},
               {"name": "saguaro sd", "config": {"engine": "saguaro"},
                "levels": [_level(1, 10.0, 1.0, 0.025), _level(4, 60.0, 0.5, 0.1)]}]
    table = serve_load.ratio_table(results)
    ratios = {tuple(line.split()[:3]): line.split()[3:] for line in table.split("vs llama.cpp")[1].splitlines()[1:]}
    assert ratios[("saguaro", "sd", "1")] == ["0.50x", "2.00x", "0.50x", "0.50x"]
    assert ratios[("saguaro", "sd", "4")] == ["1.50x", "0.50x", "1.00x", "1.00x"]
    assert "vs llama.cpp" not in serve_load.ratio_table(results[1:])


def test_merge_passes_pools_requests_and_wall_time():
    def run(tokens, wall):
        results = [RequestResult(sent=0.0, first_token=0.1, last_token=1.0, tokens=tokens)]
        return {"name": "x", "levels": [dict(concurrency=1, **summarize(results, wall),
                                             raw=[vars(r) for r in results])]}

    merged = serve_load.merge_passes([run(10, 1.0), run(30, 3.0)])
    [level] = merged["levels"]
    assert level["tokens"] == 40 and level["wall_s"] == 4.0 and level["output_tok_s"] == pytest.approx(10.0)
    assert level["passes_tok_s"] == [pytest.approx(10.0), pytest.approx(10.0)] and level["requests"] == 2


def test_saguaro_command_places_ssd_like_the_other_suites():
    cmd = serve_load.saguaro_command(dict(TINY, mode="ssd", draft="d", k=3, cores=[0], draft_cores=[1]), 1234)
    joined = " ".join(cmd)
    for part in ("serve", "--port 1234", "--mode ssd", "--draft d", "--k 3", "--target-cores 0", "--draft-cores 1",
                 "--max-batch 4", "--max-seq-len 256", "--threads 1"):
        assert part in joined
    assert "--draft" not in serve_load.saguaro_command(dict(TINY, draft="d"), 1)  # AR loads no draft


def test_llamacpp_server_settings(monkeypatch):
    class Params(SimpleNamespace):
        def __init__(self):
            super().__init__(model=SimpleNamespace(path=None), cpuparams=SimpleNamespace(n_threads=0),
                             cpuparams_batch=SimpleNamespace(n_threads=0))

    monkeypatch.setitem(sys.modules, "xllamacpp", SimpleNamespace(CommonParams=Params))
    cmd = serve_load.llamacpp_command(dict(model="m.gguf", threads=2, max_batch=16, seq_len=512), 4321, "/py")
    assert cmd[:2] == ["/py", str(serve_load.LLAMACPP_SCRIPT)] and serve_load.LLAMACPP_SCRIPT.is_file()
    _, p = llamacpp_server.params(json.loads(cmd[2]))
    assert p.model.path == "m.gguf" and p.port == 4321 and p.hostnames == ["127.0.0.1"]
    assert p.n_parallel == 16 and p.n_ctx == 16 * 512 and p.cache_ram_mib == 0
    assert p.cpuparams.n_threads == 2 and p.cpuparams_batch.n_threads == 2


def test_a_server_that_dies_while_loading_is_reported():
    dead = ServerProcess("dead", [sys.executable, "-c", "import sys; print('no model here'); sys.exit(3)"],
                         serve_load.free_port())
    with pytest.raises(RuntimeError, match=r"(?s)exited with 3.*no model here"):
        dead.start(timeout=30)


@pytest.fixture(scope="module")
def tiny_server():
    port = serve_load.free_port()
    with ServerProcess("tiny", serve_load.saguaro_command(TINY, port), port) as server:
        yield server
    assert server.proc.returncode == 0  # SIGTERM stops `saguaro serve` cleanly


def test_streamed_closed_loop_on_a_live_server(tiny_server):
    bodies = [chat_body("hello", 6), chat_body("how are you", 6)]
    results, wall = closed_loop(tiny_server.url, bodies, concurrency=2, n_requests=4)
    assert len(results) == 4 and wall > 0
    assert all(r.error is None and r.tokens == 6 for r in results)  # ignore_eos: exactly max_tokens each
    assert all(r.sent < r.first_token <= r.last_token and r.tpot > 0 for r in results)
    # The streamed text is the server's non-streamed greedy answer.
    want = {}
    for body in bodies:
        plain = dict(body, stream=False)
        del plain["stream_options"]
        reply = httpx.post(tiny_server.url + "/v1/chat/completions", json=plain, timeout=60).json()
        want[body["messages"][0]["content"]] = reply["choices"][0]["message"]["content"]
    assert sorted(r.text for r in results) == sorted(list(want.values()) * 2)
    level = summarize(results, wall)
    assert level["tokens"] == 24 and level["errors"] == 0 and level["tpot_p50_s"] > 0


def test_a_refused_request_is_an_error_not_a_crash(tiny_server):
    results, _ = closed_loop(tiny_server.url, [dict(chat_body("hi", 4), max_tokens="four")], 1, 1)
    assert results[0].error.startswith("HTTP 400") and results[0].tokens == 0
    assert summarize(results, 1.0)["errors"] == 1


def test_the_suite_end_to_end_on_a_tiny_model(tmp_path, capsys):
    code = bench_main.main(["serve", "--target", "random:tiny", "--dtype", "float32", "--modes", "ar", "--no-llamacpp",
                            "--serve-levels", "1", "2", "--per-level", "1", "--max-tokens", "4", "--max-batch", "2",
                            "--kinds", "code", "--out", str(tmp_path)])
    assert code == 0
    table = capsys.readouterr().out
    assert "saguaro ar" in table and "TTFT p50" in table
    saved = json.loads((tmp_path / "bench_serve.json").read_text())
    [result] = saved["results"]
    assert [lv["concurrency"] for lv in result["levels"]] == [1, 2]
    assert [lv["requests"] for lv in result["levels"]] == [1, 2] and all(lv["errors"] == 0 for lv in result["levels"])
    assert all(lv["tokens"] == 4 * lv["requests"] for lv in result["levels"])
    assert (tmp_path / "bench_serve.png").stat().st_size > 0


def test_a_failing_server_costs_its_rows_not_the_run(tmp_path, capsys, monkeypatch):
    def broken(cfg):
        raise RuntimeError("saguaro ar exited with 2 before it was ready:\nno such model")

    monkeypatch.setattr(serve_load, "start_server", broken)
    code = bench_main.main(["serve", "--target", "random:tiny", "--modes", "ar", "--no-llamacpp", "--out", str(tmp_path)])
    assert code == 1
    assert "saguaro ar failed: saguaro ar exited with 2" in capsys.readouterr().out
    [result] = json.loads((tmp_path / "bench_serve.json").read_text())["results"]
    assert result["levels"] == [] and "no such model" in result["error"]
