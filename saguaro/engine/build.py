"""Loads what an engine runs: the target, the tokenizer and the decoding strategy, placed on cores.

The mode is chosen once here; every engine method is the same for AR, SD and SSD.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from saguaro.engine.runner import ModelRunner
from saguaro.errors import InvalidRequestError, UnsupportedEnvironmentError
from saguaro.loading.bundled import DEFAULT_DRAFT, DEFAULT_TARGET
from saguaro.loading.loader import load_model
from saguaro.model.config import ModelConfig
from saguaro.ssd.placement import parse_cores, pin_process, split_cores
from saguaro.strategies.base import Strategy
from saguaro.strategies.factory import NGRAM, StrategyOptions, build_strategy, start_worker
from saguaro.tokenizer import Tokenizer


@dataclass
class Parts:
    target: ModelRunner
    strategy: Strategy
    tokenizer: Tokenizer
    config: ModelConfig
    options: StrategyOptions
    quantization: object = None


def build_parts(
    target: str = DEFAULT_TARGET,
    draft: str | None = None,
    mode: str = "ar",
    k: int | None = None,
    dtype: str = "auto",
    device: str = "cpu",
    threads: int | None = None,
    target_cores=None,
    draft_cores=None,
    draft_device: str | None = None,
    fanout="flat",
    saguaro_c: float = 1.0,
    backup: str = "auto",
    worker_timeout: float = 30.0,
    fault_after_rounds: int | None = None,
    draft_head_tokens: int | None = None,
    ssd_worker: str = "auto",
    quantize_target: str = "auto",
    quantize_draft: str = "auto",
    static_shapes: bool | None = None,
) -> Parts:
    """`target_cores` pins the engine (the whole of it in AR and SD); `draft_cores` and
    `draft_device` place SSD's draft worker. See StrategyOptions for the SSD knobs.
    `quantize_target` / `quantize_draft`: auto (a GGUF at about its own precision, a float
    checkpoint as is), none, int8 or int4 weight-only kernels on CPU (saguaro.quant).
    `static_shapes`: capture-ready forwards (bucketed batch and width, attention over the whole
    capacity; saguaro.engine.runner). Default: on CUDA only; on CPU they measured slower.
    Bad values raise InvalidRequestError (or UnsupportedEnvironmentError for a device kind
    this build cannot run) before anything loads."""
    target = _model_ref(target, "target")
    draft = None if draft is None else _model_ref(draft, "draft")
    if not isinstance(mode, str):
        raise InvalidRequestError(f"mode must be a string (ar, sd or ssd), got {mode!r}")
    if not isinstance(dtype, (str, torch.dtype)):
        raise InvalidRequestError(f"dtype must be a string or a torch.dtype, got {dtype!r}")
    check_device(device, "device")
    if draft_device is not None:
        check_device(draft_device, "draft_device")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool)):
        raise InvalidRequestError(f"threads must be an integer >= 1, got {threads!r}")
    if static_shapes is None:
        static_shapes = str(device).startswith("cuda")
    elif not isinstance(static_shapes, bool):
        raise InvalidRequestError(f"static_shapes must be true, false or None (auto), got {static_shapes!r}")
    if threads is not None:
        if threads < 1:
            raise InvalidRequestError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    cores = parse_cores(target_cores)
    draft_cores = parse_cores(draft_cores)
    if mode == "ssd" and ssd_worker != "thread" and (draft_device or device) == "cpu" and str(device) == "cpu":
        cores, draft_cores = split_cores(cores, draft_cores)
    options = StrategyOptions(
        mode=mode, k=k, draft_is_ngram=draft == NGRAM,
        draft_cores=tuple(draft_cores) if draft_cores else None, draft_device=draft_device,
        fanout=fanout, saguaro_c=saguaro_c, backup=backup, worker_timeout=worker_timeout,
        fault_after_rounds=fault_after_rounds, draft_head_tokens=draft_head_tokens, ssd_worker=ssd_worker,
        draft_quantize=quantize_draft, static_shapes=static_shapes,
    )
    pin_process(cores)
    if options.needs_draft_model and draft is None:
        draft = DEFAULT_DRAFT if target == DEFAULT_TARGET else None
        if draft is None:
            raise InvalidRequestError(f"mode {mode!r} needs a draft model (draft=...)")
    # SSD's worker loads the draft on its own cores while this process loads the target.
    worker = start_worker(options, draft, device, dtype) if options.mode == "ssd" else None
    try:
        loaded = load_model(target, device=device, dtype=dtype, quantize=quantize_target)
        runner = ModelRunner(loaded.decoder, static_shapes=static_shapes)
        strategy = build_strategy(options, runner, loaded.tokenizer, draft, device, dtype, worker,
                                  target_key=loaded.cache_key)
    except BaseException:  # a bad target, or Ctrl-C: no worker is left behind
        if worker is not None:
            worker.close()
        raise
    return Parts(runner, strategy, loaded.tokenizer, loaded.config, options, loaded.quantization)


def _model_ref(ref, what: str) -> str:
    if isinstance(ref, os.PathLike):
        ref = os.fspath(ref)
    if not isinstance(ref, str) or not ref:
        raise InvalidRequestError(f"{what} must be a model reference (a non-empty string or path), got {ref!r}")
    return ref


DEVICE_KINDS = ("cpu", "cuda")


def check_device(device, what: str = "device") -> torch.device:
    """`device` as a torch.device of a kind Saguaro runs (cpu, cuda[:N]); a clear error otherwise."""
    if not isinstance(device, (str, torch.device)):
        raise InvalidRequestError(f"{what} must be a string such as cpu or cuda:0, got {device!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise InvalidRequestError(f"{what} {device!r} is not a device; use cpu or cuda[:N]") from None
    if dev.type not in DEVICE_KINDS:
        raise UnsupportedEnvironmentError(f"{what} {device!r}: Saguaro runs on cpu or cuda[:N] only")
    return dev
