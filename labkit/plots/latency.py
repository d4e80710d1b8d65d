"""Latency figures: histogram, CDF overlay of several runs, and percentiles against offered load.

Owns :func:`plot_latency_histogram`, :func:`plot_latency_cdf` and :func:`plot_percentiles_vs_load`
(with the knee of a sweep); numpy is imported inside the CDF, which needs it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from labkit import stats
from labkit.errors import ConfigError
from labkit.plots.style import (
    _LINESTYLES,
    _PCT_STYLE,
    _PENALIZED,
    PALETTE,
    _fmt_latency,
    _label,
    _label_q,
    _n_failed,
    _new_figure,
    _percentiles,
    _title,
    _unit,
    _values,
)

__all__ = ["plot_latency_cdf", "plot_latency_histogram", "plot_percentiles_vs_load"]


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------


def plot_latency_histogram(
    records: Any,
    metric: str = "e2e",
    *,
    name: str = "",
    title: str | None = None,
    log_x: bool = False,
    bins: int = 40,
    percentiles: Sequence[float] = (50, 95, 99),
    include_failures: bool = True,
) -> Any:
    """Draw a latency histogram with p50 / p95 / p99 lines labelled with their values.

    Parameters
    ----------
    records : list of RequestRecord, or a LoadResult
        The run's records; warm-up requests are left out.
    metric : str
        A :data:`labkit.stats.METRICS` name ("e2e", "ttft", "tpot", "itl", ...).
    name : str
        Configuration name, used in the title.
    title : str, optional
        Full title instead of the default "<name>: <metric> (n=...)".
    log_x : bool
        Logarithmic x axis with log-spaced bins (shows a long tail).
    bins : int
        Number of bins.
    percentiles : sequence of float
        Percentiles to draw as labelled vertical lines.
    include_failures : bool
        Count failed requests as :mod:`labkit.stats` does (at their time-out), so the lines
        match ``summarize_latencies``; False draws successful requests only.

    Returns
    -------
    matplotlib.figure.Figure
        One axis; each percentile line's label reads e.g. "p99 = 412 ms".

    Raises
    ------
    ConfigError
        Unknown metric, fewer than one bin, or no request with a value for the metric.
    """
    if bins < 1:
        msg = f"bins={bins!r} must be at least 1 (e.g. 40)."
        raise ConfigError(msg, field="bins", value=bins)
    values = _values(records, metric, name, include_failures)
    failed = _n_failed(records) if include_failures and metric in _PENALIZED else 0
    # a percentile is marked only where a request lies above it (n >= 100 for p99)
    left_out = [q for q in percentiles if not stats.percentile_supported(q, len(values))]
    pct = _percentiles(values, [q for q in percentiles if q not in left_out])
    unit, scale = _unit(max(values))
    xs = [v * scale for v in values]
    edges = stats.histogram_bins(xs, bins=bins, log=log_x)
    fig, (ax,) = _new_figure()
    if log_x:
        ax.set_xscale("log")
    what = f"{len(values)} requests" if metric in _PENALIZED else f"{len(values)} samples"
    if failed:
        what += f" ({failed} failed, at their time-out)"
    counts, _, _ = ax.hist(xs, bins=edges, color=PALETTE[0], alpha=0.85, edgecolor="white", linewidth=0.5, label=what)
    ax.set_ylim(0, max(counts) * (1.1 + 0.1 * len(pct)))  # head room for the labels
    lo, hi = ax.get_xlim()
    for i, (q, v) in enumerate(pct.items()):
        color, style = _PCT_STYLE.get(q, (PALETTE[(i + 3) % len(PALETTE)], _LINESTYLES[i % 4]))
        label = f"{_label_q(q)} = {_fmt_latency(v)}"
        ax.axvline(v * scale, color=color, linestyle=style, linewidth=2, label=label)
        x = v * scale
        frac = (math.log(x / lo) / math.log(hi / lo)) if log_x and x > 0 and lo > 0 else (x - lo) / (hi - lo)
        right = frac > 0.6  # label on the left of lines near the right edge, so it stays inside
        ax.text(
            x,
            0.98 - 0.08 * i,
            f" {label} " if right else f" {label}",
            transform=ax.get_xaxis_transform(),
            color=color,
            fontsize=9,
            ha="right" if right else "left",
            va="top",
            fontweight="bold",
        )
    if left_out:
        ax.plot(
            [],
            [],
            " ",
            label=f"{', '.join(_label_q(q) for q in left_out)} not marked: n = {len(values)} has no request above it",
        )
    ax.set_xlabel(f"{_label(metric)} ({unit})" + (", log scale" if log_x else ""))
    ax.set_ylabel("requests" if metric in _PENALIZED else "samples")
    ax.set_title(title or _title(name, f"{_label(metric)} (n={len(values)})"))
    ax.legend(loc="center right", fontsize=9)
    return fig


def plot_latency_cdf(
    runs: Mapping[str, Any] | Any,
    metric: str = "e2e",
    *,
    name: str = "",
    title: str | None = None,
    log_x: bool = False,
    tail: bool = False,
    percentiles: Sequence[float] = (50, 95, 99),
    include_failures: bool = True,
) -> Any:
    """Overlay the latency CDFs of several runs on one axis.

    Parameters
    ----------
    runs : mapping of configuration name to records (or LoadResult), or one record list
        Each run is one curve, labelled with its name and its p50 and p99.
    metric : str
        A :data:`labkit.stats.METRICS` name.
    name : str
        What is compared, used in the title.
    title : str, optional
        Full title instead of the default.
    log_x : bool
        Logarithmic x axis.
    tail : bool
        Plot the exceedance ``1 - CDF`` on a log y axis, which spreads out the tail.
    percentiles : sequence of float
        Percentile levels drawn as horizontal guides and marked on every curve.
    include_failures : bool
        Count failed requests at their time-out, as :mod:`labkit.stats` does.

    Returns
    -------
    matplotlib.figure.Figure
        One axis; each run's p99 point is annotated "p99 = ...".

    Raises
    ------
    ConfigError
        Unknown metric, no runs, or a run without values for the metric.
    """
    if not isinstance(runs, Mapping):
        runs = {name or "run": runs}
    if not runs:
        msg = "plot_latency_cdf got no runs. Pass {configuration name: records}."
        raise ConfigError(msg, field="runs", value=runs)
    import numpy as np

    data = {run: np.sort(np.asarray(_values(recs, metric, run, include_failures))) for run, recs in runs.items()}
    unit, scale = _unit(max(float(v[-1]) for v in data.values()))
    fig, (ax,) = _new_figure()
    for q in percentiles:
        level = q / 100
        y = 1 - level if tail else level
        ax.axhline(y, color="0.6", linewidth=0.8, linestyle=":")
        ax.text(
            1.0,
            y,
            f" {_label_q(q)}",
            transform=ax.get_yaxis_transform(),
            va="center",
            ha="left",
            fontsize=8,
            color="0.3",
        )
    marks: list[tuple[float, float, str, str]] = []
    for i, (run, xs) in enumerate(data.items()):
        color, style = PALETTE[i % len(PALETTE)], _LINESTYLES[(i // len(PALETTE)) % 4]
        n = len(xs)
        cdf = np.arange(1, n + 1) / n
        pct = _percentiles(xs, percentiles)
        label = f"{run}: p50 {_fmt_latency(pct.get(50, float(np.median(xs))))}"
        if 99 in pct:
            label += f", p99 {_fmt_latency(pct[99])}"
        if tail:
            ax.step(
                xs * scale,
                np.clip(1 - cdf + 1 / n, 1 / n, 1),
                where="post",
                color=color,
                linestyle=style,
                linewidth=1.8,
                label=label,
            )
        else:
            ax.step(xs * scale, cdf, where="post", color=color, linestyle=style, linewidth=1.8, label=label)
        if percentiles:
            top = max(percentiles)
            yy = 1 - top / 100 if tail else top / 100
            ax.plot([pct[top] * scale], [yy], marker="o", color=color, markersize=6)
            marks.append((pct[top], yy, color, f"{_label_q(top)} = {_fmt_latency(pct[top])}"))
    if log_x:
        ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    for i, (v, yy, color, text) in enumerate(marks):
        x = v * scale
        frac = (math.log(x / lo) / math.log(hi / lo)) if log_x and x > 0 and lo > 0 else (x - lo) / (hi - lo)
        right = frac > 0.6  # annotate to the left near the right edge, so the text stays inside
        ax.annotate(
            text,
            (x, yy),
            xytext=(-8 if right else 8, -14 - 13 * i),
            textcoords="offset points",
            ha="right" if right else "left",
            color=color,
            fontsize=9,
            fontweight="bold",
        )
    if tail:
        ax.set_yscale("log")
        ax.set_ylabel("fraction of requests slower (1 - CDF)")
    else:
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("fraction of requests (CDF)")
    ax.set_xlabel(f"{_label(metric)} ({unit})")
    ax.set_title(title or _title(name, f"{_label(metric)} CDF, {len(data)} run(s)"))
    ax.legend(loc="lower right" if not tail else "upper right", fontsize=9)
    ax.grid(True, alpha=0.3)
    return fig


def _load_points(results: Any) -> list[tuple[float, Any]]:
    if isinstance(results, Mapping):
        points = [(float(k), v) for k, v in results.items()]
    else:
        points = []
        for item in results:
            if isinstance(item, tuple) and len(item) == 2:
                points.append((float(item[0]), item[1]))
                continue
            rate = getattr(item, "offered_rate_rps", None)
            if rate is None:
                rate = getattr(getattr(item, "config", None), "rate_rps", None)
            if rate is None:
                msg = (
                    f"Cannot tell the offered load of {type(item).__name__}: it has no "
                    f"config.rate_rps. Pass {{rate_rps: records}} or (rate_rps, records) pairs."
                )
                raise ConfigError(msg, field="results", value=type(item).__name__)
            points.append((float(rate), item))
    if not points:
        msg = "plot_percentiles_vs_load got no results. Pass {rate_rps: records} for a sweep."
        raise ConfigError(msg, field="results", value=results)
    return sorted(points, key=lambda p: p[0])


def plot_percentiles_vs_load(
    results: Any,
    metric: str = "e2e",
    *,
    name: str = "",
    title: str | None = None,
    percentiles: Sequence[float] = (50, 95, 99),
    knee_factor: float = 2.0,
    log_y: bool = False,
    include_failures: bool = True,
) -> Any:
    """Plot p50 / p95 / p99 against offered load for a sweep, and mark the knee.

    The knee is the first offered load whose highest percentile reaches ``knee_factor`` times
    its value at the lowest load.

    Parameters
    ----------
    results : mapping of rate (req/s) to records, sequence of (rate, records), or LoadResults
        LoadResult objects give their rate through ``offered_rate_rps`` (or ``config.rate_rps``).
    metric : str
        A :data:`labkit.stats.METRICS` name.
    name : str
        Configuration name, used in the title.
    title : str, optional
        Full title instead of the default.
    percentiles : sequence of float
        Percentiles to plot, one line each.
    knee_factor : float
        Growth of the highest percentile over its lowest-load value that marks the knee.
    log_y : bool
        Logarithmic y axis.
    include_failures : bool
        Count failed requests at their time-out, as :mod:`labkit.stats` does.

    Returns
    -------
    matplotlib.figure.Figure
        One axis; the knee line is labelled "knee ≈ <rate> req/s".

    Raises
    ------
    ConfigError
        Unknown metric, no results, a result whose rate is unknown, or a run without values.
    """
    points = _load_points(results)
    rates = [r for r, _ in points]
    values = [_values(recs, metric, f"{rate:g} req/s", include_failures) for rate, recs in points]
    table = [_percentiles(vals, percentiles) for vals in values]
    counts = [len(vals) for vals in values]
    # A percentile is drawn only where the sample has a request above it (n >= 100 for p99):
    # below that "p99" is the maximum, one request.
    unsupported = {
        q: [rate for rate, n in zip(rates, counts, strict=True) if not stats.percentile_supported(q, n)]
        for q in percentiles
    }
    for q, rates_out in unsupported.items():
        for row, rate in zip(table, rates, strict=True):
            if rate in rates_out:
                row[q] = float("nan")
    top_s = max((v for row in table for v in row.values() if v == v), default=0.0)
    unit, scale = _unit(top_s)
    fig, (ax,) = _new_figure()
    for i, q in enumerate(percentiles):
        color, style = _PCT_STYLE.get(q, (PALETTE[i % len(PALETTE)], _LINESTYLES[i % 4]))
        ax.plot(
            rates,
            [row[q] * scale for row in table],
            color=color,
            linestyle=style,
            marker="osD^v"[i % 5],
            linewidth=2,
            label=_label_q(q),
        )
    missing = [f"{_label_q(q)} at {', '.join(f'{r:g}' for r in out)} req/s" for q, out in unsupported.items() if out]
    if missing:
        ax.text(
            0.01,
            0.98,
            "not drawn (too few requests, n = " + ", ".join(str(n) for n in counts) + "): " + "; ".join(missing),
            transform=ax.transAxes,
            fontsize=8,
            va="top",
            ha="left",
            color="0.3",
            wrap=True,
        )
    drawable = [q for q in percentiles if not unsupported[q] or len(unsupported[q]) < len(rates)]
    if drawable and len(points) > 1:
        q = max(drawable)
        first = next(i for i, row in enumerate(table) if row[q] == row[q])
        base = table[first][q]
        grown = [
            rate for rate, row in zip(rates, table, strict=True) if row[q] == row[q] and row[q] >= knee_factor * base
        ]
        knee = grown[0] if grown else None
        if knee is not None:
            label = f"knee \u2248 {knee:g} req/s"
            ax.axvline(knee, color="0.3", linestyle=":", linewidth=1.5, label=label)
            ax.text(
                knee,
                0.03,
                f" {label}\n ({_label_q(q)} \u2265 {knee_factor:g}x its lowest-load value)",
                transform=ax.get_xaxis_transform(),
                fontsize=9,
                va="bottom",
                ha="left",
                color="0.2",
            )
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("offered load (requests/s)")
    ax.set_ylabel(f"{_label(metric)} ({unit})")
    ax.set_title(title or _title(name, f"{_label(metric)} percentiles vs offered load"))
    ax.legend(fontsize=9)
    ax.grid(True, alpha=0.3)
    return fig
