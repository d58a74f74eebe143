"""The draft worker: its own process on its own cores (or CUDA device), drafting beside verification.

Each round it answers the last outcome with the next speculation (a cache hit, or a backup on a
miss), then drafts the branches for the speculation it just sent until the next outcome arrives.

A worker started by an engine lives only as long as that engine: it stops on the engine's
shutdown message, when the link closes, or when the engine process dies (PR_SET_PDEATHSIG plus a
parent-pid watch, so even a `kill -9` of the engine leaves no worker behind). It ignores SIGINT:
a terminal's Ctrl-C reaches the whole process group, and stopping is the engine's decision.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

import torch

from saguaro.drafters.ngram import ngram_propose
from saguaro.sampling.params import SamplingParams
from saguaro.ssd.branches import BranchDrafter, DraftSequence
from saguaro.ssd.budget import (ACCEPT_PRIOR, MAX_BRANCHES, TIMING_REPEATS, Observed, Seen, Tables, choose_plan,
                                score_plan)
from saguaro.ssd.calibration import kept_timings
from saguaro.ssd.channel import Channel
from saguaro.ssd.fanout import AcceptanceTracker, cap_fanout, flat_fanout, validate_fanout
from saguaro.ssd.protocol import CMD_END, K_MAX, Reply, decode_outcomes, encode_reply, outcome_buffer, pack_q
from saguaro.ssd.spec_cache import CacheEntry

log = logging.getLogger(__name__)
MIN_ROUNDS_TO_REPLAN = 8
IN_BATCH_REPLAN_ROUNDS = 16  # rounds between re-plans within a batch
REPLAN_MARGIN = 0.03  # a new plan must promise 3% more tokens/s than the current one
ACCEPT_MEMORY = 0.9  # weight of the earlier rounds' acceptance at each re-plan (one prompt's is noisy)
# Branch steps are timed at the widths plans use most: on CPU a step's cost is not linear in its
# width (a 6-branch step measured 34 ms in SSD rounds against 29 interpolated from 4 and 8).
STEP_WIDTHS = (1, 2, 3, 4, 6, 8, 12, 16, 32)
ACCEPT_PRIOR_TRIALS = 20  # the prior's weight in trials: 16 easy rounds alone would ask for a long K
DRAFT_SEED_SALT = 0x5A6A  # the draft's random stream differs from the target's for the same seed


@dataclass(frozen=True)
class WorkerConfig:
    host: str
    port: int
    draft: str
    dtype: str
    device: str
    cores: list[int] | None
    timeout_s: float
    target_vocab: int | None = None  # the engine sends it once the draft is loaded (it loads the target meanwhile)
    saguaro_c: float = 1.0
    head_tokens: int | None = None  # keep only this many frequent tokens in the draft's LM head
    quantize: str = "auto"  # the draft's weights (saguaro.quant.transform)
    fault_after_rounds: int | None = None  # testing: the worker dies abruptly after this many rounds
    static_shapes: bool = False  # capture-ready draft forwards (saguaro.engine.runner)
    log_level: int = logging.WARNING
    parent_pid: int | None = None  # the engine's process: exit when it is gone (None: started by hand)
    death_signal: bool = False  # also ask Linux for SIGTERM when the parent dies (PR_SET_PDEATHSIG)


PR_SET_PDEATHSIG = 1
PARENT_POLL_S = 0.5


def worker_main(cfg: WorkerConfig) -> int:
    """Process entry point. Returns the exit status: 0 after a shutdown or once the engine is gone."""
    logging.basicConfig(level=cfg.log_level, format="%(asctime)s saguaro-worker %(levelname)s %(message)s")
    if cfg.parent_pid is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        watch_parent(cfg.parent_pid, cfg.death_signal)
    from saguaro.ssd.placement import pin_process

    pin_process(cfg.cores)
    try:
        serve(cfg, Channel(cfg.host, cfg.port, rank=1, timeout_s=cfg.timeout_s), in_process=False)
    except Exception as e:
        if cfg.parent_pid is None or not _engine_gone(cfg.parent_pid, e):
            raise
        # The engine went away (closed its end, or died): nothing is left to draft for.
        log.info("the engine closed the link (%s); exiting", str(e).splitlines()[0][:160])
    return 0


def watch_parent(parent_pid: int, death_signal: bool) -> None:
    """Exit as soon as the engine process is gone, even if it was killed with SIGKILL.

    PR_SET_PDEATHSIG (Linux) signals at once, but it fires when the *thread* that started this
    process ends, so the engine asks for it (`death_signal`) only from its main thread. A thread
    polling the parent pid covers every other case, and other POSIX systems."""
    if death_signal and sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
                log.debug("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        except (OSError, AttributeError) as e:
            log.debug("no prctl: %s", e)
    if os.getppid() != parent_pid:  # died before the signal was armed
        os._exit(0)

    def poll() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        log.info("the engine process %d is gone; exiting", parent_pid)
        os._exit(0)

    threading.Thread(target=poll, daemon=True, name="saguaro-parent-watch").start()


def _engine_gone(parent_pid: int, error: Exception) -> bool:
    """Whether `error` means the engine closed the link or died, rather than a fault of ours."""
    text = str(error).lower()
    if any(word in text for word in ("connection", "closed", "reset", "broken pipe", "eof")):
        return True
    deadline = time.monotonic() + 2 * PARENT_POLL_S
    while time.monotonic() < deadline:  # the parent may be exiting right now
        if os.getppid() != parent_pid:
            return True
        time.sleep(0.05)
    return False


def worker_thread_main(cfg: WorkerConfig, channel) -> None:
    """Thread entry point of the in-process worker: everything it runs goes on its own CUDA stream
    (on CPU it simply shares the process)."""
    device = torch.device(cfg.device)
    try:
        if device.type != "cuda":
            serve(cfg, channel, in_process=True)
            return
        with torch.cuda.device(device), torch.cuda.stream(torch.cuda.Stream(device)):
            serve(cfg, channel, in_process=True)
    except Exception as e:  # the engine sees the thread end (a WorkerFault) and goes on without it
        log.warning("in-process draft worker stopped: %s", e)


def serve(cfg: WorkerConfig, channel, in_process: bool) -> None:
    """Load the draft, report readiness (or the load error) to the engine, learn the target's
    vocabulary size, then serve batches."""
    try:
        from saguaro.engine.runner import ModelRunner
        from saguaro.loading.loader import load_model

        loaded = load_model(cfg.draft, device=cfg.device, dtype=cfg.dtype, head_tokens=cfg.head_tokens,
                            quantize=cfg.quantize, draft=True)
    except Exception as e:  # reported to the engine, which raises it as a clear error
        channel.send_obj({"ok": False, "error": f"{type(e).__name__}: {e}"})
        return
    channel.send_obj({"ok": True, "tokenizer": loaded.tokenizer.fingerprint()})
    attach = channel.recv_obj()  # the target is loaded too, and its tokenizer matches the draft's
    if attach["cmd"] != "attach":
        return  # shutdown: the target failed to load, or the tokenizers differ
    cfg = dataclasses.replace(cfg, target_vocab=attach["target_vocab"])
    try:
        runner = ModelRunner(loaded.decoder, draft=True, static_shapes=cfg.static_shapes)
        Worker(cfg, channel, runner, in_process, draft_key=loaded.cache_key).serve()
    except WorkerStopped:
        log.warning("draft worker stopped (fault injection)")


class WorkerStopped(Exception):
    """Ends an in-process worker abruptly (testing), as os._exit ends a worker process."""


class Worker:
    def __init__(self, cfg: WorkerConfig, channel, runner, in_process: bool = False, draft_key: str | None = None):
        self.cfg = cfg
        self.draft_key = draft_key  # keeps the start-up timings across starts (saguaro.ssd.calibration)
        self.in_process = in_process
        self.channel = channel
        self.drafter = BranchDrafter(runner, cfg.target_vocab, cfg.saguaro_c)
        self.runner = runner
        self.tracker = AcceptanceTracker()
        self.rounds = 0
        self._step_times: dict[int, float] = {}
        self._plans: dict[tuple, tuple[int, list[int], int]] = {}  # per batch shape, re-planned after each batch
        self._tables: dict[tuple, tuple[Tables, object, int | None]] = {}  # start-up timings of automatic plans
        self._acceptance: dict[tuple, tuple[float, float]] = {}  # per batch shape: decayed (accepted, trials)
        self._seen: dict[tuple, Seen] = {}  # per batch shape: what rounds measured at each K and width

    def serve(self) -> None:
        while True:
            msg = self.channel.recv_obj()
            if msg["cmd"] == "shutdown":
                return
            if msg["cmd"] == "start":
                self.run_batch(msg)

    def _sequences(self, payload: list) -> list[DraftSequence]:
        seqs = []
        for prompt, params in payload:
            seqs.append(DraftSequence(self._next_key, list(prompt), SamplingParams(**params),
                                      _generator(params.get("seed"))))
            self._next_key += 1
        return seqs

    # ---- one session: sequences join and leave between rounds -----------------------------------

    def run_batch(self, msg: dict) -> None:
        self._next_key = 0
        seqs = self._sequences(msg["seqs"])
        max_b = max(len(seqs), msg.get("max_batch") or 0)
        # Room for the speculation and every branch past the longest trunk.
        self.drafter.start(seqs, msg["capacity"] + (K_MAX + 1) * (MAX_BRANCHES + 1), max_b)
        # Seeded sampled batches get a plan of their own that never changes, so they replay.
        seeded = any(s.params.seed is not None and not s.params.greedy for s in seqs)
        key = (len(seqs), msg.get("k"), str(msg["fanout"]), seeded)
        if key not in self._plans:
            self._plans[key] = self._plan(msg, seqs, key)
        k, fanout, budget = self._plans[key]
        observed = Observed()
        # Fresh estimates per batch, so a seeded request replays the same fan-out decisions.
        self.tracker = AcceptanceTracker()
        rows = len(seqs)
        entries = self.drafter.jit(list(range(rows)), k, fanout)
        self._reply(max_b, k, [entries[b] for b in range(rows)], [False] * rows, {"k": k, "branches": budget})
        last_arrival, last_backup_s = None, 0.0
        while True:
            buf = outcome_buffer(max_b)
            work = self.channel.recv_async(buf)
            # Branches are always drafted to the planned depth: the plan already weighed a longer
            # draft against the target's wait, and timing-independent drafting keeps seeds exact.
            stats = self.drafter.draft_branches(k, fanout)
            idle_start = time.perf_counter()
            work.wait()
            arrival = time.perf_counter()
            stats["idle_s"] = arrival - idle_start
            cmd, keep, outcomes, verify_us, added = decode_outcomes(buf)
            if cmd == CMD_END:
                self._replan(key, observed)
                return
            if len(keep) < len(self.drafter.seqs):  # a zeroed buffer: the engine died mid-round
                raise ConnectionError("the engine's outcome message was cut short: the link closed")
            kept = sum(keep)
            # Outcome to outcome, past the last backup and the longer side: the round's fixed cost.
            overhead = None if last_arrival is None else (
                arrival - last_arrival - last_backup_s - max(verify_us / 1e6, stats["glue_s"] + stats["branch_s"]))
            observed.record(verify_us / 1e6, stats["glue_s"], stats["branch_s"], k, outcomes[:kept],
                            [len(s.speculation) for b, s in enumerate(self.drafter.seqs) if keep[b]], overhead)
            self.rounds += 1
            if self.cfg.fault_after_rounds is not None and self.rounds >= self.cfg.fault_after_rounds:
                if self.in_process:
                    raise WorkerStopped()
                os._exit(17)
            if not all(keep):
                self.drafter.keep_rows([b for b, flag in enumerate(keep) if flag])
            if added:
                # Joining rows verified an empty speculation (a plain AR step): their outcome is
                # (0, t) after the trunk sent now, and their first speculation is a backup.
                self.drafter.add(self._sequences(self.channel.recv_obj()["seqs"]), whole=True)
            found, missed = [], []
            for b, (n, t) in enumerate(outcomes):
                s = self.drafter.seqs[b]
                self._track(s, n, t, fanout)
                entry = self.drafter.take(b, n, t)
                found.append(entry)
                if entry is None:
                    missed.append(b)
            backup_start = time.perf_counter()
            backup = msg["backup"] if msg["backup"] != "auto" else ("neural" if len(outcomes) <= 2 else "ngram")
            for b, entry in self._backup(missed, k, fanout, backup).items():
                found[b] = entry
            stats["backup_s"] = time.perf_counter() - backup_start
            last_arrival, last_backup_s = arrival, stats["backup_s"]
            if msg["fanout"] == "geometric":
                fanout = self._fanout("geometric", k, budget)
            stats.update(k=k, branches=sum(fanout))
            self._reply(max_b, k, found, [b not in missed for b in range(len(found))], stats)
            # Re-plan within the batch too, between one reply and the next round's drafting (so
            # each speculation and its q keep the K they were drafted with): a one-prompt run
            # would otherwise keep the plan it started on, with the acceptance prior's guess.
            if observed.rounds >= IN_BATCH_REPLAN_ROUNDS:
                if self._replan(key, observed):
                    k, fanout, budget = self._plans[key]
                observed = Observed()

    def _track(self, s: DraftSequence, n: int, t: int, fanout: list[int]) -> None:
        kb = len(s.speculation)
        self.tracker.update(n, kb)
        same_n = [g for m, g in s.guesses if m == n]
        if same_n:
            self.tracker.record_guess(same_n.index(t) if t in same_n else None, len(same_n))

    def _backup(self, missed: list[int], k: int, fanout: list[int], kind: str) -> dict[int, CacheEntry]:
        if not missed:
            return {}
        if kind == "neural":
            return self.drafter.jit(missed, k, fanout)
        if kind == "ngram":
            return {b: CacheEntry(ngram_propose(self.drafter.seqs[b].trunk, k), None) for b in missed}
        return {b: CacheEntry([], None) for b in missed}  # "none": a plain AR step

    def _reply(self, max_b: int, k: int, entries: list[CacheEntry], hit: list[bool], stats: dict) -> None:
        for s, e in zip(self.drafter.seqs, entries):
            s.speculation = list(e.tokens)
        has_q = [e.q is not None for e in entries]
        reply = Reply([e.tokens for e in entries], hit, None, has_q, stats)
        head, stat_tensor = encode_reply(reply, max_b)
        self.channel.send(head)
        self.channel.send(stat_tensor)
        q = pack_q([e.q for e in entries], k, self.cfg.target_vocab)
        if q is not None:
            self.channel.send(q)

    # ---- budget ---------------------------------------------------------------------------------

    def _replan(self, key: tuple, observed: Observed) -> bool:
        """Re-plan this batch shape on the timings its rounds measured; whether the plan changed.

        Only automatic plans change, and never those of seeded sampled batches: their draws depend
        on K and the fan-out, and a seeded request must replay.
        """
        seeded = key[-1]
        if seeded or key not in self._tables or observed.rounds < MIN_ROUNDS_TO_REPLAN:
            return False
        tables, fan_spec, fixed_fan = self._tables[key]
        k, _, branches = self._plans[key]
        seen = self._seen[key] = self._seen.get(key, Seen()).with_rounds(observed, k, branches)
        scaled = observed.rescaled(tables, k, branches, seen)
        accept = self._accept_rate(key, observed)
        timings = (scaled.verify_s, scaled.glue_s, scaled.step_s, accept)
        plan = choose_plan(*timings, overhead_s=scaled.overhead_s)
        _, now_score = score_plan(k, branches, *timings, overhead_s=scaled.overhead_s)
        _, new_score = score_plan(plan.k, plan.branches, *timings, overhead_s=scaled.overhead_s)
        if new_score < now_score * (1 + REPLAN_MARGIN):
            return False  # not clearly better: two near-equal plans would otherwise alternate
        budget = plan.branches if fixed_fan is None else fixed_fan * (plan.k + 1)
        log.info("budget re-planned on measured rounds: K=%d, %d branches (was K=%d, %d; %.1f against %.1f "
                 "tokens/s expected at acceptance %.2f)", plan.k, budget, k, branches, new_score, now_score, accept)
        fanout = self._fanout(fan_spec, plan.k, budget)
        self._plans[key] = (plan.k, fanout, sum(fanout))
        return True

    def _accept_rate(self, key: tuple, observed: Observed) -> float:
        """Per-token acceptance of these rounds, the earlier ones of this batch shape (decayed) and
        the prior: one prompt's rounds alone would swing the plan from one prompt to the next, and
        a long K chosen on a few easy rounds costs more than a short one."""
        accepted, trials = self._acceptance.get(key, (ACCEPT_PRIOR * ACCEPT_PRIOR_TRIALS, ACCEPT_PRIOR_TRIALS))
        accepted, trials = accepted + observed.accepted, trials + observed.trials
        self._acceptance[key] = (ACCEPT_MEMORY * accepted, ACCEPT_MEMORY * trials)
        return accepted / trials

    def _fanout(self, fan_spec, k: int, budget: int) -> list[int]:
        if fan_spec == "geometric":
            fanout = self.tracker.fanout(k, budget)
        else:
            fanout = flat_fanout(k, max(1, budget // (k + 1)))
        return cap_fanout(fanout, self.cfg.target_vocab)

    def _plan(self, msg: dict, seqs: list[DraftSequence], key: tuple) -> tuple[int, list[int], int]:
        """K, the fan-out and its sum B: given explicitly, or chosen from measured latencies."""
        fan_spec = msg["fanout"]  # an explicit list, a flat F per outcome (int), "flat" or "geometric"
        if isinstance(fan_spec, list):
            k = len(fan_spec) - 1
            validate_fanout(fan_spec, k)
            return k, list(fan_spec), sum(fan_spec)
        k = msg.get("k")
        per_outcome = fan_spec if isinstance(fan_spec, int) else None
        verify = msg.get("verify_s") or {}
        if verify and (k is None or per_outcome is None):
            if k is not None:
                verify = {k: verify[k]} if k in verify else {}
        if verify and (k is None or per_outcome is None):
            tables = Tables(verify, self._glue_times(verify, len(seqs)), self._branch_times(len(seqs)))
            self._tables[key] = (tables, fan_spec, per_outcome)
            plan = choose_plan(tables.verify_s, tables.glue_s, tables.step_s)
            log.info("budget: K=%d, %d branches (draft %.0f ms vs verify %.0f ms)",
                     plan.k, plan.branches, plan.draft_s * 1e3, plan.verify_s * 1e3)
            k = plan.k
            budget = plan.branches if per_outcome is None else per_outcome * (k + 1)
        else:
            k = k or 3
            budget = (per_outcome or 1) * (k + 1)
        fanout = self._fanout(fan_spec, k, budget)
        return k, fanout, sum(fanout)

    def _time_feed(self, rows: list[list[int]], repeats: int = TIMING_REPEATS) -> float:
        """Seconds of a feed: the fastest of `repeats` (a busy neighbour only ever adds time)."""
        cache = self.drafter.cache
        lengths = list(cache.lengths)
        times = []
        for _ in range(repeats):
            self.runner.sync()
            start = time.perf_counter()
            self.runner.feed(cache, rows, all_logits=True)
            self.runner.sync()
            times.append(time.perf_counter() - start)
            for b, n in enumerate(lengths):
                cache.truncate(b, n)
        return min(times)

    def _glue_times(self, verify: dict, batch: int) -> dict[int, float]:
        def measure():
            self._time_feed([[0]] * batch, repeats=1)  # warm-up
            return {k: self._time_feed([[0] * (k + 1)] * batch) for k in verify}

        return kept_timings(self.draft_key, {"kind": "glue", "batch": batch, "ks": sorted(verify)}, measure)

    def _branch_times(self, batch: int) -> dict[int, float]:
        # A batched branch step costs about what a feed of that many tokens per row costs.
        if not self._step_times:
            what = {"kind": "branch", "batch": batch, "widths": list(STEP_WIDTHS)}
            self._step_times = kept_timings(self.draft_key, what, lambda: {
                width: self._time_feed([[0] * width] * batch) for width in STEP_WIDTHS})
        return dict(self._step_times)


def main(argv: list[str] | None = None) -> int:
    """`python -m saguaro.ssd.worker --config JSON`: how the engine starts a worker (or a person
    starts one on another host, pointing it at the engine's address)."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="saguaro-worker")
    parser.add_argument("--config", required=True, help="WorkerConfig fields as JSON")
    args = parser.parse_args(argv)
    return worker_main(WorkerConfig(**json.loads(args.config)))


def _generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    if seed is None:
        g.manual_seed(int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1))
    else:
        g.manual_seed((seed * 1_000_003 + DRAFT_SEED_SALT) & ((1 << 63) - 1))
    return g


if __name__ == "__main__":
    raise SystemExit(main())
