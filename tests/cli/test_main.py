"""Tests of the `saguaro` command line, run in-process on tiny random models.

One subprocess test proves `python -m saguaro`; one slow test runs the real bundled 0.5B model.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import types

import pytest

from saguaro.cli import main as cli
from saguaro.loading import bundled
from saguaro.testing.random_model import write_random_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(write_random_model(tmp_path_factory.mktemp("cli") / "m", seed=1))


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(capsys, *argv, match: str = ""):
    code, out, err = run(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("saguaro: error: "), err
    assert "Traceback" not in err + out
    assert match in lines[0]
    return lines[0]


# ---- generate ---------------------------------------------------------------------------------


def test_generate_json_shape(capsys, model):
    code, out, err = run(capsys, "generate", "hello", "--target", model, "--max-tokens", "5", "--json",
                         "--ignore-eos", "--seed", "1")
    assert code == 0, err
    [line] = out.splitlines()
    obj = json.loads(line)
    assert isinstance(obj["text"], str)
    assert len(obj["token_ids"]) == 5 and all(isinstance(t, int) for t in obj["token_ids"])
    assert obj["metrics"]["mode"] == "ar"
    assert obj["metrics"]["decode_tokens"] == 5
    assert "decode_tokens_per_s" in obj["metrics"]


def test_generate_text_and_summary(capsys, model):
    code, out, err = run(capsys, "generate", "ab", "cd", "ef", "--target", model, "--max-tokens", "4",
                         "--ignore-eos", "--seed", "2")
    assert code == 0, err
    # Three texts of 4 single-character tokens, separated by blank lines.
    assert out.count("\n\n") == 2
    assert "tokens/s" in err and "mode ar" in err


def test_several_prompts_give_one_json_line_each(capsys, model):
    code, out, err = run(capsys, "generate", "a", "bb", "ccc", "--target", model, "--max-tokens", "3", "--json")
    assert code == 0, err
    objs = [json.loads(line) for line in out.splitlines()]
    assert [o["metrics"]["prompt_tokens"] for o in objs] == [1, 2, 3]


def test_same_seed_reproduces_output(capsys, model):
    argv = ["generate", "hello", "--target", model, "--max-tokens", "12", "--ignore-eos",
            "--temperature", "1.0", "--seed", "7", "--json"]
    first = json.loads(run(capsys, *argv)[1])
    second = json.loads(run(capsys, *argv)[1])
    assert first["token_ids"] == second["token_ids"]
    assert first["text"] == second["text"]


def test_chat_flag_uses_chat_template(capsys, model):
    code, out, err = run(capsys, "generate", "hi", "--chat", "--target", model, "--max-tokens", "2", "--json")
    assert code == 0, err
    # The toy template renders "u:hi.a:" — 7 tokens where the raw prompt has 2.
    assert json.loads(out)["metrics"]["prompt_tokens"] == len("u:hi.a:")


def test_stop_string_and_greedy(capsys, model):
    argv = ["generate", "hello", "--target", model, "--max-tokens", "20", "--temperature", "0", "--ignore-eos", "--json"]
    full = json.loads(run(capsys, *argv)[1])["text"]
    stop = full[3:5]
    code, out, err = run(capsys, *argv, "--stop", stop, "--stop", "zzzz")
    assert code == 0, err
    result = json.loads(out)
    assert stop not in result["text"] and full.startswith(result["text"])
    assert result["finish_reason"] == "stop"


def test_sd_mode_reports_acceptance(capsys, model):
    code, out, err = run(capsys, "generate", "hello", "--target", model, "--draft", model, "--mode", "sd",
                         "--k", "3", "--max-tokens", "6", "--ignore-eos")
    assert code == 0, err
    assert "mode sd" in err and "acceptance" in err


def test_verbose_logs_info(capsys, model):
    code, _, err = run(capsys, "-v", "generate", "x", "--target", model, "--max-tokens", "1")
    assert code == 0
    assert "INFO" in err and "loaded" in err


def test_keyboard_interrupt_exits_130_and_closes(capsys, model, monkeypatch):
    from saguaro.llm import LLM

    closed = []

    def interrupt(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(LLM, "generate", interrupt)
    monkeypatch.setattr(LLM, "close", lambda self: closed.append(True))
    code, _, err = run(capsys, "generate", "x", "--target", model)
    assert code == 130 and closed == [True]
    assert "Traceback" not in err


def test_a_ctrl_c_during_the_runtime_imports_waits_for_them_to_finish():
    """A Ctrl-C inside torch's import used to leave it half imported (an ImportError, a
    swallowed interrupt, or death by the signal); it is held until the imports end."""
    import signal
    import time

    finished = []

    def load():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # a Ctrl-C let through would interrupt this sleep
        finished.append(True)

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        cli._import_runtime(load)
    assert finished == [True]
    assert signal.getsignal(signal.SIGINT) is before
    cli._import_runtime(lambda: finished.append(True))  # no Ctrl-C: nothing raised
    assert finished == [True, True]


def test_default_target_is_bundled_pair(monkeypatch):
    seen = {}

    class FakeLLM:
        def __init__(self, target, draft=None, mode="ar", k=None, target_cores=None, fanout=None):
            seen.update(target=target, draft=draft, mode=mode, target_cores=target_cores, fanout=fanout)

    monkeypatch.setattr("saguaro.llm.LLM", FakeLLM)
    parser = cli.build_parser()
    cli.open_llm(parser.parse_args(["generate", "x", "--mode", "sd", "--target-cores", "0,1", "--fanout", "flat"]))
    assert seen == dict(target=bundled.DEFAULT_TARGET, draft=bundled.DEFAULT_DRAFT, mode="sd",
                        target_cores=[0, 1], fanout="flat")
    cli.open_llm(parser.parse_args(["generate", "x"]))
    assert seen["mode"] == cli.DEFAULT_MODE == "ssd" and seen["draft"] == bundled.DEFAULT_DRAFT
    cli.open_llm(parser.parse_args(["generate", "x", "--target", "some.gguf"]))
    assert seen["mode"] == "ar" and seen["draft"] is None  # no draft given: plain AR
    cli.open_llm(parser.parse_args(["generate", "x", "--target", "a.gguf", "--draft", "ngram"]))
    assert seen["mode"] == "sd"  # the n-gram drafter has no SSD worker
    # A knob this engine does not take is a user error, not a TypeError.
    with pytest.raises(cli.UsageError, match="--backup"):
        cli.open_llm(parser.parse_args(["generate", "x", "--backup", "ngram"]))


# ---- chat -------------------------------------------------------------------------------------


def test_chat_reads_stdin_keeps_history_and_resets(capsys, model, monkeypatch):
    from saguaro.llm import LLM

    prompts = []
    real = LLM.chat_prompt

    def recording(self, messages):
        prompts.append([dict(m) for m in messages])
        return real(self, messages)

    monkeypatch.setattr(LLM, "chat_prompt", recording)
    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\nthere\n/reset\nyo\n"))
    code, out, err = run(capsys, "chat", "--target", model, "--max-tokens", "3", "--ignore-eos", "--seed", "0")
    assert code == 0, err
    assert "> " not in out  # not a TTY: no prompt
    assert [len(p) for p in prompts] == [1, 3, 1]
    assert [m["role"] for m in prompts[1]] == ["user", "assistant", "user"]
    assert prompts[2] == [{"role": "user", "content": "yo"}]
    assert err.count("tokens/s") == 3


def test_chat_context_overflow_keeps_session(capsys, model, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("a" * 300 + "\nhi\n"))
    code, out, err = run(capsys, "chat", "--target", model, "--max-tokens", "2")
    assert code == 0
    assert "exceeds the model's context" in err and err.count("tokens/s") == 1


# ---- bench ------------------------------------------------------------------------------------


def test_bench_forwards_argv(capsys, monkeypatch):
    seen = []
    fake = types.ModuleType("saguaro.bench.main")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "saguaro.bench.main", fake)
    assert cli.main(["bench", "--mode", "sd", "-h", "x"]) == 0
    assert seen == [["--mode", "sd", "-h", "x"]]


def test_bench_missing_module(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "saguaro.bench.main", None)
    assert_user_error(capsys, "bench", match="saguaro.bench.main")


# ---- user errors ------------------------------------------------------------------------------


def test_missing_model_file(capsys, tmp_path):
    assert_user_error(capsys, "generate", "x", "--target", str(tmp_path / "nope.gguf"), match="no such GGUF")


def test_model_folder_without_weights(capsys, tmp_path, model):
    folder = tmp_path / "noweights"
    shutil.copytree(model, folder)
    os.remove(folder / "model.safetensors")
    assert_user_error(capsys, "generate", "x", "--target", str(folder), match="safetensors")


def test_unknown_model_name(capsys):
    assert_user_error(capsys, "generate", "x", "--target", "no-such-model", match="unknown model")


def test_corrupt_gguf(capsys, tmp_path):
    path = tmp_path / "bad.gguf"
    path.write_bytes(os.urandom(4096))
    assert_user_error(capsys, "generate", "x", "--target", str(path), match="GGUF")


def test_truncated_gguf(capsys, tmp_path):
    try:
        real = bundled.bundled_gguf("qwen2.5-coder-0.5b")
    except Exception as e:  # the chunk packages are an optional extra
        pytest.skip(f"bundled model unavailable: {e}")
    path = tmp_path / "truncated.gguf"
    with open(real, "rb") as f:
        path.write_bytes(f.read(1 << 20))
    assert_user_error(capsys, "generate", "x", "--target", str(path), match="truncated")


def test_bundled_hash_mismatch(capsys, tmp_path, monkeypatch):
    real = bundled.BUNDLED["qwen2.5-coder-0.5b"]
    # One chunk of the real model with its true size keeps the test fast; only the hash is wrong.
    one = bundled.BundledModel(real.name, real.module_prefix, real.pip_prefix, 1, 0, "0" * 64)
    try:
        size = sum(p.stat().st_size for p in bundled.chunk_paths(one))
    except Exception as e:
        pytest.skip(f"bundled chunks unavailable: {e}")
    wrong = bundled.BundledModel(real.name, real.module_prefix, real.pip_prefix, 1, size, "0" * 64)
    monkeypatch.setattr(bundled, "BUNDLED", {real.name: wrong})
    monkeypatch.setenv(bundled.CACHE_ENV, str(tmp_path))
    assert_user_error(capsys, "generate", "x", "--target", real.name, match="failed verification")
    assert not list((tmp_path / "gguf").glob("*"))  # nothing half-written is left behind


def test_unsupported_architecture(capsys, tmp_path):
    folder = write_random_model(tmp_path / "neox", seed=0)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "gpt_neox"
    (folder / "config.json").write_text(json.dumps(cfg))
    assert_user_error(capsys, "generate", "x", "--target", str(folder), match="gpt_neox")


def test_prompt_longer_than_context(capsys, model):
    assert_user_error(capsys, "generate", "a" * 300, "--target", model, match="context")


def test_max_tokens_beyond_context(capsys, model):
    assert_user_error(capsys, "generate", "x", "--target", model, "--max-tokens", "1000", match="context")


@pytest.mark.parametrize("flag, value, name", [
    ("--temperature", "-1", "temperature"),
    ("--top-p", "0", "top_p"),
    ("--top-k", "-5", "top_k"),
    ("--max-tokens", "0", "max_tokens"),
    ("--max-tokens", "many", "--max-tokens"),
    ("--stop", "", "stop"),
])
def test_invalid_sampling_values(capsys, model, flag, value, name):
    assert_user_error(capsys, "generate", "x", "--target", model, flag, value, match=name)


@pytest.mark.parametrize("argv, name", [
    (["--mode", "xx"], "--mode"),
    (["--k", "abc"], "--k"),
    (["--mode", "sd", "--k", "0"], "k must be"),
    (["--mode", "sd", "--k", "99"], "k must be"),
    (["--mode", "sd"], "draft"),
    (["--dtype", "int8"], "dtype"),
    (["--threads", "0"], "threads"),
    (["--target-cores", "a,b"], "--target-cores"),
    (["--no-such-flag"], "unrecognized"),
])
def test_invalid_options(capsys, model, argv, name):
    assert_user_error(capsys, "generate", "x", "--target", model, *argv, match=name)


def test_bad_cpu_kernel_setting_is_one_line(capsys, model, monkeypatch):
    monkeypatch.setenv("SAGUARO_CPU_KERNELS", "fastest")
    assert_user_error(capsys, "generate", "x", "--target", model, match="SAGUARO_CPU_KERNELS")


def test_bf16_runs_on_a_cpu_without_onednn_bf16(capsys, model, monkeypatch):
    """An AVX2-only CPU, simulated: the default bf16 path falls back instead of crashing."""
    from saguaro.model import cpu_packing

    monkeypatch.setattr(cpu_packing, "onednn_runs", lambda dtype: False)
    code, out, err = run(capsys, "generate", "hi", "--target", model, "--dtype", "bfloat16",
                         "--max-tokens", "3", "--ignore-eos", "--json")
    assert code == 0, err
    assert len(json.loads(out)["token_ids"]) == 3
    monkeypatch.setenv("SAGUARO_CPU_KERNELS", "onednn")
    assert_user_error(capsys, "generate", "hi", "--target", model, "--dtype", "bfloat16", match="AVX-512")


def test_avx2_only_cpu_runs_bf16_and_int4(model):
    """oneDNN and ATen limited to AVX2 in a subprocess: what an AVX2-only CPU runs, on any CPU.
    (ONEDNN_MAX_CPU_ISA=AVX2 makes oneDNN's bf16 packing raise exactly as it does there.)"""
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", ATEN_CPU_CAPABILITY="avx2")
    env.pop("SAGUARO_CPU_KERNELS", None)
    for quant in ("none", "int4"):
        proc = subprocess.run(
            [sys.executable, "-m", "saguaro", "generate", "hi", "--target", model, "--dtype", "bfloat16",
             "--quantize-target", quant, "--max-tokens", "3", "--ignore-eos", "--json"],
            capture_output=True, text=True, timeout=120, env=env,
        )
        assert proc.returncode == 0, proc.stderr
        assert len(json.loads(proc.stdout)["token_ids"]) == 3


def test_no_command(capsys):
    assert_user_error(capsys)


# ---- entry points -----------------------------------------------------------------------------


def test_python_dash_m_entry_point(model):
    proc = subprocess.run(
        [sys.executable, "-m", "saguaro", "generate", "hi", "there", "--target", model, "--max-tokens", "3", "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert [len(json.loads(line)["token_ids"]) <= 3 for line in proc.stdout.splitlines()] == [True, True]


@pytest.mark.slow
def test_real_bundled_model_json(capsys):
    code, out, err = run(capsys, "generate", "def add(a, b):", "--target", "qwen2.5-coder-0.5b",
                         "--max-tokens", "8", "--temperature", "0", "--json")
    assert code == 0, err
    obj = json.loads(out)
    assert 1 <= len(obj["token_ids"]) <= 8
    assert obj["text"].strip()
    assert obj["metrics"]["decode_tokens"] == len(obj["token_ids"])
