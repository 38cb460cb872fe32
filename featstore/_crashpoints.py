"""Named points in the write path where crash tests can SIGKILL the process (FEATSTORE_CRASH_AT=step[:n]);
with FEATSTORE_CRASH_RANK=r only the torchrun rank r (environment RANK) is killed."""

from __future__ import annotations

import os
import signal

_spec = os.environ.get("FEATSTORE_CRASH_AT", "")
_step, _, _nth = _spec.partition(":")
_remaining = int(_nth) if _nth.isdigit() and int(_nth) > 0 else 1
if os.environ.get("FEATSTORE_CRASH_RANK", os.environ.get("RANK", "0")) != os.environ.get("RANK", "0"):
    _step = ""
STEPS = (
    "file-created",
    "data-written",
    "data-synced",
    "manifest-temp-written",
    "manifest-temp-synced",
    "manifest-renamed",
    "manifest-dir-synced",
)


def crashpoint(step: str) -> None:
    """Kill this process with SIGKILL when it reaches the n-th occurrence of the configured step."""
    global _remaining
    if _step and step == _step:
        _remaining -= 1
        if _remaining == 0:
            os.kill(os.getpid(), signal.SIGKILL)
