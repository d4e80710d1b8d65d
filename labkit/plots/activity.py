"""Where and when requests were served: the request share per node or replica, and the timeline.

Owns :func:`plot_request_share` (with Jain's balance index) and :func:`plot_timeline` (latency
of each request above engine activity, GPU and CPU, on the load generator's clock).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from labkit import stats
from labkit.contracts import RequestRecord
from labkit.errors import ConfigError
from labkit.plots.style import (
    _LINESTYLES,
    _OUTSIDE,
    _OUTSIDE_TWIN,
    OKABE_ITO,
    PALETTE,
    _fmt_latency,
    _label,
    _new_figure,
    _percentiles,
    _records,
    _short,
    _title,
    _unit,
)
from labkit.telemetry import TelemetrySample, cpu_samples

__all__ = ["plot_request_share", "plot_timeline"]


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
            msg = (
                f"No successful request says which {key.replace('_id', '')} served it; the server "
                f"must send the attribution headers (labkit.load.SERVER_HEADER_*)."
            )
            raise ConfigError(msg, field="by", value=key)
        ids = list(share)
        shares = [share[i] for i in ids]
        counts = {i: round(share[i] * total) for i in ids}
        jain = stats.load_balance_index(share)
        xs = range(len(ids))
        ax.bar(xs, [s * 100 for s in shares], color=[PALETTE[i % len(PALETTE)] for i in xs])
        for x, ident, fraction in zip(xs, ids, shares, strict=True):
            ax.text(x, fraction * 100, f"{counts[ident]} ({fraction:.0%})", ha="center", va="bottom", fontsize=9)
        even = 100 / len(ids)
        ax.axhline(even, color="0.3", linestyle="--", linewidth=1.2, label=f"even share = {even:.0f}%")
        ax.set_xticks(list(xs), [_short(i) for i in ids], rotation=0 if len(ids) < 6 else 45)
        ax.set_ylabel("share of requests (%)")
        ax.set_ylim(0, max(max(shares) * 100 * 1.2, even * 1.2))
        ax.set_title(f"per {key.replace('_id', '')}: {len(ids)} serving, Jain's index {jain:.2f}", fontsize=10)
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
    samples = [
        s if isinstance(s, TelemetrySample) else TelemetrySample.from_dict(s)
        for s in (getattr(telemetry, "samples", telemetry) or [])
    ]
    t0 = min(r.scheduled_s for r in recs) if t0_s is None else t0_s
    cpu = [s for s in samples if s.cpu_percent is not None and s.role != "gpu"]
    fig, axes = _new_figure(
        3 if cpu else 2,
        height_ratios=[2, 1.3, 1] if cpu else [2, 1.3],
        figsize=(11.0, 7.0 if cpu else 5.5),
        sharex=True,
    )
    ax_lat, ax_eng = axes[0], axes[1]

    measured = [(r, stats.latency_values([r], metric, include_failures=False)) for r in recs if r.status == "ok"]
    ok = [(r, v[0]) for r, v in measured if v]
    values = stats.latency_values(recs, metric)
    unit, scale = _unit(max(values) if values else 1.0)
    replicas = sorted({r.replica_id or "?" for r, _ in ok})
    for i, rep in enumerate(replicas[: len(PALETTE)]):
        pts = [(r.done_s - t0, v * scale) for r, v in ok if (r.replica_id or "?") == rep]
        ax_lat.scatter(
            [p[0] for p in pts],
            [p[1] for p in pts],
            s=10,
            color=PALETTE[i],
            alpha=0.8,
            label=f"replica {_short(rep)}" if len(replicas) > 1 else "ok",
            linewidths=0,
        )
    if len(replicas) > len(PALETTE):
        pts = [(r.done_s - t0, v * scale) for r, v in ok if (r.replica_id or "?") in replicas[len(PALETTE) :]]
        ax_lat.scatter([p[0] for p in pts], [p[1] for p in pts], s=10, color="0.5", label="other replicas")
    errors = [r for r in recs if r.status != "ok"]
    if errors:
        ax_lat.scatter(
            [r.done_s - t0 for r in errors],
            [(r.done_s - r.scheduled_s) * scale for r in errors],
            marker="x",
            color=OKABE_ITO["vermillion"],
            s=25,
            label=f"failed ({len(errors)})",
        )
    if values:
        p99 = _percentiles(values, [99])[99]
        ax_lat.axhline(
            p99 * scale,
            color=OKABE_ITO["vermillion"],
            linestyle="-.",
            linewidth=1.5,
            label=f"p99 = {_fmt_latency(p99)}",
        )
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
        ax_eng.step(
            [s.t_s - t0 for s in ss],
            [s.active for s in ss],
            where="post",
            color=PALETTE[i % len(PALETTE)],
            linewidth=1.6,
            label=f"engine {_short(comp)} running+waiting",
        )
    coord = [s for s in samples if s.role == "coordinator" and s.waiting is not None]
    if coord:
        ax_eng.step(
            [s.t_s - t0 for s in coord],
            [s.waiting for s in coord],
            where="post",
            color=OKABE_ITO["vermillion"],
            linestyle="--",
            linewidth=1.6,
            label="coordinator queue",
        )
    ax_eng.set_ylabel("requests")
    ax_eng.set_ylim(bottom=0)
    handles, labels = ax_eng.get_legend_handles_labels()
    gpu = [s for s in samples if s.gpu_util_percent is not None]
    if gpu:
        ax_gpu = ax_eng.twinx()
        for i, comp in enumerate(sorted({s.component_id for s in gpu})):
            ss = [s for s in gpu if s.component_id == comp]
            ax_gpu.plot(
                [s.t_s - t0 for s in ss],
                [s.gpu_util_percent for s in ss],
                linestyle=":",
                color=PALETTE[(i + 4) % len(PALETTE)],
                linewidth=1.2,
                label=f"{comp} util %",
            )
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
            ax_cpu.plot(
                [s.t_s - t0 for s in ss],
                [s.cpu_percent for s in ss],
                color=PALETTE[i % len(PALETTE)],
                linestyle=_LINESTYLES[(i // len(PALETTE)) % 4],
                linewidth=1.2,
                label=f"{role} {_short(comp)}",
            )
        ax_cpu.axhline(100, color="0.3", linestyle=":", linewidth=1, label="one core")
        ax_cpu.set_ylabel("CPU (%)")
        ax_cpu.set_ylim(0, max(105.0, 1.1 * max(float(s.cpu_percent or 0) for s in cpu)))
        ax_cpu.legend(fontsize=8, **_OUTSIDE)
        ax_cpu.grid(True, alpha=0.3)
    axes[-1].set_xlabel("time since start (s), load generator clock")
    fig.suptitle(title or _title(name, f"{_label(metric)} and engine activity over time"))
    return fig
