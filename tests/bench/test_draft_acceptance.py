"""Draft acceptance under teacher forcing: the per-position rule on hand-made logits, and the rows
on a tiny random pair."""

import math

import torch

from saguaro.bench.draft_acceptance import acceptance, draft_rows, table
from saguaro.bench.quality import CHUNK
from saguaro.loading.loader import load_model
from saguaro.testing.random_model import write_random_model


def test_acceptance_by_hand():
    inf = float("inf")
    p = torch.tensor([[0.0, 0.0, -inf, -inf],     # target: 1/2, 1/2 on tokens 0 and 1
                      [math.log(3.0), 0.0, -inf, -inf]])  # 3/4, 1/4
    q = torch.tensor([[-inf, 0.0, 0.0, -inf],     # draft: 1/2, 1/2 on tokens 1 and 2
                      [math.log(3.0), 0.0, -inf, -inf]])  # the same as the target
    top, overlap = acceptance(p, q)
    assert top.tolist() == [False, True]  # argmax of a tie is the first token: 0 against 1
    torch.testing.assert_close(overlap, torch.tensor([0.5, 1.0]))


def test_acceptance_over_unequal_vocabularies():
    # The target's extra token (id 2) has no draft probability; the draft's mass all lies in ids 0-1.
    p = torch.log(torch.tensor([[0.25, 0.25, 0.5]]))
    q = torch.log(torch.tensor([[0.5, 0.5]]))
    top, overlap = acceptance(p, q)
    assert top.tolist() == [False]
    torch.testing.assert_close(overlap, torch.tensor([0.5]))


def test_rows_on_a_tiny_pair(tmp_path):
    target = load_model(str(write_random_model(tmp_path / "t", seed=1, vocab=48, context=512)), dtype="float32")
    other = write_random_model(tmp_path / "d", seed=5, vocab=48, context=512)
    ids = [(11 * i + 5) % 48 for i in range(CHUNK + 30)]  # crosses a chunk boundary
    same = lambda: load_model(str(tmp_path / "t"), dtype="float32").decoder  # noqa: E731
    rows = draft_rows(target.decoder, [("same", same),
                                       ("other", lambda: load_model(str(other), dtype="float32").decoder)], ids)
    assert [r["precision"] for r in rows] == ["same", "other"]
    assert rows[0]["tokens"] == rows[1]["tokens"] == len(ids) - 1
    assert rows[0]["greedy_acceptance"] == 1.0
    assert abs(rows[0]["sampled_acceptance"] - 1.0) < 1e-5
    # Another model's distributions overlap the target's only in part.
    assert 0.0 < rows[1]["sampled_acceptance"] < 0.95
    assert rows[1]["greedy_acceptance"] < 1.0
    lines = table(rows)
    assert lines[1].split()[0] == "same" and lines[2].split()[0] == "other"
