"""Interleaved passes: every configuration once per pass, in turn, results gathered per configuration."""

from saguaro.bench.passes import run_interleaved


def test_passes_interleave_and_group_by_configuration(caplog):
    order = []

    def run(cfg):
        order.append(cfg["name"])
        return {"n": len(order)}

    caplog.set_level("INFO", logger="saguaro.bench.passes")
    runs = run_interleaved([{"name": "a"}, {"name": "b"}], 2, run, lambda r: f"result {r['n']}")
    assert order == ["a", "b", "a", "b"]
    assert runs == [[{"n": 1}, {"n": 3}], [{"n": 2}, {"n": 4}]]
    assert "running b (pass 2/2)" in caplog.text and "  result 4" in caplog.text
