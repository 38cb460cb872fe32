"""Named points in the write path where crash tests can SIGKILL the process (FEATSTORE_CRASH_AT=step[:n]);
with FEATSTORE_CRASH_RANK=r only the torchrun rank r (environment RANK) is killed."""

from __future__ import annotations

import os
import signal

STEPS = (
    "header-written",
    "file-created",
    "data-written",
    "data-synced",
    "blocks-checksummed",
    "manifest-temp-written",
    "manifest-temp-synced",
    "manifest-renamed",
    "manifest-dir-synced",
    "file-read-only",
)


_step, _remaining = "", 0


def arm(spec: str) -> None:
    """Kill at ``spec`` ('step' or 'step:n'; '' disarms): what FEATSTORE_CRASH_AT sets at import, for
    test harnesses that fork a writer from an already-imported process."""
    global _step, _remaining
    step, _, nth = spec.partition(":")
    _step, _remaining = step, int(nth) if nth.isdigit() and int(nth) > 0 else 1


def _rank_is_targeted() -> bool:
    """Under torchrun, FEATSTORE_CRASH_RANK=r arms only rank r (environment RANK)."""
    rank = os.environ.get("RANK", "0")
    return os.environ.get("FEATSTORE_CRASH_RANK", rank) == rank


arm(os.environ.get("FEATSTORE_CRASH_AT", "") if _rank_is_targeted() else "")


def crashpoint(step: str) -> None:
    """Kill this process with SIGKILL when it reaches the n-th occurrence of the configured step."""
    global _remaining
    if _step and step == _step:
        _remaining -= 1
        if _remaining == 0:
            os.kill(os.getpid(), signal.SIGKILL)
