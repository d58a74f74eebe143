"""llama.cpp's own HTTP server (OpenAI-compatible, SSE streaming) for `saguaro bench serve`.

Runs inside the xllamacpp benchmark venv (stdlib + xllamacpp only; saguaro is not installed
there), as `python llamacpp_server.py SETTINGS_JSON`. `xllamacpp.Server` loads the model and
serves HTTP from its own threads while this process waits for SIGTERM. Greedy sampling and the
token budget come with each request, as they do for `saguaro serve`.
"""

from __future__ import annotations

import json
import signal
import sys
import threading


def params(settings: dict):
    import xllamacpp as xlc

    p = xlc.CommonParams()
    p.model.path = settings["model"]
    p.hostnames = ["127.0.0.1"]
    p.port = settings["port"]
    p.n_parallel = settings["parallel"]  # one slot per concurrent request, as saguaro's max_batch rows
    p.n_ctx = settings["parallel"] * settings["ctx_per_slot"]
    p.cache_ram_mib = 0  # no host-side prompt cache: Saguaro has none either
    for cpu in (p.cpuparams, p.cpuparams_batch):
        cpu.n_threads = settings["threads"]
    return xlc, p


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: llamacpp_server.py SETTINGS_JSON", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    xlc, p = params(json.loads(argv[0]))
    server = xlc.Server(p)  # returns once the model is loaded and the port listens
    print(f"llama.cpp {getattr(xlc, '__version__', '?')} serving on {server.listening_address}", file=sys.stderr,
          flush=True)
    while not stop.wait(1.0):
        pass
    del server  # stops the HTTP threads and frees the model
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
