"""SSD's start-up timings are kept per machine, model and what was timed: a second start skips
them, and any change of key, an unreadable file or an unwritable cache measures again."""

from __future__ import annotations

import json

import pytest

from saguaro.cache_root import CACHE_ENV
from saguaro.ssd import calibration
from saguaro.ssd.calibration import kept_timings

WHAT = {"kind": "verify", "batch": 1, "ks": [1, 2]}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(calibration.CALIBRATION_ENV, raising=False)
    return tmp_path / "cache"


def counting(seconds: dict):
    calls = []

    def measure():
        calls.append(1)
        return dict(seconds)

    return measure, calls


def test_a_second_start_reads_what_the_first_measured(cache):
    measure, calls = counting({1: 0.1, 2: 0.15})
    assert kept_timings("model-a", WHAT, measure) == {1: 0.1, 2: 0.15}
    assert kept_timings("model-a", WHAT, measure) == {1: 0.1, 2: 0.15}  # int keys, as measured
    assert len(calls) == 1
    assert len(list((cache / "calibration").glob("*.json"))) == 1


@pytest.mark.parametrize("change", ["model", "what", "machine"])
def test_any_change_of_key_measures_again(cache, monkeypatch, change):
    measure, calls = counting({1: 0.1})
    kept_timings("model-a", WHAT, measure)
    model, what = "model-a", WHAT
    if change == "model":  # another source, dtype, quantization, kernel path or loading code
        model = "model-b"
    elif change == "what":
        what = dict(WHAT, batch=2)
    else:
        here = calibration.machine()
        monkeypatch.setattr(calibration, "machine", lambda: dict(here, cores=here["cores"] + 1))
    kept_timings(model, what, measure)
    assert len(calls) == 2


def test_models_with_no_key_and_the_switch_off_always_measure(cache, monkeypatch):
    measure, calls = counting({1: 0.1})
    kept_timings(None, WHAT, measure)
    kept_timings(None, WHAT, measure)
    monkeypatch.setenv(calibration.CALIBRATION_ENV, "0")
    kept_timings("model-a", WHAT, measure)
    kept_timings("model-a", WHAT, measure)
    assert len(calls) == 4 and not (cache / "calibration").exists()


@pytest.mark.parametrize("content", ["{not json", json.dumps({"seconds": {"x": 1}}), json.dumps([1])])
def test_an_unreadable_file_is_measured_again_and_replaced(cache, content):
    measure, calls = counting({1: 0.1})
    path = calibration.path_for("model-a", WHAT)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    assert kept_timings("model-a", WHAT, measure) == {1: 0.1}
    assert kept_timings("model-a", WHAT, measure) == {1: 0.1}
    assert len(calls) == 1


def test_an_unwritable_cache_only_costs_the_timing(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))  # below a file: nothing can be created
    measure, calls = counting({1: 0.1})
    assert kept_timings("model-a", WHAT, measure) == {1: 0.1}
    assert kept_timings("model-a", WHAT, measure) == {1: 0.1}
    assert len(calls) == 2


def test_a_second_ssd_start_times_nothing(cache, tmp_path, monkeypatch):
    """The engine's verification timings and the worker's glue and branch timings, on a pair of
    folder models (a thread worker, so that one process sees every timing)."""
    from saguaro import LLM, SamplingParams
    from saguaro.ssd.worker import Worker
    from saguaro.strategies.ssd import SSDStrategy
    from saguaro.testing.exactness import write_tiny_pair

    target, draft = write_tiny_pair(tmp_path / "pair")
    timed = []
    real_verify, real_feed = SSDStrategy._time_verify, Worker._time_feed
    monkeypatch.setattr(SSDStrategy, "_time_verify", lambda self, *a: timed.append("verify") or real_verify(self, *a))
    monkeypatch.setattr(Worker, "_time_feed", lambda self, *a, **k: timed.append("feed") or real_feed(self, *a, **k))

    def start() -> list[str]:
        timed.clear()
        llm = LLM(target=target, draft=draft, mode="ssd", dtype="float32", ssd_worker="thread")
        try:
            llm.generate([3, 5, 7], SamplingParams(max_tokens=4))
        finally:
            llm.close()
        return list(timed)

    first = start()
    assert "verify" in first and first.count("feed") > 1
    kinds = {json.loads(p.read_text())["what"]["kind"] for p in (cache / "calibration").glob("*.json")}
    assert kinds == {"verify", "glue", "branch"}
    assert start() == []
