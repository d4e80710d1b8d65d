"""Shared by every figure: the palette, labels, the samples drawn, a blank Figure, and :func:`save_figure`.

Owns the Okabe-Ito colours and percentile line styles, the helpers that turn records into the
values drawn (definitions from :mod:`labkit.stats`), and the one place matplotlib is imported
(inside :func:`_new_figure`, so importing :mod:`labkit.plots` stays light).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from labkit import stats
from labkit.contracts import RequestRecord
from labkit.errors import ConfigError

__all__ = ["METRIC_LABELS", "OKABE_ITO", "PALETTE", "save_figure"]

OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
}
PALETTE = tuple(
    OKABE_ITO[c]
    for c in ("blue", "orange", "bluish_green", "vermillion", "reddish_purple", "sky_blue", "black", "yellow")
)
_LINESTYLES = ("-", "--", "-.", ":")
_PCT_STYLE = {
    50: (OKABE_ITO["bluish_green"], "-"),
    90: (OKABE_ITO["sky_blue"], (0, (5, 1))),
    95: (OKABE_ITO["orange"], "--"),
    99: (OKABE_ITO["vermillion"], "-."),
    99.9: (OKABE_ITO["reddish_purple"], ":"),
}
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
        msg = (
            f"No requests{who} have a {metric!r} value to plot. Check that the run produced "
            f"records with status 'ok' (and first-token times for TTFT)."
        )
        raise ConfigError(msg, field="records", value=0)
    return values


def _percentiles(values: Iterable[float], qs: Sequence[float]) -> dict[float, float]:
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


def _new_figure(
    nrows: int = 1,
    *,
    height_ratios: Sequence[float] | None = None,
    figsize: tuple[float, float] = (8.0, 4.5),
    sharex: bool = False,
) -> tuple[Any, Any]:
    # matplotlib is heavy; the Figure is built without pyplot, so no backend or display is needed.
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(
        nrows, 1, sharex=sharex, squeeze=False, gridspec_kw={"height_ratios": height_ratios} if height_ratios else None
    )
    return fig, [row[0] for row in axes]


def save_figure(
    fig: Any, path_without_suffix: str | Path, *, formats: Sequence[str] = ("png", "svg"), dpi: int = 150
) -> list[Path]:
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
