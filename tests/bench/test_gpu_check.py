"""scripts/gpu_check.sh's Python part, dry-run on the CPU with tiny shapes: every key the GPU
issue asks for is produced, no part fails, and the exactness keys hold."""

import json

from saguaro.bench.gpu_check import main

KEYS = ["device", "torch", "floor_ms", "ar_7b_tok_s", "ar_7b_tok_s_fraction_of_floor", "verify_ms", "draft_step_ms",
        "branch_step_ms", "sd_over_ar", "ssd_over_sd", "ar_batch8_over_batch1", "exact_fp32_sd", "exact_fp32_ssd",
        "chi2_ok"]


def test_gpu_check_dry_run_on_cpu(tmp_path, capsys):
    assert main(["--device", "cpu", "--dtype", "float32", "--target", "random:tiny", "--draft", "random:tiny:1",
                 "--context", "24", "--tokens", "8", "--exact-tokens", "8", "--samples", "400", "--reps", "2",
                 "--copy-mib", "8", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert json.loads(capsys.readouterr().out) == results
    assert [k for k in KEYS if k not in results] == []
    assert not [k for k in results if k.endswith("_error")]
    assert set(results["verify_ms"]) == {"2", "5", "9"} and set(results["branch_step_ms"]) == {"8", "16"}
    assert results["exact_fp32_sd"] and results["exact_fp32_ssd"] and results["chi2_ok"]
    assert results["agree_pair"]["sd"]["acceptance"] > 0  # the agree pair accepts
    assert results["floor_ms"] > 0 and results["ar_7b_tok_s"] > 0
