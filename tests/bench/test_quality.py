"""The quality report's teacher forcing: chunked feeding gives the logits of one long forward."""

import torch

from saguaro.bench.quality import CHUNK, teacher_forced
from saguaro.engine.runner import ModelRunner
from saguaro.loading.loader import load_model
from saguaro.testing.random_model import write_random_model


def test_teacher_forcing_matches_one_forward(tmp_path):
    folder = write_random_model(tmp_path / "m", seed=2, vocab=40, context=1024)
    decoder = load_model(str(folder), dtype="float32").decoder
    ids = [(7 * i + 3) % 40 for i in range(CHUNK + 40)]  # crosses a chunk boundary
    top, logp = teacher_forced(decoder, ids)
    runner = ModelRunner(decoder)
    logits = runner.feed(runner.new_cache(1, len(ids)), [ids[:-1]], all_logits=True)[0]  # [n, vocab]
    expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1)
    assert top.shape == logp.shape == (len(ids) - 1,)
    assert torch.equal(top, logits.argmax(-1))
    torch.testing.assert_close(logp, expected, atol=1e-4, rtol=0)


def test_main_reports_targets_and_drafts(tmp_path, capsys):
    import json

    from saguaro.bench.quality import main

    target = write_random_model(tmp_path / "t", seed=2, vocab=40, context=1024)
    draft = write_random_model(tmp_path / "d", seed=3, vocab=40, context=1024)
    out = tmp_path / "q.json"
    assert main(["--target", str(target), "--precisions", "float32", "--draft", str(draft),
                 "--draft-precisions", "none", "int8", "--tokens", "60", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["precision"] for r in report["rows"]] == ["float32"]
    assert [r["precision"] for r in report["drafts"]] == ["none", "int8"]
    assert all(r["tokens"] == 60 and 0.0 < r["sampled_acceptance"] < 1.0 for r in report["drafts"])
    printed = capsys.readouterr().out
    assert "draft precision" in printed and "target precision" in printed
