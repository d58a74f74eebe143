"""llama.cpp's rows in the startup suite: a fresh process of the benchmark venv's Python that loads
the same GGUF and answers once (saguaro.bench.llamacpp's one-shot mode), timed like Saguaro's."""

from __future__ import annotations

import json
import logging

from saguaro.loading.bundled import gguf_path

log = logging.getLogger(__name__)


def llamacpp_config(args, cache: str, tokens: int) -> dict:
    """One llama.cpp run of the startup suite; llama.cpp keeps no cache, so `cache` only names the
    passes it shares its machine time with."""
    from saguaro.bench.llamacpp import oneshot_command

    cmd = oneshot_command(gguf_path(args.target), args.prompt, tokens, args.llamacpp_threads)
    return {"name": "llama.cpp", "engine": "llamacpp", "cache": cache, "tokens": tokens, "cmd": cmd}


def llamacpp_milestones(run) -> dict:
    """The child's stamps (its clock is the parent's) as the Saguaro milestones' columns: imports when
    xllamacpp was imported, target when the model was loaded, then the answer and the exit; decode_s
    from llama.cpp's own timings. Empty where the child printed no JSON line."""
    lines = run.stdout.strip().splitlines()
    try:
        child = json.loads(lines[-1])
        stamps, row = child["stamps"], child["row"]
    except (IndexError, KeyError, TypeError, json.JSONDecodeError):
        log.warning("llama.cpp's one-shot run printed no stamps: %r", run.stdout[-300:])
        return {"milestones": {"exit": run.seconds}}
    since = {name: stamps[key] - run.started for name, key in
             (("imports", "imported"), ("target", "loaded"), ("generated", "generated")) if key in stamps}
    out = {"milestones": dict(since, exit=run.seconds), "text": row.get("text")}
    if row.get("seconds") is not None:
        out["decode_s"] = row["seconds"]
    return out
