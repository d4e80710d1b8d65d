"""Latency statistics: pure functions from :class:`~labkit.load.RequestRecord` lists to summaries.

Owns: percentiles and their confidence intervals, histogram bins, error rates, achieved vs
offered rate, goodput against SLOs, per-node / per-replica shares with a load-balance index,
and the latency decomposition. Computes, never prints (``labkit.plots`` and the CLI render).

Metrics (seconds), from each record:

==================  ========================================================================
``e2e``             done - intended send (corrected for coordinated omission)
``e2e_uncorrected`` done - actual send (what most LLM benchmark clients report)
``ttft``            first token - intended send
``ttft_uncorrected`` first token - actual send
``itl``             every gap between two stream events carrying text; each gap one sample
``tpot``            (last token - first token) / (output tokens - 1), one per request
``schedule_lag``    actual send - intended send
==================  ========================================================================

Failures (status other than ``ok``) are never dropped. For ``e2e``, ``e2e_uncorrected``,
``ttft`` and ``ttft_uncorrected`` a failed request counts in the percentiles as its time-out:
``max(timeout_s, time until it failed)``, so a fast HTTP 500 never looks like a fast answer and
p99 reads "at least the time-out" once more than 1% fail. Records without ``timeout_s`` count as
the slowest successful value instead. For ``itl`` and ``tpot`` (per-token metrics) failed
requests add no samples; for ``schedule_lag`` they add their real lag. Every summary also
carries ``errors`` / ``error_rate`` and the percentiles of successful requests alone
(``ok_percentiles``). A time-out is chosen over +inf so that summaries stay finite, valid JSON,
and equal to ``numpy.percentile`` of the same samples.

Warm-up records (``warmup=True``) are left out unless ``include_warmup=True``.

Layout (import every name from ``labkit.stats``; the submodules are its implementation):
:mod:`~labkit.stats.distribution` (:func:`percentiles`, :func:`percentile_label`,
:func:`bootstrap_ci`, :func:`histogram_bins`), :mod:`~labkit.stats.latency` (:data:`METRICS`,
:func:`latency_values`, :class:`LatencySummary`, :func:`summarize_latencies`) and
:mod:`~labkit.stats.run` (:func:`share_by`, :func:`load_balance_index`,
:func:`decompose_latency`, goodput, :class:`RunSummary`, :func:`summarize_run`) and
:mod:`~labkit.stats.hops` (:func:`hop_times`, :func:`hop_breakdown`: every hop of a request). A test that
patches a module-level name patches it in the submodule that looks it up, e.g.
``labkit.stats.latency._BOOTSTRAP_MAX_N``.
"""

from __future__ import annotations

from labkit.stats.distribution import (
    DEFAULT_PERCENTILES,
    bootstrap_ci,
    histogram_bins,
    percentile_label,
    percentile_supported,
    percentiles,
)
from labkit.stats.hops import HOP_LABELS, HOPS, TTFT_HOPS, hop_breakdown, hop_times
from labkit.stats.latency import METRICS, LatencySummary, latency_values, summarize_latencies
from labkit.stats.run import SLO_KEYS as SLO_KEYS
from labkit.stats.run import RunSummary, decompose_latency, load_balance_index, share_by, summarize_run

__all__ = [
    "DEFAULT_PERCENTILES",
    "HOPS",
    "HOP_LABELS",
    "METRICS",
    "LatencySummary",
    "RunSummary",
    "bootstrap_ci",
    "decompose_latency",
    "histogram_bins",
    "hop_breakdown",
    "hop_times",
    "latency_values",
    "load_balance_index",
    "percentile_label",
    "percentile_supported",
    "percentiles",
    "share_by",
    "summarize_latencies",
    "summarize_run",
    "TTFT_HOPS",
]
