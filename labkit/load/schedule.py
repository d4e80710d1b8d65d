"""When each request is meant to go, and waking up on time to send it.

Owns the open-loop arrival processes (:func:`_arrival_offsets`), the Linux timerfd the scheduler
sleeps on (:class:`_TimerFd`) and the short scheduler slice it may ask for (:func:`_set_sched_slice`).
Private to :mod:`labkit.load`; :class:`~labkit.load.runner._Runner` uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

from labkit.load.config import LoadConfig

# Without a timerfd (not Linux), the scheduler sleeps on the event loop's timer until this long
# before the intended send time, then yields to the loop (I/O keeps flowing) until the time has
# come: the loop's timers have millisecond granularity, the lag target is under a millisecond.
_SPIN_S = 0.002
# Scheduler slice asked for the loop thread during a run (see _set_sched_slice).
_SLICE_NS = 200_000


# --------------------------------------------------------------------------- arrivals
def _arrival_offsets(config: LoadConfig) -> Iterator[tuple[int, float]]:
    """Yield ``(index, offset_s)`` of every open-loop request, warm-up first.

    Each request advances an "operational clock" by a unit-mean increment (1 for constant,
    Exp(1) for Poisson, Gamma(k, 1/k) for gamma); the offset is the time at which the
    cumulative rate reaches that clock, so a ramp only changes the mapping.
    """
    rng = random.Random(config.seed)
    kind, k = config.arrival, config.burstiness
    r0 = float(config.rate_rps)  # type: ignore[arg-type]
    r1 = float(config.ramp_to_rps) if config.ramp_to_rps is not None else r0
    w, n_max, dur = config.warmup_requests, config.num_requests, config.duration_s

    def step() -> float:
        if kind == "constant":
            return 1.0
        if kind == "poisson":
            return rng.expovariate(1.0)
        return rng.gammavariate(k, 1.0 / k)

    u = 0.0
    for i in range(w):  # warm-up at the start rate; the first request goes at once
        yield i, u / r0
        u += step()
    start = u / r0
    slope = (r1 - r0) / dur if (dur and r1 != r0) else 0.0
    m = 0
    u = 0.0
    while n_max is None or m < n_max:
        if slope == 0.0:
            t = u / r0
        else:  # invert r0 t + slope t^2 / 2 = u; constant r1 after the ramp
            t_ramp = cast(float, dur)  # slope != 0 only when dur is set
            u_ramp = r0 * t_ramp + slope * t_ramp * t_ramp / 2
            t = (-r0 + math.sqrt(r0 * r0 + 2 * slope * u)) / slope if u <= u_ramp else t_ramp + (u - u_ramp) / r1
        if dur is not None and t >= dur:
            return
        yield w + m, start + t
        m += 1
        u += step()


def _set_sched_slice(slice_ns: int) -> bool:
    """Ask Linux (EEVDF, 6.12+) for a scheduler slice of ``slice_ns`` for the calling thread.

    A short slice lets the kernel run this thread as soon as its timer fires instead of after
    the slice of whatever else runs on the core (about 3 ms by default): on a busy machine that
    is the difference between a schedule lag p99 of 0.1 ms and of 3 ms. It changes neither the
    thread's priority nor its share of the CPU and needs no privilege; 0 restores the default.
    Returns False where it is not supported (other systems, older kernels).
    """
    numbers = {"x86_64": 314, "aarch64": 274}  # sched_setattr
    import platform

    nr = numbers.get(platform.machine())
    if nr is None or not sys.platform.startswith("linux"):
        return False
    import ctypes  # only where the syscall exists
    import os

    class _SchedAttr(ctypes.Structure):
        _fields_ = [
            ("size", ctypes.c_uint32),
            ("policy", ctypes.c_uint32),
            ("flags", ctypes.c_uint64),
            ("nice", ctypes.c_int32),
            ("priority", ctypes.c_uint32),
            ("runtime", ctypes.c_uint64),
            ("deadline", ctypes.c_uint64),
            ("period", ctypes.c_uint64),
            ("util_min", ctypes.c_uint32),
            ("util_max", ctypes.c_uint32),
        ]

    try:
        if os.sched_getscheduler(0) != os.SCHED_OTHER:
            return False  # leave real-time or batch policies alone
        attr = _SchedAttr(
            size=ctypes.sizeof(_SchedAttr),
            policy=os.SCHED_OTHER,
            nice=os.getpriority(os.PRIO_PROCESS, 0),
            runtime=slice_ns,
        )
        return ctypes.CDLL(None, use_errno=True).syscall(nr, 0, ctypes.byref(attr), 0) == 0
    except (OSError, AttributeError):
        return False


class _TimerFd:
    """A Linux timerfd armed at absolute CLOCK_MONOTONIC times (``time.perf_counter()``).

    The event loop's own timers have millisecond granularity; a timerfd wakes the loop within
    tens of microseconds of the intended time without spinning (a spinning client is a CPU hog
    that the kernel preempts for milliseconds on a shared machine). ctypes over libc, because
    ``os.timerfd_create`` only exists from Python 3.13. :meth:`create` returns None where
    timerfd is unavailable (not Linux); the scheduler then uses the loop's timers.
    """

    def __init__(
        self,
        libc: Any,
        fd: int,
        spec: Any,
        loop: asyncio.AbstractEventLoop,
        callback: Callable[[], None],
        byref: Callable[[Any], Any],
    ) -> None:
        self.libc, self.fd, self.spec, self.loop, self.callback = libc, fd, spec, loop, callback
        self.settime, self.spec_ref = libc.timerfd_settime, byref(spec)
        loop.add_reader(fd, self._ready)

    @classmethod
    def create(cls, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> _TimerFd | None:
        if not sys.platform.startswith("linux"):
            return None
        import ctypes  # only where a timerfd can exist

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.timerfd_create(1, 0o4000 | 0o2000000)  # CLOCK_MONOTONIC, NONBLOCK | CLOEXEC
        except (OSError, AttributeError):
            return None
        if fd < 0 or time.get_clock_info("perf_counter").implementation != "clock_gettime(CLOCK_MONOTONIC)":
            return None

        class _Spec(ctypes.Structure):
            _fields_ = [
                ("i_sec", ctypes.c_long),
                ("i_nsec", ctypes.c_long),
                ("v_sec", ctypes.c_long),
                ("v_nsec", ctypes.c_long),
            ]

        with contextlib.suppress(OSError, AttributeError):  # a finer timer slack for this thread
            libc.prctl(29, 1000, 0, 0, 0)  # PR_SET_TIMERSLACK, 1 us (default 50 us)
        try:
            return cls(libc, fd, _Spec(), loop, callback, ctypes.byref)
        except (NotImplementedError, OSError):  # a loop without add_reader
            import os

            os.close(fd)
            return None

    def arm(self, when_s: float) -> None:
        sec = int(when_s)
        self.spec.v_sec, self.spec.v_nsec = sec, max(1, int((when_s - sec) * 1e9))
        self.settime(self.fd, 1, self.spec_ref, None)  # TFD_TIMER_ABSTIME

    def _ready(self) -> None:
        import os

        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 8)
        self.callback()

    def close(self) -> None:
        import os

        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.fd)
        with contextlib.suppress(OSError):
            os.close(self.fd)
