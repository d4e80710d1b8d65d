"""Figures of a load run: histograms, CDFs, percentiles against load, request share, timeline.

Owns presentation only: every function takes records (or ``LoadResult`` objects with
``.records``) and telemetry samples, computes what it draws, and returns a
:class:`matplotlib.figure.Figure`. Figures are built without ``pyplot`` (no global state, no
GUI backend, nothing to close, works headless); in Jupyter a returned figure displays itself,
and :func:`save_figure` writes PNG and SVG.

Colours are the Okabe-Ito palette (safe for the common colour-vision deficiencies), and the
percentile lines also differ in line style, so figures read in grey too. Titles name the
configuration that the caller passes as ``name``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from labkit import stats
from labkit.errors import ConfigError
from labkit.load import RequestRecord
from labkit.telemetry import TelemetrySample, cpu_samples

__all__ = [
    "METRIC_LABELS",
    "OKABE_ITO",
    "PALETTE",
    "plot_latency_cdf",
    "plot_latency_histogram",
    "plot_percentiles_vs_load",
    "plot_request_share",
    "plot_timeline",
    "save_figure",
]

OKABE_ITO = {
    "black": "#000000", "orange": "#E69F00", "sky_blue": "#56B4E9", "bluish_green": "#009E73",
    "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "reddish_purple": "#CC79A7",
}
PALETTE = tuple(OKABE_ITO[c] for c in ("blue", "orange", "bluish_green", "vermillion",
                                       "reddish_purple", "sky_blue", "black", "yellow"))
_LINESTYLES = ("-", "--", "-.", ":")
_PCT_STYLE = {50: (OKABE_ITO["bluish_green"], "-"), 90: (OKABE_ITO["sky_blue"], (0, (5, 1))),
              95: (OKABE_ITO["orange"], "--"), 99: (OKABE_ITO["vermillion"], "-."),
              99.9: (OKABE_ITO["reddish_purple"], ":")}
_PENALIZED = ("e2e", "e2e_uncorrected", "ttft", "ttft_uncorrected")  # one sample per request
_OUTSIDE = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "borderaxespad": 0.0}
_OUTSIDE_TWIN = {"loc": "upper left", "bbox_to_anchor": (1.12, 1.0), "borderaxespad": 0.0}
METRIC_LABELS = {
    "e2e": "end-to-end latency",
    "e2e_uncorrected": "end-to-end latency from actual send",
    "ttft": "time to first token",
    "ttft_uncorrected": "time to first token from actual send",
    "itl": "inter-token latency",
    "tpot": "time per output token",
    "schedule_lag": "send lag (actual - intended send)",
}


# ---------------------------------------------------------------------------------------------
# computing what is drawn (definitions from labkit.stats)
# ---------------------------------------------------------------------------------------------


def _records(data: Any) -> list[RequestRecord]:
    items = getattr(data, "records", data)
    return [r if isinstance(r, RequestRecord) else RequestRecord.from_dict(r) for r in items]


def _label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def _values(data: Any, metric: str, name: str = "", include_failures: bool = True) -> list[float]:
    """Samples of a metric as labkit.stats defines them (warm-up left out)."""
    values = stats.latency_values(_records(data), metric, include_failures=include_failures)
    if not values:
        who = f" of {name!r}" if name else ""
        msg = (f"No requests{who} have a {metric!r} value to plot. Check that the run produced "
               f"records with status 'ok' (and first-token times for TTFT).")
        raise ConfigError(msg, field="records", value=0)
    return values


def _percentiles(values: Sequence[float], qs: Sequence[float]) -> dict[float, float]:
    got = stats.percentiles(values, qs)
    return {q: got[stats.percentile_label(q)] for q in qs}


def _n_failed(data: Any) -> int:
    return sum(1 for r in _records(data) if r.status != "ok" and not r.warmup)


def _unit(seconds: float) -> tuple[str, float]:
    """Pick ms or s for an axis whose largest value is ``seconds``."""
    return ("s", 1.0) if seconds >= 10 else ("ms", 1e3)


def _fmt_latency(seconds: float) -> str:
    if seconds >= 10:
        return f"{seconds:.1f} s"
    ms = seconds * 1e3
    return f"{ms:.0f} ms" if ms >= 10 else f"{ms:.2g} ms"


def _label_q(q: float) -> str:
    return stats.percentile_label(q)


def _short(ident: str, width: int = 10) -> str:
    return ident if len(ident) <= width else ident[: width - 1] + "\u2026"


def _title(name: str, what: str) -> str:
    return f"{name}: {what}" if name else what


def _new_figure(nrows: int = 1, *, height_ratios: Sequence[float] | None = None,
                figsize: tuple[float, float] = (8.0, 4.5), sharex: bool = False) -> tuple[Any, Any]:
    # matplotlib is heavy; the Figure is built without pyplot, so no backend or display is needed.
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(nrows, 1, sharex=sharex, squeeze=False,
                        gridspec_kw={"height_ratios": height_ratios} if height_ratios else None)
    return fig, [row[0] for row in axes]


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
    pct = _percentiles(values, percentiles)
    unit, scale = _unit(max(values))
    xs = [v * scale for v in values]
    edges = stats.histogram_bins(xs, bins=bins, log=log_x)
    fig, (ax,) = _new_figure()
    if log_x:
        ax.set_xscale("log")
    what = f"{len(values)} requests" if metric in _PENALIZED else f"{len(values)} samples"
    if failed:
        what += f" ({failed} failed, at their time-out)"
    counts, _, _ = ax.hist(xs, bins=edges, color=PALETTE[0], alpha=0.85, edgecolor="white",
                           linewidth=0.5, label=what)
    ax.set_ylim(0, max(counts) * (1.1 + 0.1 * len(pct)))  # head room for the labels
    lo, hi = ax.get_xlim()
    for i, (q, v) in enumerate(pct.items()):
        color, style = _PCT_STYLE.get(q, (PALETTE[(i + 3) % len(PALETTE)], _LINESTYLES[i % 4]))
        label = f"{_label_q(q)} = {_fmt_latency(v)}"
        ax.axvline(v * scale, color=color, linestyle=style, linewidth=2, label=label)
        x = v * scale
        frac = (math.log(x / lo) / math.log(hi / lo)) if log_x and x > 0 and lo > 0 else (x - lo) / (hi - lo)
        right = frac > 0.6  # label on the left of lines near the right edge, so it stays inside
        ax.text(x, 0.98 - 0.08 * i, f" {label} " if right else f" {label}",
                transform=ax.get_xaxis_transform(), color=color, fontsize=9,
                ha="right" if right else "left", va="top", fontweight="bold")
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

    data = {run: np.sort(np.asarray(_values(recs, metric, run, include_failures)))
            for run, recs in runs.items()}
    unit, scale = _unit(max(float(v[-1]) for v in data.values()))
    fig, (ax,) = _new_figure()
    for q in percentiles:
        level = q / 100
        y = 1 - level if tail else level
        ax.axhline(y, color="0.6", linewidth=0.8, linestyle=":")
        ax.text(1.0, y, f" {_label_q(q)}", transform=ax.get_yaxis_transform(), va="center",
                ha="left", fontsize=8, color="0.3")
    marks: list[tuple[float, float, str, str]] = []
    for i, (run, xs) in enumerate(data.items()):
        color, style = PALETTE[i % len(PALETTE)], _LINESTYLES[(i // len(PALETTE)) % 4]
        n = len(xs)
        y = np.arange(1, n + 1) / n
        pct = _percentiles(xs, percentiles)
        label = f"{run}: p50 {_fmt_latency(pct.get(50, float(np.median(xs))))}"
        if 99 in pct:
            label += f", p99 {_fmt_latency(pct[99])}"
        if tail:
            ax.step(xs * scale, np.clip(1 - y + 1 / n, 1 / n, 1), where="post", color=color,
                    linestyle=style, linewidth=1.8, label=label)
        else:
            ax.step(xs * scale, y, where="post", color=color, linestyle=style, linewidth=1.8, label=label)
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
        ax.annotate(text, (x, yy), xytext=(-8 if right else 8, -14 - 13 * i), textcoords="offset points",
                    ha="right" if right else "left", color=color, fontsize=9, fontweight="bold")
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
                msg = (f"Cannot tell the offered load of {type(item).__name__}: it has no "
                       f"config.rate_rps. Pass {{rate_rps: records}} or (rate_rps, records) pairs.")
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
    table = [_percentiles(_values(recs, metric, f"{rate:g} req/s", include_failures), percentiles)
             for rate, recs in points]
    top_s = max(max(row.values()) for row in table)
    unit, scale = _unit(top_s)
    fig, (ax,) = _new_figure()
    for i, q in enumerate(percentiles):
        color, style = _PCT_STYLE.get(q, (PALETTE[i % len(PALETTE)], _LINESTYLES[i % 4]))
        ax.plot(rates, [row[q] * scale for row in table], color=color, linestyle=style,
                marker="osD^v"[i % 5], linewidth=2, label=_label_q(q))
    if percentiles and len(points) > 1:
        q = max(percentiles)
        base = table[0][q]
        grown = [rate for rate, row in zip(rates, table, strict=True) if row[q] >= knee_factor * base]
        knee = grown[0] if grown else None
        if knee is not None:
            label = f"knee \u2248 {knee:g} req/s"
            ax.axvline(knee, color="0.3", linestyle=":", linewidth=1.5, label=label)
            ax.text(knee, 0.03, f" {label}\n ({_label_q(q)} \u2265 {knee_factor:g}x its lowest-load value)",
                    transform=ax.get_xaxis_transform(), fontsize=9, va="bottom", ha="left", color="0.2")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("offered load (requests/s)")
    ax.set_ylabel(f"{_label(metric)} ({unit})")
    ax.set_title(title or _title(name, f"{_label(metric)} percentiles vs offered load"))
    ax.legend(fontsize=9)
    ax.grid(True, alpha=0.3)
    return fig


def plot_request_share(
    records: Any,
    by: str | Sequence[str] = ("node_id", "replica_id"),
    *,
    name: str = "",
    title: str | None = None,
) -> Any:
    """Bar chart of the share of requests served per node and/or per replica.

    Parameters
    ----------
    records : list of RequestRecord, or a LoadResult
        Successful requests are counted.
    by : str or sequence of str
        "node_id", "replica_id" or both (one panel each).
    name : str
        Configuration name, used in the title.
    title : str, optional
        Full title instead of the default.

    Returns
    -------
    matplotlib.figure.Figure
        One axis per key; each bar is labelled with its count and share, a dashed line marks
        the even share and the panel title gives Jain's balance index.

    Raises
    ------
    ConfigError
        Unknown key, or no successful request carries the key.
    """
    keys = [by] if isinstance(by, str) else list(by)
    allowed = ("node_id", "replica_id")
    for key in keys:
        if key not in allowed:
            msg = f"Cannot share requests by {key!r}. Allowed: {list(allowed)}."
            raise ConfigError(msg, field="by", value=key)
    recs = _records(records)
    total = sum(1 for r in recs if r.status == "ok" and not r.warmup)
    fig, axes = _new_figure(len(keys), figsize=(8.0, 3.2 * len(keys)))
    for ax, key in zip(axes, keys, strict=True):
        share = stats.share_by(recs, key)
        if not share or set(share) == {"unknown"}:
            msg = (f"No successful request says which {key.replace('_id', '')} served it; the server "
                   f"must send the attribution headers (labkit.load.SERVER_HEADER_*).")
            raise ConfigError(msg, field="by", value=key)
        ids = list(share)
        shares = [share[i] for i in ids]
        counts = {i: round(share[i] * total) for i in ids}
        jain = stats.load_balance_index(share)
        xs = range(len(ids))
        ax.bar(xs, [s * 100 for s in shares], color=[PALETTE[i % len(PALETTE)] for i in xs])
        for x, ident, share in zip(xs, ids, shares, strict=True):
            ax.text(x, share * 100, f"{counts[ident]} ({share:.0%})", ha="center", va="bottom", fontsize=9)
        even = 100 / len(ids)
        ax.axhline(even, color="0.3", linestyle="--", linewidth=1.2, label=f"even share = {even:.0f}%")
        ax.set_xticks(list(xs), [_short(i) for i in ids], rotation=0 if len(ids) < 6 else 45)
        ax.set_ylabel("share of requests (%)")
        ax.set_ylim(0, max(max(shares) * 100 * 1.2, even * 1.2))
        ax.set_title(f"per {key.replace('_id', '')}: {len(ids)} serving, Jain's index {jain:.2f}",
                     fontsize=10)
        ax.legend(fontsize=9, loc="upper right")
    fig.suptitle(title or _title(name, f"request share ({total} requests)"))
    return fig


def _inflight_steps(records: Sequence[RequestRecord], t0: float) -> tuple[list[float], list[int]]:
    events = sorted([(r.sent_s - t0, 1) for r in records] + [(r.done_s - t0, -1) for r in records])
    ts, ns, n = [], [], 0
    for t, d in events:
        n += d
        ts.append(t)
        ns.append(n)
    return ts, ns


def plot_timeline(
    records: Any,
    telemetry: Any = None,
    metric: str = "e2e",
    *,
    name: str = "",
    title: str | None = None,
    t0_s: float | None = None,
) -> Any:
    """Latency of each request on top, engine activity (and GPU, CPU) below, on one clock.

    Parameters
    ----------
    records : list of RequestRecord, or a LoadResult
        Each request is a dot at its completion time (errors as crosses).
    telemetry : TelemetryRecorder or list of TelemetrySample, optional
        Replica running + waiting per replica, coordinator queue, GPU utilization; process
        CPU in a third panel when sampled. Without it the lower panel shows the requests in
        flight as the client saw them.
    metric : str
        A per-request :data:`labkit.stats.METRICS` name (not "itl").
    name : str
        Configuration name, used in the title.
    title : str, optional
        Full title instead of the default.
    t0_s : float, optional
        Load-clock time shown as 0; the first scheduled request when omitted.

    Returns
    -------
    matplotlib.figure.Figure
        Two or three axes sharing the time axis; the top one has a "p99 = ..." line (failures
        counted as :mod:`labkit.stats` counts them).

    Raises
    ------
    ConfigError
        Unknown or per-token metric, or no records.
    """
    if metric == "itl" or metric not in stats.METRICS:
        allowed = [m for m in stats.METRICS if m != "itl"]
        msg = f"plot_timeline cannot draw metric {metric!r} per request. Allowed: {allowed}."
        raise ConfigError(msg, field="metric", value=metric)
    recs = [r for r in _records(records) if not r.warmup]
    if not recs:
        msg = "plot_timeline got no records. Pass the records of a load run."
        raise ConfigError(msg, field="records", value=0)
    samples = [s if isinstance(s, TelemetrySample) else TelemetrySample.from_dict(s)
               for s in (getattr(telemetry, "samples", telemetry) or [])]
    t0 = min(r.scheduled_s for r in recs) if t0_s is None else t0_s
    cpu = [s for s in samples if s.cpu_percent is not None and s.role != "gpu"]
    fig, axes = _new_figure(3 if cpu else 2, height_ratios=[2, 1.3, 1] if cpu else [2, 1.3],
                            figsize=(11.0, 7.0 if cpu else 5.5), sharex=True)
    ax_lat, ax_eng = axes[0], axes[1]

    ok = [(r, stats.latency_values([r], metric, include_failures=False)) for r in recs if r.status == "ok"]
    ok = [(r, v[0]) for r, v in ok if v]
    values = stats.latency_values(recs, metric)
    unit, scale = _unit(max(values) if values else 1.0)
    replicas = sorted({r.replica_id or "?" for r, _ in ok})
    for i, rep in enumerate(replicas[: len(PALETTE)]):
        pts = [(r.done_s - t0, v * scale) for r, v in ok if (r.replica_id or "?") == rep]
        ax_lat.scatter([p[0] for p in pts], [p[1] for p in pts], s=10, color=PALETTE[i], alpha=0.8,
                       label=f"replica {_short(rep)}" if len(replicas) > 1 else "ok", linewidths=0)
    if len(replicas) > len(PALETTE):
        pts = [(r.done_s - t0, v * scale) for r, v in ok if (r.replica_id or "?") in replicas[len(PALETTE):]]
        ax_lat.scatter([p[0] for p in pts], [p[1] for p in pts], s=10, color="0.5", label="other replicas")
    errors = [r for r in recs if r.status != "ok"]
    if errors:
        ax_lat.scatter([r.done_s - t0 for r in errors], [(r.done_s - r.scheduled_s) * scale for r in errors],
                       marker="x", color=OKABE_ITO["vermillion"], s=25, label=f"failed ({len(errors)})")
    if values:
        p99 = _percentiles(values, [99])[99]
        ax_lat.axhline(p99 * scale, color=OKABE_ITO["vermillion"], linestyle="-.", linewidth=1.5,
                       label=f"p99 = {_fmt_latency(p99)}")
    ax_lat.set_ylabel(f"{_label(metric)} ({unit})")
    ax_lat.set_ylim(bottom=0)
    ax_lat.legend(fontsize=8, **_OUTSIDE)
    ax_lat.grid(True, alpha=0.3)

    ts, ns = _inflight_steps(recs, t0)
    ax_eng.step(ts, ns, where="post", color="0.55", linewidth=1, label="in flight (client)")
    replica_samples = [s for s in samples if s.role == "replica" and s.active is not None]
    comps = sorted({s.component_id for s in replica_samples})
    for i, comp in enumerate(comps):
        ss = [s for s in replica_samples if s.component_id == comp]
        ax_eng.step([s.t_s - t0 for s in ss], [s.active for s in ss], where="post",
                    color=PALETTE[i % len(PALETTE)], linewidth=1.6,
                    label=f"engine {_short(comp)} running+waiting")
    coord = [s for s in samples if s.role == "coordinator" and s.waiting is not None]
    if coord:
        ax_eng.step([s.t_s - t0 for s in coord], [s.waiting for s in coord], where="post",
                    color=OKABE_ITO["vermillion"], linestyle="--", linewidth=1.6, label="coordinator queue")
    ax_eng.set_ylabel("requests")
    ax_eng.set_ylim(bottom=0)
    handles, labels = ax_eng.get_legend_handles_labels()
    gpu = [s for s in samples if s.gpu_util_percent is not None]
    if gpu:
        ax_gpu = ax_eng.twinx()
        for i, comp in enumerate(sorted({s.component_id for s in gpu})):
            ss = [s for s in gpu if s.component_id == comp]
            ax_gpu.plot([s.t_s - t0 for s in ss], [s.gpu_util_percent for s in ss], linestyle=":",
                        color=PALETTE[(i + 4) % len(PALETTE)], linewidth=1.2, label=f"{comp} util %")
        ax_gpu.set_ylim(0, 105)
        ax_gpu.set_ylabel("GPU utilization (%)")
        more = ax_gpu.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    # one legend for both y axes, outside the plot so it hides no data
    (ax_gpu if gpu else ax_eng).legend(handles, labels, fontsize=8, **_OUTSIDE_TWIN if gpu else _OUTSIDE)
    ax_eng.grid(True, alpha=0.3)

    if cpu:
        ax_cpu = axes[2]
        groups = sorted({(s.role, s.component_id) for s in cpu})
        for i, (role, comp) in enumerate(groups):
            ss = cpu_samples(s for s in cpu if (s.role, s.component_id) == (role, comp))
            ax_cpu.plot([s.t_s - t0 for s in ss], [s.cpu_percent for s in ss],
                        color=PALETTE[i % len(PALETTE)], linestyle=_LINESTYLES[(i // len(PALETTE)) % 4],
                        linewidth=1.2, label=f"{role} {_short(comp)}")
        ax_cpu.axhline(100, color="0.3", linestyle=":", linewidth=1, label="one core")
        ax_cpu.set_ylabel("CPU (%)")
        ax_cpu.set_ylim(0, max(105.0, 1.1 * max(float(s.cpu_percent or 0) for s in cpu)))
        ax_cpu.legend(fontsize=8, **_OUTSIDE)
        ax_cpu.grid(True, alpha=0.3)
    axes[-1].set_xlabel("time since start (s), load generator clock")
    fig.suptitle(title or _title(name, f"{_label(metric)} and engine activity over time"))
    return fig


def save_figure(fig: Any, path_without_suffix: str | Path, *, formats: Sequence[str] = ("png", "svg"),
                dpi: int = 150) -> list[Path]:
    """Write a figure as PNG and SVG (or the formats given) next to each other.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure.
    path_without_suffix : str or Path
        Target path without suffix; a suffix among ``formats`` is dropped. Parent folders
        are created.
    formats : sequence of str
        File formats, each also the suffix.
    dpi : int
        Resolution of raster formats.

    Returns
    -------
    list of Path
        The files written, in the order of ``formats``.

    Raises
    ------
    ConfigError
        A format matplotlib cannot write.
    """
    base = Path(path_without_suffix)
    if base.suffix.lstrip(".").lower() in formats:
        base = base.with_suffix("")
    supported = fig.canvas.get_supported_filetypes()
    out = []
    for fmt in formats:
        if fmt not in supported:
            msg = f"Cannot save a figure as {fmt!r}. Supported: {sorted(supported)}."
            raise ConfigError(msg, field="formats", value=fmt)
        path = base.parent / f"{base.name}.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format=fmt, dpi=dpi)
        out.append(path)
    return out


# ---------------------------------------------------------------------------------------------
# Command line: ``labkit plot RECORDS.jsonl [...] --out DIR``
# ---------------------------------------------------------------------------------------------


def register_cli(subparsers: Any) -> None:
    """Add the ``plot`` subcommand.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        From ``parser.add_subparsers()``.
    """
    p = subparsers.add_parser(
        "plot", help="Draw the figures of one or more load runs (PNG + SVG).",
        description="Per run: latency histogram, request share and timeline; across runs: a CDF "
                    "overlay. Names are the files' stems unless --name is given.")
    p.add_argument("records", nargs="+", help="records files written by `labkit load` (JSONL)")
    p.add_argument("--out", required=True, help="folder for the figures")
    p.add_argument("--name", action="append", default=None,
                   help="configuration name, once per records file, in the same order")
    p.add_argument("--telemetry", action="append", default=None,
                   help="telemetry JSON (TelemetryRecorder.to_dict()), once per records file")
    p.add_argument("--metric", default="e2e", help="latency metric (labkit.stats.METRICS)")
    p.add_argument("--log-x", action="store_true", help="logarithmic latency axis")
    p.set_defaults(func=_cmd_plot)


def _cmd_plot(args: Any) -> int:
    import json

    from labkit.load import read_records
    from labkit.telemetry import TelemetryRecorder

    names = args.name or [Path(p).stem for p in args.records]
    tels = args.telemetry or []
    for flag, given in (("--name", names), ("--telemetry", tels)):
        if given and len(given) != len(args.records):
            msg = f"{flag} was given {len(given)} times for {len(args.records)} records files; give it once per file."
            raise ConfigError(msg, field=flag, value=given)
    out = Path(args.out)
    runs = {name: read_records(path) for name, path in zip(names, args.records, strict=True)}
    written: list[Path] = []
    for i, (name, recs) in enumerate(runs.items()):
        stem = out / name
        written += save_figure(plot_latency_histogram(recs, args.metric, name=name, log_x=args.log_x),
                               f"{stem}-histogram")
        tel = None
        if tels:
            tel = TelemetryRecorder.from_dict(json.loads(Path(tels[i]).read_text(encoding="utf-8")))
        if args.metric != "itl":
            written += save_figure(plot_timeline(recs, tel, args.metric, name=name), f"{stem}-timeline")
        try:
            written += save_figure(plot_request_share(recs, name=name), f"{stem}-share")
        except ConfigError as err:
            print(f"labkit plot: no request-share figure for {name}: {err}")
    written += save_figure(plot_latency_cdf(runs, args.metric, log_x=args.log_x), out / "cdf")
    print("\n".join(str(p) for p in written))
    return 0
