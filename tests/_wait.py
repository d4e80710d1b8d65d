"""Waiting for a condition in a test, with a time-out that is only a hang guard."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def until(condition: Callable[[], Any], what: str, timeout_s: float = 120.0, poll_s: float = 0.01) -> Any:
    """Poll ``condition()`` until it returns something true, and return that.

    A fixed sleep before an assertion makes the assertion depend on how busy the machine is; a
    poll does not. ``timeout_s`` only stops a hung test: set it far beyond the expected time.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not reached within {timeout_s} s"
        time.sleep(poll_s)
