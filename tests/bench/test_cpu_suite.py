"""The cpu benchmark suite: llama.cpp on the same GGUF files next to Saguaro at each precision."""

import argparse

import pytest

from saguaro.bench.main import cpu_flags, main, print_table, suite_configs


def args(**over):
    base = dict(target="/m/target.gguf", draft="/m/draft.gguf", dtype="auto", max_tokens=16, kinds=["code"],
                draft_head_tokens=None, quantize=["auto", "none"], quantize_draft=["int4"], ssd_k=None,
                fanout="flat")
    return argparse.Namespace(**{**base, **over})


def test_cpu_suite_pairs_llamacpp_with_each_precision():
    configs = suite_configs("cpu", args())
    by_name = {c["name"]: c for c in configs}
    ar, spec = by_name["llama.cpp ar"], by_name["llama.cpp spec"]
    assert ar["engine"] == spec["engine"] == "llamacpp"
    assert ar["draft"] is None and spec["draft"] == "/m/draft.gguf"
    assert ar["model"] == "/m/target.gguf" and ar["threads"] == 2
    for quant in ("auto", "none"):
        for mode in ("ar", "sd k=3", "ssd"):
            name = f"saguaro {mode} {quant}" + ("" if mode == "ar" else " draft int4")
            cfg = by_name[name]
            assert cfg["engine"] == "saguaro" and cfg["quantize_target"] == quant
            assert mode == "ar" or cfg["quantize_draft"] == "int4"
    ssd = by_name["saguaro ssd auto draft int4"]
    assert ssd["cores"] == [0] and ssd["draft_cores"] == [1]


def test_table_ratios_are_against_llamacpp_ar():
    rows = [{"name": "llama.cpp ar", "tok_s": 20.0}, {"name": "saguaro ar auto", "tok_s": 10.0}]
    table = print_table(rows, "llama.cpp ar")
    assert "0.50x" in table and "1.00x" in table


def test_cpu_flags_keep_the_model_and_simd_flags():
    info = "model name\t: Some CPU\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512_bf16 amx_tile\n"
    assert cpu_flags(info) == "Some CPU: avx avx2 fma avx512f avx512_bf16 amx_tile"


def test_an_out_that_is_a_file_is_refused_before_running(tmp_path, capsys):
    taken = tmp_path / "bench_cpu.json"
    taken.write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        main(["cpu", "--out", str(taken)])
    assert exit_info.value.code == 2
    assert "is a file" in capsys.readouterr().err
    assert taken.read_text() == "{}"
