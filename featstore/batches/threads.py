"""The loaders' background threads (prefetch, block read-ahead, orders drawn ahead), each started with a
way to stop it, and all stopped and joined when the interpreter exits.

Python ends a daemon thread that reaches for the GIL once shutdown has begun with ``pthread_exit``. A
thread still inside the compiled core then unwinds through pybind11's GIL guard, a ``noexcept``
destructor, and the C++ runtime aborts the process ("terminate called without an active exception",
exit status 134): a script that stopped mid-epoch, or a rank that finished first, died instead of
exiting 0. ``atexit`` handlers run before that point, while daemon threads still run normally, so the
hook here stops every live thread and waits for it to leave the core.
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Callable
from typing import Any

JOIN_SECONDS = 10.0  # at exit, how long all threads together may take to finish their current call

_live: dict[threading.Thread, Callable[[], None]] = {}  # thread -> how to stop it
_lock = threading.Lock()


def start(target: Callable[..., Any], name: str, stop: Callable[[], None], args: tuple = ()) -> threading.Thread:
    """Start ``target(*args)`` on a daemon thread; ``stop()`` must make it return soon (it is called at exit).
    ``stop`` must not hold the thread's owner, so the owner can still be collected."""
    thread = threading.Thread(target=_run, args=(target, args), name=name, daemon=True)
    with _lock:
        _live[thread] = stop
    thread.start()
    return thread


def _run(target: Callable[..., Any], args: tuple) -> None:
    try:
        target(*args)
    finally:
        with _lock:
            _live.pop(threading.current_thread(), None)


def live() -> list[threading.Thread]:
    """The featstore threads running now."""
    with _lock:
        return list(_live)


def stop_all(timeout: float = JOIN_SECONDS) -> None:
    """Stop every live featstore thread and wait (up to ``timeout`` in all) for each to return."""
    with _lock:
        running = list(_live.items())
    for _thread, stop in running:
        stop()
    deadline = time.monotonic() + timeout
    for thread, _stop in running:
        if thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))


atexit.register(stop_all)
