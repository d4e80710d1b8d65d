"""The per-file budget of the checks: a time limit and a work limit, checked as the work goes.

Owns: :class:`Budget`, :class:`BudgetExceeded`, :func:`budget` (a context manager that makes a
budget the current one) and :func:`tick`, which every loop over a log's data calls with the
number of items it is about to process. A check that runs out of budget raises
:class:`BudgetExceeded`; the grader turns it into a ``check_budget_exceeded`` finding on that
file and goes on with the next file.

The checks are linear in the size of a log and a log is at most ``limits.max_log_bytes``, so a
genuine log never comes near either limit; the budget is what keeps a file written to be slow
from holding up the class.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__: list[str] = []  # used inside labkit.grade


class BudgetExceeded(Exception):  # noqa: N818 - reads as a finding, not an error of the grader
    """A check of one file ran out of its time or work budget."""


@dataclass
class Budget:
    """Seconds and work units one file may use.

    Parameters
    ----------
    seconds : float
        Wall-clock time allowed from the creation of the budget.
    work : int
        Items (samples, summaries, keys ...) the checks may process in all.
    """

    seconds: float
    work: int
    started: float = field(default_factory=time.monotonic)
    used: int = 0

    def tick(self, items: int = 1) -> None:
        """Count items of work; raise :class:`BudgetExceeded` when a limit is passed."""
        self.used += max(int(items), 0)
        if self.used > self.work:
            msg = f"more than {self.work:,} items of work (limits.max_work_per_file)"
            raise BudgetExceeded(msg)
        if time.monotonic() - self.started > self.seconds:
            msg = f"more than {self.seconds:g} s (limits.max_seconds_per_file)"
            raise BudgetExceeded(msg)


_CURRENT: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("labkit_grade_budget", default=None)


@contextlib.contextmanager
def budget(seconds: float, work: int) -> Iterator[Budget]:
    """Make a fresh :class:`Budget` the current one for the checks inside the block."""
    current = Budget(float(seconds), int(work))
    token = _CURRENT.set(current)
    try:
        yield current
    finally:
        _CURRENT.reset(token)


def active_budget() -> Budget | None:
    """The current budget, or None outside :func:`budget`."""
    return _CURRENT.get()


def tick(items: int = 1) -> None:
    """Count work against the current budget (no-op outside :func:`budget`)."""
    current = _CURRENT.get()
    if current is not None:
        current.tick(items)
