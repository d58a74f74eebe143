"""Hold Ctrl-C (and a Python-handled SIGTERM) while an exchange with the draft worker runs.

A KeyboardInterrupt raised at an arbitrary bytecode can cut a message in half and put the link out
of step, so the first such signal is only recorded and its handler runs once the block is left; a
second one runs at once (the user insists: the exchange, and with it the link, is given up).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

log = logging.getLogger(__name__)
HELD = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def held_signals(signums=HELD):
    """Defer the Python handlers of `signums` to the end of the block. Signals whose handler is
    not Python code (SIG_DFL, SIG_IGN) are left alone, and so is every thread but the main one,
    where Python runs no handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: h for s in signums if callable(h := signal.getsignal(s))}
    held: list[tuple[int, object]] = []

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)

    def hold(signum, frame) -> None:
        if held:
            held.clear()
            restore()
            previous[signum](signum, frame)
            return
        held.append((signum, frame))
        log.info("interrupt: finishing the exchange with the draft worker first")

    for s in previous:
        signal.signal(s, hold)
    try:
        yield
    finally:
        restore()
        if held:
            signum, frame = held[0]
            previous[signum](signum, frame)
