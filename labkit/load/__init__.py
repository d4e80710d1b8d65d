"""Async load generator for any OpenAI-compatible endpoint.

Owns: arrival processes, the request loop, timing, and the JSONL of :class:`RequestRecord`.

Clock: every ``*_s`` time in a record is ``time.perf_counter()`` of the load-generating
process (CLOCK_MONOTONIC on Linux), so records and telemetry samples share one clock.

How the timing is done, and why:

- **Open loop** (``constant``, ``poisson``, ``gamma``): every request has an *intended* send
  time fixed in advance by the arrival process. The scheduler sleeps until that time and starts
  the request; it never waits for a response. ``scheduled_s`` is the intended time, ``sent_s``
  the moment the request actually left (after waiting for a ``max_concurrency`` slot, before
  connecting), so ``e2e_s`` (from ``scheduled_s``) is corrected for coordinated omission as wrk2
  does and ``e2e_uncorrected_s`` (from ``sent_s``) is what most LLM benchmark clients report.
  The difference, ``schedule_lag_s``, is kept for every request.
- **Closed loop** (``closed``): ``users`` clients each send the next request when the previous
  one is done (plus ``think_time_s``); ``scheduled_s`` is the moment the user was ready.
- Tokens come from the server's ``usage`` (``stream_options.include_usage`` is sent), else from
  a tokenizer, else they are left unknown; one stream event is never taken for one token.
  Every gap between two stream events that carry text is one ``itl_s`` sample.
- The HTTP/1.1 client is a small asyncio protocol with keep-alive connections: no task per
  stream event and no JSON parsing of events that carry only text, so one core sustains a few
  thousand streaming requests per second with sub-millisecond schedule lag (see
  ``benchmarks/README-load.md``). On Linux the scheduler wakes on a timerfd at each intended
  send time, so the event loop's millisecond timers do not delay a send by milliseconds; with
  ``short_slice=True`` the loop thread also asks for a short scheduler slice, so that other
  work on a busy core does not either (off by default: it makes the client preempt a server on
  the same cores more often, which can slow a co-located CPU engine). At most
  32 connections are opened at once; other requests take the next free connection (time that
  counts in their latency from the actual send, like connecting does).

Layout (import every name from ``labkit.load``; the submodules are its implementation):
:mod:`~labkit.load.config` (:class:`LoadConfig` and its validation), :mod:`~labkit.load.prompts`,
:mod:`~labkit.load.schedule` (arrival processes, timerfd, scheduler slice),
:mod:`~labkit.load.client` (the HTTP protocol and the ``SERVER_HEADER_*`` contract),
:mod:`~labkit.load.runner` (one run), :mod:`~labkit.load.records` (:class:`RequestRecord`, the
JSONL, :class:`LoadResult`), :mod:`~labkit.load.progress`, :mod:`~labkit.load.api`
(:func:`run_load`, :func:`run_load_async`, :func:`run_sweep`); ``labkit load`` is in
:mod:`labkit.cli`. A test that patches a module-level name patches it in the submodule that
looks it up, e.g. ``labkit.load.runner._MAX_CONNECTING``.
"""

from __future__ import annotations

from labkit.load.api import run_load, run_load_async, run_sweep
from labkit.load.client import (
    SERVER_HEADER_NODE,
    SERVER_HEADER_REPLICA,
    SERVER_HEADER_SENT_AT,
    SERVER_HEADER_TIMINGS,
)
from labkit.load.config import APIS as APIS
from labkit.load.config import ARRIVALS, LoadConfig
from labkit.load.prompts import make_prompts
from labkit.load.records import STATUSES as STATUSES
from labkit.load.records import LoadResult, RequestRecord, read_records

__all__ = [
    "ARRIVALS",
    "SERVER_HEADER_NODE",
    "SERVER_HEADER_REPLICA",
    "SERVER_HEADER_SENT_AT",
    "SERVER_HEADER_TIMINGS",
    "LoadConfig",
    "LoadResult",
    "RequestRecord",
    "make_prompts",
    "read_records",
    "run_load",
    "run_load_async",
    "run_sweep",
]
