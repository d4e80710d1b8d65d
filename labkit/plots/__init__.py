"""Figures of a load run: histograms, CDFs, percentiles against load, request share, timeline.

Owns presentation only: every function takes records (or ``LoadResult`` objects with
``.records``) and telemetry samples, computes what it draws, and returns a
:class:`matplotlib.figure.Figure`. Figures are built without ``pyplot`` (no global state, no
GUI backend, nothing to close, works headless); in Jupyter a returned figure displays itself,
and :func:`save_figure` writes PNG and SVG.

Colours are the Okabe-Ito palette (safe for the common colour-vision deficiencies), and the
percentile lines also differ in line style, so figures read in grey too. Titles name the
configuration that the caller passes as ``name``.

Layout (import every name from ``labkit.plots``; the submodules are its implementation):
:mod:`~labkit.plots.style` (the palette, labels, the values drawn, the blank Figure that is the
only place matplotlib is imported, and :func:`save_figure`), :mod:`~labkit.plots.latency`
(:func:`plot_latency_histogram`, :func:`plot_latency_cdf`, :func:`plot_percentiles_vs_load`),
:mod:`~labkit.plots.activity` (:func:`plot_request_share`, :func:`plot_timeline`),
:mod:`~labkit.plots.hops` (:func:`plot_hops`: every hop of a request); ``labkit
plot`` is in :mod:`labkit.cli`. A test that patches a
module-level name patches it in the submodule that looks it up, e.g.
``labkit.plots.latency._new_figure`` for the latency figures.
"""

from __future__ import annotations

from labkit.plots.activity import plot_request_share, plot_timeline
from labkit.plots.hops import plot_hops
from labkit.plots.latency import plot_latency_cdf, plot_latency_histogram, plot_percentiles_vs_load
from labkit.plots.style import METRIC_LABELS, OKABE_ITO, PALETTE, save_figure

__all__ = [
    "METRIC_LABELS",
    "OKABE_ITO",
    "PALETTE",
    "plot_hops",
    "plot_latency_cdf",
    "plot_latency_histogram",
    "plot_percentiles_vs_load",
    "plot_request_share",
    "plot_timeline",
    "save_figure",
]
