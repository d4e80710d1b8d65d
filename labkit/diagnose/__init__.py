"""A verdict on a load run, with the numbers behind it.

Owns the question of the chapter: when p99 spikes, is it the coordinator / load balancer
(time spent *before* the engine while the engines sit no busier), engine saturation (engine
queue and activity rise with the tail), load imbalance (one replica gets more than its share),
or nothing at all (healthy)?

How the tail is attributed: the tail is the requests above p95 of end-to-end latency. Their
mean latency minus the median latency is the *excess*; each server timing (pre-engine,
coordinator wait, engine queue, engine total) gets a *share of the excess* in the same way
(tail mean minus overall median, divided by the excess). Telemetry adds engine activity
(running + waiting requests per replica) in the *tail window*, the moments when tail requests
were in flight, against the whole run.

Latency numbers are of successful requests (``labkit.stats`` definitions, e.g. ``e2e`` from
the intended send); failures show as ``error_rate`` and a note. Every threshold is a named
field of :class:`Thresholds`; every comparison that decided the verdict is kept as a
:class:`Check` and shown with the evidence.

Layout (import every name from ``labkit.diagnose``; the submodules are its implementation):
:mod:`~labkit.diagnose.results` (:data:`VERDICTS`, :class:`Thresholds`, :class:`Check`,
:class:`Diagnosis`, :func:`compare` and :class:`DiagnosisComparison`),
:mod:`~labkit.diagnose.evidence` (the numbers from records and telemetry),
:mod:`~labkit.diagnose.verdict` (:func:`diagnose`, the decision and its explanation);
``labkit diagnose`` is in :mod:`labkit.cli`. A test that patches a module-level name
patches it in the submodule that looks it up, e.g. ``labkit.diagnose.verdict._decide``.
"""

from __future__ import annotations

from labkit.diagnose.hops import HopComparison, compare_hops
from labkit.diagnose.results import VERDICTS, Check, Diagnosis, DiagnosisComparison, Thresholds, compare
from labkit.diagnose.verdict import diagnose

__all__ = [
    "VERDICTS",
    "Check",
    "Diagnosis",
    "DiagnosisComparison",
    "HopComparison",
    "Thresholds",
    "compare",
    "compare_hops",
    "diagnose",
]
