"""The engine benchmark suite: closed-loop and Poisson drivers (on a scripted engine and a tiny real
one), its table, and running single-stream configurations side by side with another git revision."""

import argparse
import subprocess
import sys
from types import SimpleNamespace

import pytest

from exactness import write_tiny_pair
from saguaro import Engine, SamplingParams
from saguaro.bench import main as bench_main
from saguaro.bench.serving import (bar_note, closed_loop, engine_configs, merge_levels, open_loop, percentile,
                                   poisson_arrivals, ratio_table, requests_at, run_engine_config)
from saguaro.metrics import GenerationMetrics

STEP_S = 0.25


class Clock:
    """A clock that moves only when told: by a step of the scripted engine or by sleep."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


class ScriptedEngine:
    """Each request yields one token a step for len(prompt) steps; notes the requests in flight
    at every step and when each request was added."""

    def __init__(self, clock: Clock | None = None):
        self.clock = clock or Clock()
        self.live: dict[str, list[int]] = {}
        self.in_flight, self.added, self.aborted = [], {}, []

    def add_request(self, prompt, params, request_id):
        self.live[request_id] = [len(prompt), 0]
        self.added[request_id] = self.clock()

    def has_unfinished(self) -> bool:
        return bool(self.live)

    def abort(self, request_id) -> bool:
        self.aborted.append(request_id)
        return self.live.pop(request_id, None) is not None

    def step(self):
        self.in_flight.append(len(self.live))
        self.clock.sleep(STEP_S)
        outs = []
        for rid, state in list(self.live.items()):
            state[1] += 1
            done = state[1] >= state[0]
            metrics = GenerationMetrics("ar", decode_s=state[1] * STEP_S, decode_tokens=state[1]) if done else None
            outs.append(SimpleNamespace(request_id=rid, new_token_ids=[7], finished=done, metrics=metrics))
            if done:
                del self.live[rid]
        return outs


def test_closed_loop_keeps_exactly_c_in_flight_until_enough_finish():
    engine = ScriptedEngine()
    prompts = [[0] * 2, [0] * 5, [0] * 3]  # finishing after 2, 5 and 3 steps
    level = closed_loop(engine, prompts, None, concurrency=3, requests=10, clock=engine.clock)
    assert level["in_flight"] == engine.in_flight and set(engine.in_flight) == {3}
    assert 10 <= level["requests"] < 10 + 3 and level["concurrency"] == 3
    assert level["aborted"] == len(engine.aborted) and not engine.live  # leftovers aborted, none leak
    steps = len(engine.in_flight)
    assert level["tokens"] == 3 * steps  # every token in the window counts, aborted ones' too
    assert level["wall_s"] == pytest.approx(steps * STEP_S)
    assert level["aggregate_tok_s"] == pytest.approx(3 / STEP_S)
    assert level["mean_decode_tok_s"] == pytest.approx(1 / STEP_S)
    assert level["mean_ttft_s"] == pytest.approx(STEP_S)


def test_requests_per_level():
    assert [requests_at(c, 3, 6) for c in (1, 4, 8, 16)] == [6, 12, 24, 48]


def test_poisson_arrivals_are_seeded():
    a = poisson_arrivals(2.0, 2000, seed=5)
    assert a == poisson_arrivals(2.0, 2000, seed=5) and a != poisson_arrivals(2.0, 2000, seed=6)
    assert a[0] == 0.0 and all(x < y for x, y in zip(a, a[1:]))
    assert a[-1] / (len(a) - 1) == pytest.approx(0.5, rel=0.1)  # mean gap 1 / rate
    assert poisson_arrivals(1.0, 1, seed=0) == [0.0]


def test_open_loop_submits_each_request_when_due():
    clock = Clock()
    engine = ScriptedEngine(clock)
    arrivals = [0.0, 0.1, 3.0, 3.05]
    out = open_loop(engine, [[0] * 2, [0] * 4], None, arrivals, clock=clock, sleep=clock.sleep)
    assert out["requests"] == 4 and out["tokens"] == 2 + 4 + 2 + 4 and out["aborted"] == 0
    for i, due in enumerate(arrivals):
        assert due <= engine.added[f"r{i}"] < due + STEP_S + 1e-9  # never early, at most a step late
    assert out["max_in_flight"] == 2
    assert out["offered_rate"] == pytest.approx(3 / 3.05)
    # r0 finishes 2 steps after 0; r1 (due 0.1, added at 0.25) 4 steps after 0.25: latency from the due time
    assert out["mean_ttft_s"] > STEP_S and out["p90_latency_s"] >= out["mean_latency_s"]
    assert out["wall_s"] == pytest.approx(clock.t)


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory, one_torch_thread):
    target, _ = write_tiny_pair(tmp_path_factory.mktemp("serving"))
    engine = Engine(target, mode="ar", dtype="float32", max_batch=4)
    yield engine
    engine.close()


PROMPTS = [[3, 5, 7, 3], [1, 2], [4, 4, 6, 1, 2, 3]]
PARAMS = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)


def test_closed_loop_on_a_real_engine(tiny_engine):
    level = closed_loop(tiny_engine, PROMPTS, PARAMS, concurrency=3, requests=5)
    assert set(level["in_flight"]) == {3}
    assert level["requests"] >= 5 and level["tokens"] >= 5 * 4
    assert level["mean_ttft_s"] > 0 and level["aggregate_tok_s"] > 0
    assert not tiny_engine.has_unfinished()


def test_open_loop_on_a_real_engine(tiny_engine):
    out = open_loop(tiny_engine, PROMPTS, PARAMS, poisson_arrivals(200.0, 5, seed=1))
    assert out["requests"] == 5 and out["tokens"] == 5 * 4
    assert out["mean_latency_s"] >= out["mean_ttft_s"] > 0
    assert not tiny_engine.has_unfinished()


def level(c, agg, **over):
    return dict(concurrency=c, aggregate_tok_s=agg, mean_decode_tok_s=agg / max(c, 1), mean_ttft_s=0.5,
                mean_latency_s=4.0, p90_latency_s=5.0, tokens=agg * 10, wall_s=10.0, requests=c, **over)


def test_table_ratios_are_against_the_modes_concurrency_one():
    results = [{"name": "engine ar", "mode": "ar", "levels": [level(1, 10.0), level(8, 35.0)],
                "poisson": dict(level(0, 20.0), rate=0.5)},
               {"name": "engine sd", "mode": "sd", "levels": [level(1, 20.0), level(8, 30.0)], "poisson": None}]
    lines = ratio_table(results).splitlines()
    row = {l[:26].strip(): l for l in lines}
    assert "3.50x" in row["engine ar c=8"] and "1.00x" in row["engine ar c=1"]
    assert "1.50x" in row["engine sd c=8"]
    assert "20.00" in row["engine ar poisson 0.5/s"]
    assert "3.50x" in bar_note(results) and "pass" in bar_note(results)
    results[0]["levels"][1]["aggregate_tok_s"] = 25.0
    assert "FAIL" in bar_note(results)


def test_passes_merge_over_tokens_and_wall_time():
    merged = merge_levels([level(4, 10.0), dict(level(4, 30.0), wall_s=30.0, tokens=900.0)])
    assert merged["aggregate_tok_s"] == pytest.approx(1000 / 40) and merged["passes_tok_s"] == [10.0, 30.0]
    assert merged["requests"] == 8 and merged["requests_per_s"] == pytest.approx(8 / 40)
    assert percentile([1, 2, 3, 4, 5], 90) == pytest.approx(4.6) and percentile([2.0], 90) == 2.0


def suite_args(**over):
    base = dict(target="random:tiny", draft="random:tiny:1", dtype="float32", max_tokens=4, kinds=["code"],
                draft_head_tokens=None, quantize=["auto"], quantize_draft=["auto"], ssd_k=None, fanout="flat",
                max_batch=4, levels=[1, 2], per_client=1, min_requests=1, rate=50.0, poisson_requests=2, seed=0,
                modes=["ar", "sd", "ssd"], no_llamacpp=False)
    return argparse.Namespace(**{**base, **over})


def test_engine_configs_place_each_mode():
    by_mode = {c["mode"]: c for c in engine_configs(suite_args())}
    assert by_mode["ar"]["cores"] == by_mode["sd"]["cores"] == [0, 1] and by_mode["sd"]["k"] == 3
    assert by_mode["ssd"]["cores"] == [0] and by_mode["ssd"]["draft_cores"] == [1]
    assert all(c["max_batch"] == 4 and c["levels"] == [1, 2] for c in by_mode.values())


def test_engine_suite_runs_one_mode_in_a_subprocess():
    cfg = engine_configs(suite_args(modes=["ar"]))[0]
    out = run_engine_config(cfg)
    assert [lv["concurrency"] for lv in out["levels"]] == [1, 2]
    assert all(lv["requests"] >= 1 and lv["in_flight_min"] == lv["in_flight_max"] == lv["concurrency"]
               for lv in out["levels"])
    assert out["poisson"]["requests"] == 2 and out["poisson"]["tokens"] == 2 * 4


def test_baseline_rev_adds_a_copy_of_each_saguaro_config():
    configs = bench_main.suite_configs("cpu", suite_args(target="/m/t.gguf", draft="/m/d.gguf", no_llamacpp=True))
    assert all(c["engine"] == "saguaro" for c in configs)  # --no-llamacpp: no llama.cpp rows
    configs = [dict(name="hf ar", engine="hf")] + configs
    out = bench_main.with_baseline(configs, "abc123", "/tmp/saguaro-abc")
    names = [c["name"] for c in out]
    assert names[:3] == ["hf ar", "saguaro ar auto", "saguaro ar auto @abc123"]  # interleaved, hf not copied
    assert len(out) == 1 + 2 * (len(configs) - 1)
    old = out[2]
    assert old["pythonpath"] == "/tmp/saguaro-abc" and old["revision"] == "abc123"
    assert {k: v for k, v in old.items() if k not in ("name", "pythonpath", "revision")} == \
        {k: v for k, v in out[1].items() if k != "name"}
    env = bench_main.revision_env(old)
    assert env["cwd"] == "/tmp/saguaro-abc" and env["env"]["PYTHONPATH"] == "/tmp/saguaro-abc"
    assert bench_main.revision_env(out[1]) == {}


def test_table_shows_each_row_against_its_old_revision():
    rows = [{"name": "saguaro ar auto", "tok_s": 12.0}, {"name": "saguaro ar auto @abc123", "tok_s": 10.0}]
    lines = bench_main.print_table(rows, "saguaro ar auto", "abc123").splitlines()
    assert lines[0].endswith("vs @abc123")
    assert lines[1].endswith("1.20x") and lines[2].rstrip().endswith("-")


def git(cwd, *args):
    return subprocess.run(["git", "-C", str(cwd), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_baseline_worktree_runs_the_old_revisions_code(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "pkg_rev_probe").mkdir(parents=True)
    git(repo, "init", "-q")
    probe = repo / "pkg_rev_probe" / "__init__.py"
    probe.write_text("VERSION = 'old'\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "old")
    rev = git(repo, "rev-parse", "--short", "HEAD")
    probe.write_text("VERSION = 'new'\n")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    path = bench_main.baseline_worktree(rev, root=repo)
    assert path.parent == tmp_path and bench_main.baseline_worktree(rev, root=repo) == path  # reused
    assert probe.read_text() == "VERSION = 'new'\n"  # the working tree is untouched
    cfg = bench_main.with_baseline([dict(name="x", engine="saguaro")], rev, path)[1]
    run = subprocess.run([sys.executable, "-c", "import pkg_rev_probe; print(pkg_rev_probe.VERSION)"],
                         capture_output=True, text=True, check=True, **bench_main.revision_env(cfg))
    assert run.stdout.strip() == "old"
