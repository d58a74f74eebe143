"""Statistical exactness harness: the exact AR distribution of short continuations, sampled
continuations from any engine mode, and a chi-square test comparing the two.

Used by the test suite (tests/exactness.py adds a transformers reference) and by the GPU check,
which runs the same chi-square on the device.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import torch

# Mass before a top-p boundary token this close to top_p is ambiguous between float32 (the
# engine) and float64 (this harness); such a setting is refused rather than silently off.
TOP_P_MARGIN = 1e-5


def filtered_probs(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """float64 `[rows, vocab]` distributions from logits `[rows, vocab]`: temperature, top-k, top-p.

    Same rule as saguaro.sampling.probs.logits_to_probs, written separately: top-k keeps the k
    largest logits; top-p keeps a token (in descending order) while the mass before it is < top_p.
    """
    x = logits.detach().double().cpu().numpy()  # [rows, vocab]
    rows, vocab = x.shape
    if temperature == 0:
        out = np.zeros_like(x)
        out[np.arange(rows), x.argmax(axis=-1)] = 1.0
        return out
    x = x / temperature
    out = np.zeros_like(x)
    for r in range(rows):
        order = np.argsort(-x[r], kind="stable")
        keep = order[:top_k] if 0 < top_k < vocab else order
        e = np.exp(x[r, keep] - x[r, keep].max())
        pk = e / e.sum()  # descending, over the top-k survivors
        if top_p < 1.0:
            before = np.cumsum(pk) - pk
            if np.any(np.abs(before[1:] - top_p) < TOP_P_MARGIN):
                raise ValueError(f"top_p={top_p} sits within {TOP_P_MARGIN} of a cumulative mass; pick another")
            n_keep = int((before < top_p).sum())
            keep, pk = keep[:n_keep], pk[:n_keep] / pk[:n_keep].sum()
        out[r, keep] = pk
    return out


def enumerate_distribution(
    logits_fn,
    prompt_ids: list[int],
    n_tokens: int,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
) -> dict[tuple[int, ...], float]:
    """P(first n_tokens generated tokens = c) under AR sampling from the target, for every c with P > 0.

    Enumerates the tree of continuations level by level, one batched forward per level,
    pruning zero-probability branches (top-k, top-p, greedy). `logits_fn(rows)` gives float32
    logits `[len(rows), vocab]` after each row's last token (rows of equal length).
    """
    level: dict[tuple[int, ...], float] = {(): 1.0}
    for _ in range(n_tokens):
        prefixes = list(level)
        probs = filtered_probs(logits_fn([list(prompt_ids) + list(c) for c in prefixes]),
                               temperature, top_k, top_p)  # [prefixes, vocab]
        nxt: dict[tuple[int, ...], float] = {}
        for c, row in zip(prefixes, probs):
            for t in np.nonzero(row > 0)[0]:
                nxt[c + (int(t),)] = level[c] * float(row[t])
        level = nxt
    return level


def sample_continuations_multi(
    llm,
    prompts: list[list[int]],
    n_tokens: int,
    params_template,
    samples_per_prompt: int,
    batch: int = 2000,
    seed_offset: int = 0,
) -> list[Counter]:
    """Counts of the first n_tokens generated tokens, one Counter per prompt.

    Each generate call takes `batch` rows cycling through `prompts` (so rows of one batch have
    different prompts when there are several); every row has its own seed, seed_offset + row index.
    """
    total = samples_per_prompt * len(prompts)
    counts = [Counter() for _ in prompts]
    for start in range(0, total, batch):
        idx = list(range(start, min(start + batch, total)))
        params = [dataclasses.replace(params_template, seed=seed_offset + i, max_tokens=n_tokens, ignore_eos=True)
                  for i in idx]
        results = llm.generate([list(prompts[i % len(prompts)]) for i in idx], params)
        for i, r in zip(idx, results):
            if len(r.token_ids) != n_tokens:
                raise AssertionError(f"asked for {n_tokens} tokens, got {r.token_ids}")
            counts[i % len(prompts)][tuple(r.token_ids)] += 1
    return counts


def sample_continuations(llm, prompt_ids: list[int], n_tokens: int, params_template, samples: int,
                         batch: int = 2000, seed_offset: int = 0) -> Counter:
    """Counts of the first n_tokens generated tokens over `samples` seeds (seed_offset + i).

    batch > 1 decodes that many copies of the prompt per generate call, each with its own seed;
    batch == 1 is one prompt per call, the path a lone request takes (no padding, no companions).
    """
    return sample_continuations_multi(llm, [prompt_ids], n_tokens, params_template, samples, batch, seed_offset)[0]


def chi_square_pvalue(counts: Counter, expected_probs: dict, min_expected: float = 5) -> float:
    """Pearson chi-square goodness of fit of `counts` to `expected_probs` (cells -> probability).

    Cells whose expected count is below min_expected are pooled into one bin (merged into the
    smallest regular cell if the pool itself is still too small). A sample in a cell of
    probability 0 is impossible under the expected distribution: p-value 0.
    """
    total = sum(counts.values())
    if total == 0:
        raise ValueError("no samples")
    mass = sum(expected_probs.values())
    if abs(mass - 1.0) > 1e-6:
        raise ValueError(f"expected probabilities sum to {mass}, not 1")
    if any(expected_probs.get(c, 0.0) <= 0.0 for c in counts):
        return 0.0
    cells = sorted(expected_probs, key=lambda c: -expected_probs[c])
    expected = np.array([expected_probs[c] * total for c in cells])
    observed = np.array([counts.get(c, 0) for c in cells], dtype=np.float64)
    big = expected >= min_expected
    obs, exp = list(observed[big]), list(expected[big])
    if (~big).any():
        pool_obs, pool_exp = observed[~big].sum(), expected[~big].sum()
        if pool_exp >= min_expected or not exp:
            obs.append(pool_obs)
            exp.append(pool_exp)
        else:
            obs[-1] += pool_obs
            exp[-1] += pool_exp
    if len(exp) < 2:
        return 1.0
    exp_arr = np.array(exp)
    exp_arr *= total / exp_arr.sum()  # only rounding is corrected here
    statistic = float(((np.array(obs) - exp_arr) ** 2 / exp_arr).sum())
    # The chi-square survival function with len - 1 degrees of freedom.
    return float(torch.special.gammaincc(torch.tensor((len(exp_arr) - 1) / 2, dtype=torch.float64),
                                         torch.tensor(statistic / 2, dtype=torch.float64)))


def chi_square_pvalue_joint(counts: list[Counter], distributions: list[dict], min_expected: float = 5) -> float:
    """One chi-square over several prompts: cells (prompt index, continuation), weighted by samples."""
    total = sum(sum(c.values()) for c in counts)
    joint_counts, joint_probs = Counter(), {}
    for i, (c, dist) in enumerate(zip(counts, distributions)):
        share = sum(c.values()) / total
        joint_counts.update({(i, k): v for k, v in c.items()})
        joint_probs.update({(i, k): share * p for k, p in dist.items()})
    return chi_square_pvalue(joint_counts, joint_probs, min_expected)


def write_tiny_pair(root: Path) -> tuple[str, str]:
    """A tiny random target (vocab 8) and a different, smaller random draft, so p != q and both
    acceptance and rejection happen."""
    from saguaro.testing.random_model import write_random_model

    target = write_random_model(root / "target", seed=11, scale=0.25, vocab=8, hidden=32, layers=2,
                                heads=4, kv_heads=2, intermediate=64, context=64)
    draft = write_random_model(root / "draft", seed=22, scale=0.25, vocab=8, hidden=16, layers=1,
                               heads=2, kv_heads=1, intermediate=32, context=64)
    return str(target), str(draft)


def engine_logits(runner, rows: list[list[int]]) -> torch.Tensor:
    """float32 logits `[len(rows), vocab]` after each row's last token, from a Saguaro ModelRunner."""
    cache = runner.new_cache(len(rows), max(len(r) for r in rows))
    return runner.feed(cache, rows)  # [rows, vocab]
