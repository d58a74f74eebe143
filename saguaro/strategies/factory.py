"""Builds the decoding strategy chosen at construction from validated options.

The modes are "ar", "sd" and "ssd"; the draft is a model reference or "ngram".
"""

from __future__ import annotations

from dataclasses import dataclass

from saguaro.engine.runner import ModelRunner
from saguaro.errors import InvalidRequestError
from saguaro.model.head_subset import draft_head_tokens
from saguaro.quant.transform import check_scheme
from saguaro.tokenizer import Tokenizer

MODES = ("ar", "sd", "ssd")
NGRAM = "ngram"


BACKUPS = ("auto", "neural", "ngram", "none")
WORKER_KINDS = ("auto", "process", "thread")


@dataclass(frozen=True)
class StrategyOptions:
    mode: str = "ar"
    k: int | None = None  # lookahead; None picks the mode's default (SSD: from the budget)
    draft_is_ngram: bool = False
    draft_cores: tuple[int, ...] | None = None  # SSD: the worker's CPU cores
    draft_device: str | None = None  # SSD: the worker's device ("cpu", "cuda:1")
    fanout: str | int | tuple[int, ...] = "flat"  # "flat", "geometric", F per outcome, or F_0..F_K
    saguaro_c: float = 1.0
    backup: str = "auto"
    worker_timeout: float = 30.0
    fault_after_rounds: int | None = None  # testing only: the worker dies after this many rounds
    draft_head_tokens: int | None = None  # the draft's LM head keeps this many frequent tokens (None: by device; 0: all)
    ssd_worker: str = "auto"  # "process", "thread" (in-process, own CUDA stream), or auto: thread on a shared GPU
    draft_quantize: str = "auto"  # the draft's weights: auto, none, int8 or int4 (saguaro.quant)
    static_shapes: bool = False  # capture-ready forwards for the draft too (saguaro.engine.runner)

    def __post_init__(self):
        for name in ("saguaro_c", "worker_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise InvalidRequestError(f"{name} must be a number, got {value!r}")
        for name in ("draft_head_tokens", "fault_after_rounds"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise InvalidRequestError(f"{name} must be an integer or None, got {value!r}")
        if not isinstance(self.mode, str) or self.mode not in MODES:
            raise InvalidRequestError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.k is not None and not (isinstance(self.k, int) and not isinstance(self.k, bool) and 1 <= self.k <= 16):
            raise InvalidRequestError(f"k must be an integer in 1..16, got {self.k!r}")
        if not 0 < self.saguaro_c <= 1:
            raise InvalidRequestError(f"saguaro_c must be in (0, 1], got {self.saguaro_c}")
        if self.backup not in BACKUPS:
            raise InvalidRequestError(f"backup must be one of {', '.join(BACKUPS)}, got {self.backup!r}")
        if self.draft_head_tokens is not None and self.draft_head_tokens < 0:
            raise InvalidRequestError("draft_head_tokens must be >= 0 (0 keeps the whole head)")
        if self.ssd_worker not in WORKER_KINDS:
            raise InvalidRequestError(f"ssd_worker must be one of {', '.join(WORKER_KINDS)}, got {self.ssd_worker!r}")
        if self.worker_timeout <= 0:
            raise InvalidRequestError("worker_timeout must be positive")
        object.__setattr__(self, "fanout", parse_fanout(self.fanout))
        object.__setattr__(self, "draft_quantize", check_scheme(self.draft_quantize))
        if self.mode == "ssd" and self.draft_is_ngram:
            raise InvalidRequestError("SSD needs a draft model; the n-gram drafter serves SD and SSD's backup")

    @property
    def needs_draft_model(self) -> bool:
        return self.mode != "ar" and not self.draft_is_ngram


def parse_fanout(spec):
    """'flat', 'geometric', '2' (F per outcome, 1..4) or '3,2,1,2' (F_0..F_K) -> a validated value."""
    if isinstance(spec, str) and spec in ("flat", "geometric"):
        return spec
    try:
        if isinstance(spec, str):
            parts = [int(p) for p in spec.split(",")]
            spec = parts[0] if len(parts) == 1 else tuple(parts)
        if isinstance(spec, int) and not isinstance(spec, bool) and 1 <= spec <= 4:
            return spec
        spec = tuple(int(f) for f in spec)
    except (TypeError, ValueError):
        raise InvalidRequestError(f"bad fan-out {spec!r}: use flat, geometric, F, or F_0,...,F_K") from None
    if len(spec) < 2 or len(spec) - 1 > 16 or any(f < 0 for f in spec) or not 1 <= sum(spec) <= 64:
        raise InvalidRequestError(
            f"bad fan-out {list(spec)}: need K + 1 non-negative entries (K in 1..16) summing to 1..64"
        )
    return spec


def build_strategy(opts: StrategyOptions, target: ModelRunner, tokenizer: Tokenizer, draft, device, dtype,
                   worker=None, target_key: str | None = None):
    """`worker`: SSD's draft worker from start_worker(), started before the target loaded;
    `target_key`: the target's packed-cache key, which keeps SSD's start-up timings (saguaro.ssd.calibration)."""
    from saguaro.strategies.ar import ARStrategy

    if opts.mode == "ar":
        return ARStrategy(target)
    if opts.mode == "sd":
        from saguaro.strategies.sd import SDStrategy

        drafter = _drafter(target, tokenizer, draft, device, dtype, draft_head_tokens(opts.draft_head_tokens, device),
                           opts.draft_quantize, opts.static_shapes)
        return SDStrategy(target, drafter, opts.k or 4)
    from saguaro.strategies.ssd import SSDStrategy

    client = worker or start_worker(opts, draft, device, dtype)
    client.attach(target.vocab_size, tokenizer)
    fanout = list(opts.fanout) if isinstance(opts.fanout, tuple) else opts.fanout
    return SSDStrategy(target, client, {"k": opts.k, "fanout": fanout, "backup": opts.backup}, target_key)


def start_worker(opts: StrategyOptions, draft: str, device, dtype):
    """SSD's draft worker, loading the draft from now on (attach() waits for it)."""
    import logging

    from saguaro.ssd.client import WorkerClient

    if opts.k is not None and isinstance(opts.fanout, tuple) and len(opts.fanout) != opts.k + 1:
        raise InvalidRequestError(f"fan-out {list(opts.fanout)} has {len(opts.fanout)} entries; K={opts.k} needs {opts.k + 1}")
    dtype_name = str(dtype).replace("torch.", "")
    draft_device = opts.draft_device or str(device)
    in_process = opts.ssd_worker == "thread" or (
        opts.ssd_worker == "auto" and draft_device.startswith("cuda") and _same_device(draft_device, device)
    )
    return WorkerClient(
        dict(
            host="127.0.0.1",
            draft=draft,
            dtype=dtype_name,
            device=draft_device,
            cores=list(opts.draft_cores) if opts.draft_cores else None,
            saguaro_c=opts.saguaro_c,
            fault_after_rounds=opts.fault_after_rounds,
            head_tokens=draft_head_tokens(opts.draft_head_tokens, draft_device),
            quantize=opts.draft_quantize,
            static_shapes=opts.static_shapes,
            log_level=logging.getLogger("saguaro").getEffectiveLevel(),
        ),
        timeout_s=opts.worker_timeout,
        in_process=in_process,
    )


def _same_device(a, b) -> bool:
    import torch

    a, b = torch.device(a), torch.device(b)
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def _drafter(target: ModelRunner, tokenizer: Tokenizer, draft: str, device, dtype, head_tokens=None, quantize="auto",
             static_shapes=False):
    if draft == NGRAM:
        from saguaro.drafters.prompt_lookup import NgramDrafter

        return NgramDrafter()
    from saguaro.drafters.model_drafter import ModelDrafter
    from saguaro.loading.loader import load_model

    loaded = load_model(draft, device=device, dtype=dtype, head_tokens=head_tokens, quantize=quantize, draft=True)
    check_same_tokenizer(tokenizer, loaded.tokenizer)
    if loaded.config.vocab_size < tokenizer.vocab_size:
        raise InvalidRequestError(
            f"the draft embeds {loaded.config.vocab_size} tokens but the tokenizer has {tokenizer.vocab_size}"
        )
    return ModelDrafter(ModelRunner(loaded.decoder, draft=True, static_shapes=static_shapes), target.vocab_size)


def check_same_tokenizer(target: Tokenizer, draft: Tokenizer) -> None:
    if target.fingerprint() != draft.fingerprint():
        raise InvalidRequestError("the draft's tokenizer differs from the target's; speculative modes need the same one")
