"""Figure of every hop of a request: one histogram per hop, one colour per door or topology."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from labkit import stats
from labkit.errors import ConfigError
from labkit.plots.style import PALETTE, _new_figure, _records

__all__ = ["plot_hops"]


def _hop_values(data: Any, offsets: Mapping[str, float] | None) -> dict[str, list[float]]:
    if isinstance(data, Mapping):
        return {hop: list(v) for hop, v in data.items()}
    return {hop: v["values"] for hop, v in stats.hop_breakdown(_records(data), offsets=offsets).items()}


def plot_hops(
    runs: Mapping[str, Any],
    *,
    hops: Sequence[str] | None = None,
    offsets: Mapping[str, float] | None = None,
    title: str | None = None,
) -> Any:
    """Draw one histogram per hop (milliseconds, log axis), each run in its own colour, p50 in the legend.

    Parameters
    ----------
    runs : mapping
        ``{label: records}`` (a list of RequestRecord or a LoadResult), or ``{label: {hop: [seconds]}}``
        (e.g. the ``values`` of :func:`labkit.stats.hop_breakdown`).
    hops : sequence of str, optional
        Hops to draw, from :data:`labkit.stats.HOPS`; default every hop some run has.
    offsets : mapping, optional
        Clock offsets for records (see :func:`labkit.stats.hop_times`).
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        One row per hop.

    Raises
    ------
    ConfigError
        No run has a hop stamp (e.g. records from a server other than the kit's).
    """
    values = {label: _hop_values(data, offsets) for label, data in runs.items()}
    wanted = list(hops) if hops is not None else [h for h in stats.HOPS if any(v.get(h) for v in values.values())]
    wanted = [h for h in wanted if h != "send_lag" or hops is not None]  # the client's own hop only on request
    if not wanted:
        msg = "No hop stamps in these runs: the kit's replicas add them (vLLM alone does not)."
        raise ConfigError(msg, field="runs", value=sorted(runs))
    np = stats.distribution._np()
    outside = len(values) > 3  # many runs: the legend beside each axis, not over the bars
    fig, axes = _new_figure(len(wanted), figsize=(11.0 if outside else 8.0, 1.35 * len(wanted) + 0.6))
    for ax, hop in zip(axes, wanted, strict=True):
        samples = [np.asarray(values[label].get(hop) or [], dtype=float) * 1000 for label in values]
        positive = np.concatenate([s[s > 0] for s in samples]) if samples else np.array([])
        lo = max(float(positive.min()), 1e-3) if positive.size else 1e-3
        hi = max(float(positive.max()), lo * 10) if positive.size else 1.0
        edges = np.geomspace(lo, hi, 40)
        for i, (label, ms) in enumerate(zip(values, samples, strict=True)):
            if ms.size == 0:
                continue
            p50 = float(np.percentile(ms, 50))
            drawn = ms[ms > 0]  # a log axis has no 0: those are counted in the legend, not drawn
            text = f"{label}: p50 {p50:.2f} ms (n={ms.size}"
            text += f", {ms.size - drawn.size} at <= 0 not drawn)" if drawn.size < ms.size else ")"
            colour = PALETTE[i % len(PALETTE)]
            if drawn.size:
                ax.hist(drawn, bins=edges, histtype="step", linewidth=1.6, color=colour, label=text)
            else:
                ax.plot([], [], color=colour, linewidth=1.6, label=text)
        ax.set_xscale("log")
        ax.set_ylabel("count")
        ax.set_title(stats.HOP_LABELS.get(hop, hop), fontsize=9, loc="left")
        if outside:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        else:
            ax.legend(fontsize=7, loc="upper right")
    axes[-1].set_xlabel("milliseconds (log scale)")
    if title:
        fig.suptitle(title)
    return fig
