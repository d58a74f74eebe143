"""Where an SSD configuration's rounds go, from the per-prompt figures its bench rows keep.

A round is one verification: the target verifies, then waits for the worker's reply (a backup
after a miss, or late drafting), while the worker glues, drafts its branches and idles. The
table puts them in ms per round, with the target's wait split between misses and hits.
"""

from __future__ import annotations


def round_figures(rows: list[dict]) -> dict | None:
    """ms per round of each part, the target's wait per miss and per hit, and tokens per round,
    over the rows that ran SSD rounds; None when none did. A row's misses are its lookups less its
    hits (rows from before those were kept: its rounds times one less its hit rate)."""
    ssd = [r for r in rows if r.get("rounds") and "hit_rate" in r]
    rounds = sum(r["rounds"] for r in ssd)
    if not rounds:
        return None
    misses = sum(r["lookups"] - r["hits"] if "lookups" in r else r["rounds"] * (1 - r["hit_rate"]) for r in ssd)

    def total(key: str) -> float:
        return sum(r.get(key, 0.0) for r in ssd)

    def per_round(key: str) -> float:
        return total(key) / rounds * 1e3

    wait, wait_on_hit = total("target_wait_s"), total("target_wait_on_hit_s")
    return {
        "round": per_round("seconds"), "verify": per_round("verify_s"), "wait": wait / rounds * 1e3,
        "glue": per_round("worker_glue_s"), "branch": per_round("worker_branch_s"), "idle": per_round("worker_idle_s"),
        "wait_per_miss": (wait - wait_on_hit) / misses * 1e3 if misses else 0.0,
        "wait_per_hit": wait_on_hit / (rounds - misses) * 1e3 if rounds > misses else 0.0,
        "tokens_per_round": total("tokens") / rounds,
    }


# (figure, column head)
COLUMNS = (("round", "round"), ("verify", "verify"), ("wait", "wait"), ("glue", "glue"), ("branch", "branch"),
           ("idle", "idle"), ("wait_per_miss", "wait/miss"), ("wait_per_hit", "wait/hit"),
           ("tokens_per_round", "tok/round"))


def rounds_table(results: list[dict]) -> str:
    """One line per configuration with SSD rounds ("" when there is none)."""
    lines = [(r["name"], f) for r in results if (f := round_figures(r.get("rows", []))) is not None]
    if not lines:
        return ""
    width = max([34] + [len(name) for name, _ in lines])
    out = [f"{'SSD rounds, ms per round':{width}} " + " ".join(f"{head:>9}" for _, head in COLUMNS)]
    for name, f in lines:
        out.append(f"{name:{width}} " + " ".join(f"{f[key]:9.2f}" for key, _ in COLUMNS))
    return "\n".join(out)
