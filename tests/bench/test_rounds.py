"""The SSD round table: per-round figures from hand-made bench rows."""

import pytest

from saguaro.bench.rounds import round_figures, rounds_table


def row(rounds, hit_rate, seconds, verify, wait, wait_on_hit, tokens, glue=0.0, branch=0.0, idle=0.0):
    return {"rounds": rounds, "hit_rate": hit_rate, "seconds": seconds, "verify_s": verify, "target_wait_s": wait,
            "target_wait_on_hit_s": wait_on_hit, "tokens": tokens, "worker_glue_s": glue, "worker_branch_s": branch,
            "worker_idle_s": idle}


def test_figures_pool_the_rows_rounds():
    # 10 rounds with 2 misses, then 30 with 6: 40 rounds, 8 misses, 32 hits.
    rows = [row(10, 0.8, 0.60, 0.50, 0.07, 0.01, 26, glue=0.12, branch=0.3, idle=0.05),
            row(30, 0.8, 1.80, 1.50, 0.21, 0.03, 78, glue=0.36, branch=0.9, idle=0.15)]
    f = round_figures(rows)
    assert f["round"] == pytest.approx(60.0) and f["verify"] == pytest.approx(50.0)
    assert f["wait"] == pytest.approx(7.0) and f["glue"] == pytest.approx(12.0)
    assert f["branch"] == pytest.approx(30.0) and f["idle"] == pytest.approx(5.0)
    assert f["wait_per_miss"] == pytest.approx(0.24 / 8 * 1e3)  # 30 ms a miss
    assert f["wait_per_hit"] == pytest.approx(0.04 / 32 * 1e3)  # 1.25 ms a hit
    assert f["tokens_per_round"] == pytest.approx(2.6)


def test_misses_are_counted_where_rows_keep_counts():
    counted = dict(row(10, 0.8, 0.60, 0.50, 0.07, 0.01, 26), hits=8, lookups=9)  # 1 miss, 9 hit rounds
    f = round_figures([counted])
    assert f["wait_per_miss"] == pytest.approx(60.0) and f["wait_per_hit"] == pytest.approx(0.01 / 9 * 1e3)


def test_rows_without_ssd_rounds_give_nothing():
    assert round_figures([{"rounds": 5, "seconds": 1.0, "tokens": 5}]) is None  # SD: no hit rate
    assert round_figures([]) is None
    all_hits = round_figures([row(4, 1.0, 0.2, 0.18, 0.004, 0.004, 10)])
    assert all_hits["wait_per_miss"] == 0.0 and all_hits["wait_per_hit"] == pytest.approx(1.0)


def test_table_has_a_line_per_ssd_configuration():
    results = [{"name": "llama.cpp ar", "tok_s": 30.0},
               {"name": "saguaro sd k=3 auto", "rows": [{"rounds": 5, "seconds": 1.0, "tokens": 9}]},
               {"name": "saguaro ssd auto", "rows": [row(10, 0.8, 0.60, 0.50, 0.07, 0.01, 26)]}]
    lines = rounds_table(results).splitlines()
    assert len(lines) == 2 and lines[0].startswith("SSD rounds, ms per round")
    assert lines[1].split() == ["saguaro", "ssd", "auto", "60.00", "50.00", "7.00", "0.00", "0.00", "0.00",
                                "30.00", "1.25", "2.60"]
    assert rounds_table(results[:2]) == ""


def test_bench_prints_and_keeps_the_round_table(tmp_path, monkeypatch, capsys):
    """`saguaro bench cpu` adds the SSD configurations' round line to its output and JSON."""
    import json

    import saguaro.bench.main as bench

    def fake_run(cfg):
        rows = [row(10, 0.8, 0.60, 0.50, 0.07, 0.01, 26)] if cfg["mode"] == "ssd" else [{"tokens": 26, "seconds": 1.0}]
        return {"name": cfg["name"], "tok_s": 26 / sum(r["seconds"] for r in rows), "tokens": 26,
                "seconds": sum(r["seconds"] for r in rows), "rows": rows, "config": cfg,
                **({"hit_rate": 0.8, "k": 2, "branches": 3} if cfg["mode"] == "ssd" else {})}

    monkeypatch.setattr(bench, "run_config", fake_run)
    monkeypatch.setattr(bench, "plot", lambda *a, **k: None)
    assert bench.main(["cpu", "--no-llamacpp", "--kinds", "code", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    line = next(x for x in printed.splitlines() if x.startswith("saguaro ssd auto") and "60.00" in x)
    assert line.split()[-3:] == ["30.00", "1.25", "2.60"]
    assert line in json.loads((tmp_path / "bench_cpu.json").read_text())["note"]
