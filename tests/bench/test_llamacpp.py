"""Fast checks of the llama.cpp benchmark anchor's saguaro-side half; none of them need xllamacpp."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from saguaro.bench import llamacpp

ROWS = [{"kind": "code", "tokens": 15, "seconds": 0.5, "draft_n": 12, "draft_n_accepted": 9},
        {"kind": "math", "tokens": 15, "seconds": 1.0, "draft_n": 8, "draft_n_accepted": 1}]


def test_summary_of_a_speculative_run():
    cfg = {"model": "t.gguf", "draft": "d.gguf", "prompts": [["code", "x"], ["math", "y"]]}
    s = llamacpp.summarize(cfg, {"rows": ROWS, "system_info": "CPU : AVX2 = 1"})
    assert s["name"] == "llama.cpp sd"
    assert s["tokens"] == 30 and s["seconds"] == pytest.approx(1.5)
    assert s["tok_s"] == pytest.approx(20.0)
    assert s["acceptance"] == pytest.approx(10 / 20)
    assert s["rows"] == ROWS and s["config"] is cfg and s["system_info"] == "CPU : AVX2 = 1"


def test_summary_of_an_ar_run_has_no_acceptance():
    rows = [{"kind": "code", "tokens": 15, "seconds": 3.0}]
    s = llamacpp.summarize({"name": "llama.cpp ar (2t)", "draft": None}, {"rows": rows})
    assert s["name"] == "llama.cpp ar (2t)" and s["tok_s"] == pytest.approx(5.0)
    assert "acceptance" not in s


def test_env_python_honours_the_override(monkeypatch):
    monkeypatch.setenv(llamacpp.ENV_VAR, "/somewhere/bin/python")
    assert llamacpp.bench_python() == "/somewhere/bin/python"
    monkeypatch.delenv(llamacpp.ENV_VAR)
    default = llamacpp.bench_python()
    assert default.endswith(".bench-env/bin/python")
    assert (llamacpp.DEFAULT_BENCH_ENV_PYTHON.parents[2] / "saguaro").is_dir()  # the repo root


def _fake_python(tmp_path, body: str) -> str:
    """A stand-in interpreter script that ignores its arguments and runs `body` instead."""
    script = tmp_path / "fake.py"
    script.write_text(textwrap.dedent(body))
    launcher = tmp_path / "python"
    launcher.write_text(f"#!/bin/sh\nexec {sys.executable} {script} \"$@\"\n")
    launcher.chmod(0o755)
    return str(launcher)


def test_run_llamacpp_parses_the_last_stdout_line(tmp_path):
    result = {"rows": ROWS[:1], "system_info": "CPU"}
    python = _fake_python(tmp_path, f"""
        import json, sys
        cfg = json.loads(sys.argv[2])
        assert cfg["n_max"] == 3 and cfg["prompts"] == [["code", "x"]]
        print("log noise")
        print(json.dumps({result!r}))
    """)
    s = llamacpp.run_llamacpp({"model": "t.gguf", "draft": "d.gguf", "threads": 2, "max_tokens": 16,
                               "prompts": [("code", "x")]}, python)
    assert s["tok_s"] == pytest.approx(30.0) and s["acceptance"] == pytest.approx(0.75)


def test_run_llamacpp_raises_with_the_stderr_tail(tmp_path):
    python = _fake_python(tmp_path, """
        import sys
        sys.stderr.write("llama_model_load: failed to open model\\n")
        sys.exit(1)
    """)
    with pytest.raises(RuntimeError, match="failed to open model"):
        llamacpp.run_llamacpp({"model": "missing.gguf", "threads": 1, "max_tokens": 1, "prompts": []}, python)


def test_importing_the_module_does_not_import_xllamacpp():
    code = "import sys, saguaro.bench.llamacpp; print(json.dumps('xllamacpp' in sys.modules))"
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) is False
