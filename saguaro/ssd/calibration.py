"""SSD's start-up timings, kept per machine, model and kernel path so that a second start skips them.

SSD chooses K and the speculation cache from measured latencies (saguaro.ssd.budget): the engine
times the target's verifications, the worker the draft's glue and branch steps, about 5 s on 2
cores before the first token. They are a property of the model on this machine, so they are kept
in the cache folder (`calibration/`), one small JSON file per key. The key holds everything they
depend on: the model's packed-cache key (its source, dtype, quantization, kernel path, torch and
loading code; saguaro.loading.packed_cache), the host, its CPU flags, the cores and threads this
process runs on, and what was timed. A change in any of them is a miss, so they are measured
again; the rounds re-plan from what they measure anyway.

Models with no packed-cache key (random weights, hub ids, CUDA) are timed on every start. A cache
that cannot be written costs only the timing. SAGUARO_CALIBRATION=0 always measures.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
from pathlib import Path
from typing import Callable

import torch

from saguaro.cache_root import cache_dir

log = logging.getLogger(__name__)
CALIBRATION_ENV = "SAGUARO_CALIBRATION"
FOLDER = "calibration"
VERSION = 1  # of what the timings mean; a change makes every kept one a miss


def machine() -> dict:
    """What timings depend on besides the model: the host, its CPU and this process's share of it."""
    from saguaro.quant.native.build import cpu_features

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"host": platform.node(), "cpu": hashlib.sha256(cpu_features().encode()).hexdigest()[:16],
            "cores": cores, "threads": torch.get_num_threads()}


def path_for(model_key: str, what: dict) -> Path:
    fields = {"version": VERSION, "model": model_key, "machine": machine(), "what": what}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir() / FOLDER / f"{digest}.json"


def enabled() -> bool:
    return os.environ.get(CALIBRATION_ENV, "1").strip() not in ("0", "false", "no", "off")


def kept_timings(model_key: str | None, what: dict, measure: Callable[[], dict[int, float]]) -> dict[int, float]:
    """{int: seconds}: kept from an earlier start with the same key, else `measure()`, then kept."""
    if model_key is None or not enabled():
        return measure()
    path = path_for(model_key, what)
    try:
        kept = {int(k): float(v) for k, v in json.loads(path.read_text())["seconds"].items()}
        log.info("start-up timings of %s from %s", what.get("kind", "the model"), path)
        return kept
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # unreadable: measured again
        log.info("ignoring the kept start-up timings in %s (%s)", path, e)
    seconds = measure()
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"what": what, "seconds": seconds}))
        os.replace(tmp, path)
    except OSError as e:  # read-only or full: the next start measures again
        log.debug("cannot keep the start-up timings in %s: %s", path, e)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return seconds
