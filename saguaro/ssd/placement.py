"""Pinning a process to CPU cores, with a matching thread count.

Every thread of the process is moved, since torch's thread pool may already exist.
"""

from __future__ import annotations

import logging
import os

import torch

from saguaro.errors import InvalidRequestError

log = logging.getLogger(__name__)


def parse_cores(spec) -> list[int] | None:
    """'0,2-3' or [0, 2, 3] -> [0, 2, 3]; None stays None."""
    if spec is None:
        return None
    if isinstance(spec, str):
        cores = []
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            try:
                cores += list(range(int(lo), int(hi or lo) + 1))
            except ValueError:
                raise InvalidRequestError(f"bad core list {spec!r}; use e.g. '0' or '0,2-3'") from None
        spec = cores
    cores = sorted(set(int(c) for c in spec))
    count = os.cpu_count() or 1
    if not cores or any(c < 0 or c >= count for c in cores):
        raise InvalidRequestError(f"cores {cores} are not available on this machine (it has {count})")
    return cores


def pin_process(cores: list[int] | None) -> None:
    if not cores:
        return
    if not hasattr(os, "sched_setaffinity"):
        log.warning("core pinning is not supported on this platform; ignoring %s", cores)
        return
    for tid in os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else [0]:
        try:
            os.sched_setaffinity(int(tid), cores)
        except OSError:
            pass
    torch.set_num_threads(len(cores))


def split_cores(target: list[int] | None, draft: list[int] | None) -> tuple[list[int] | None, list[int] | None]:
    """Default SSD placement on CPU: the target and the worker never share cores unless told to.

    Two processes each running a full thread pool on the same cores slow both down many times
    over, so an unspecified side gets the cores the other side does not use.
    """
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if len(allowed) < 2:
        return target or allowed, draft or allowed
    if target is None and draft is None:
        half = len(allowed) - len(allowed) // 2
        return allowed[:half], allowed[half:]
    if target is None:
        rest = [c for c in allowed if c not in draft]
        return rest or allowed, draft
    if draft is None:
        rest = [c for c in allowed if c not in target]
        return target, rest or allowed
    return target, draft
