"""Latency samples of a run and their summary, :class:`LatencySummary`.

Owns: :data:`METRICS`, the samples behind each metric (:func:`latency_values`, with failures
counted at their time-out), :class:`LatencySummary` and :func:`summarize_latencies`. The metric
definitions and the rules for failures and warm-up records are those of the :mod:`labkit.stats`
package docstring ("the module docstring" below).
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from labkit.errors import ConfigError
from labkit.stats.distribution import DEFAULT_PERCENTILES, _bootstrap_many, _np, _order_statistic_ci, percentiles

if TYPE_CHECKING:
    from labkit.contracts import RequestRecord

__all__ = ["METRICS", "LatencySummary", "latency_values", "summarize_latencies"]

METRICS = ("e2e", "e2e_uncorrected", "ttft", "ttft_uncorrected", "itl", "tpot", "schedule_lag")
# Above this many samples the confidence interval is the distribution-free order-statistic
# interval (what the bootstrap converges to) instead of 1000 resamples of a huge array.
_BOOTSTRAP_MAX_N = 10_000
_PENALIZED = ("e2e", "e2e_uncorrected", "ttft", "ttft_uncorrected")


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN / inf become None, tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


# --------------------------------------------------------------------------- samples
def _selected(records: Iterable[RequestRecord], include_warmup: bool) -> list[RequestRecord]:
    return [r for r in records if include_warmup or not r.warmup]


def _value(r: RequestRecord, metric: str) -> float | None:
    if metric == "e2e":
        return r.done_s - r.scheduled_s
    if metric == "e2e_uncorrected":
        return r.done_s - r.sent_s
    if metric == "ttft":
        return None if r.first_token_s is None else r.first_token_s - r.scheduled_s
    if metric == "ttft_uncorrected":
        return None if r.first_token_s is None else r.first_token_s - r.sent_s
    if metric == "tpot":
        return r.tpot_s
    return r.sent_s - r.scheduled_s  # schedule_lag


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        msg = f"Unknown metric {metric!r}. Available: {list(METRICS)}."
        raise ConfigError(msg, field="metric", value=metric)


def _samples(records: list[RequestRecord], metric: str) -> tuple[list[float], list[float], float | None]:
    """(all samples, samples of ok requests, the value one failure counted as or None)."""
    _check_metric(metric)
    if metric == "itl":
        ok = [g for r in records if r.status == "ok" for g in r.itl_s]
        return ok, ok, None
    if metric == "schedule_lag":
        vals = [r.sent_s - r.scheduled_s for r in records]
        ok = [r.sent_s - r.scheduled_s for r in records if r.status == "ok"]
        return vals, ok, None
    ok = [v for r in records if r.status == "ok" and (v := _value(r, metric)) is not None]
    if metric == "tpot":
        return ok, ok, None
    if metric.startswith("ttft") and not ok:
        return [], [], None  # no streamed first token anywhere: nothing to say about TTFT
    worst_ok = max(ok) if ok else None
    base_uncorrected = metric.endswith("uncorrected")
    vals = list(ok)
    failure_max = None
    for r in records:
        if r.status == "ok":
            continue
        measured = r.done_s - (r.sent_s if base_uncorrected else r.scheduled_s)
        floor = r.timeout_s if r.timeout_s is not None else worst_ok
        v = measured if floor is None else max(floor, measured)
        vals.append(v)
        failure_max = v if failure_max is None else max(failure_max, v)
    return vals, ok, failure_max


def latency_values(
    records: Iterable[RequestRecord],
    metric: str = "e2e",
    *,
    include_failures: bool = True,
    include_warmup: bool = False,
) -> list[float]:
    """The raw samples behind a metric (what a histogram or a verification log needs).

    Parameters
    ----------
    records : iterable of RequestRecord
        Records of one run.
    metric : str
        One of :data:`METRICS`.
    include_failures : bool
        Count failures as the module docstring says; False gives successful requests only.
    include_warmup : bool
        Keep warm-up records.

    Returns
    -------
    list of float
        Seconds, in record order.

    Raises
    ------
    ConfigError
        Unknown metric.
    """
    vals, ok, _ = _samples(_selected(records, include_warmup), metric)
    return vals if include_failures else ok


# --------------------------------------------------------------------------- summaries
@dataclass(frozen=True)
class LatencySummary:
    """Distribution of one latency metric over one run (seconds).

    ``count`` samples (failures included as the module docstring says) from ``requests``
    records, ``errors`` of which failed. ``ci`` maps each percentile label to a
    ``(low, high)`` interval at ``confidence`` computed by ``ci_method``.
    """

    metric: str
    count: int
    requests: int
    errors: int
    error_rate: float
    mean: float
    std: float
    min: float
    max: float
    percentiles: dict[str, float]
    ok_percentiles: dict[str, float]
    ci: dict[str, tuple[float, float]] | None = None
    confidence: float = 0.95
    ci_method: str | None = None  # "bootstrap" | "order_statistic"
    failure_value_s: float | None = None  # the largest value a failure counted as
    unit: str = "s"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (NaN as None)."""
        return _clean(
            {
                "metric": self.metric,
                "unit": self.unit,
                "count": self.count,
                "requests": self.requests,
                "errors": self.errors,
                "error_rate": self.error_rate,
                "mean": self.mean,
                "std": self.std,
                "min": self.min,
                "max": self.max,
                "percentiles": dict(self.percentiles),
                "ok_percentiles": dict(self.ok_percentiles),
                "ci": None if self.ci is None else {k: list(v) for k, v in self.ci.items()},
                "confidence": self.confidence,
                "ci_method": self.ci_method,
                "failure_value_s": self.failure_value_s,
            }
        )

    def __repr__(self) -> str:
        ps = "  ".join(f"{k}={_ms(v)}" for k, v in self.percentiles.items())
        return (
            f"LatencySummary({self.metric}: n={self.count}, errors={self.errors} "
            f"({self.error_rate:.1%}), mean={_ms(self.mean)}  {ps})"
        )

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(k)}</th>" for k in self.percentiles)
        cells = "".join(f"<td>{_ms(v)}</td>" for v in self.percentiles.values())
        ci = ""
        if self.ci:
            ci = "<tr><td>CI</td>" + "".join(f"<td>{_ms(lo)}–{_ms(hi)}</td>" for lo, hi in self.ci.values()) + "</tr>"
        return (
            f"<table><caption>{html.escape(self.metric)}: n={self.count}, errors={self.errors} "
            f"({self.error_rate:.1%}), mean {_ms(self.mean)}</caption>"
            f"<tr><th></th>{head}</tr><tr><td>value</td>{cells}</tr>{ci}</table>"
        )


def _ms(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v * 1e3:.2f} ms"


def summarize_latencies(
    records: Iterable[RequestRecord],
    metric: str = "e2e",
    *,
    ci: bool = True,
    qs: Sequence[float] = DEFAULT_PERCENTILES,
    confidence: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
    include_warmup: bool = False,
) -> LatencySummary:
    """Summarize one latency metric of a run.

    Parameters
    ----------
    records : iterable of RequestRecord
        Records of one run.
    metric : str
        One of :data:`METRICS`.
    ci : bool
        Compute confidence intervals: a percentile bootstrap of ``n_boot`` resamples up to
        10,000 samples, the order-statistic (binomial) interval above.
    qs : sequence of float
        Percentiles to report.
    confidence : float
        Coverage of the intervals.
    n_boot : int
        Bootstrap resamples.
    seed : int
        Bootstrap seed.
    include_warmup : bool
        Keep warm-up records.

    Returns
    -------
    LatencySummary
        Count, errors, error rate, mean, percentiles (failures included), percentiles of
        successes alone, and intervals.

    Raises
    ------
    ConfigError
        Unknown metric or percentile out of range.
    """
    np = _np()
    recs = _selected(records, include_warmup)
    vals, ok, failure_value = _samples(recs, metric)
    if metric == "schedule_lag":
        counted = recs
    elif metric.startswith("ttft") and not vals:
        counted = []
    else:
        counted = recs
    errors = sum(1 for r in counted if r.status != "ok")
    arr = np.asarray(vals, dtype=float)
    pct = percentiles(arr, qs)
    intervals = None
    method = None
    if ci and arr.size:
        if arr.size <= _BOOTSTRAP_MAX_N:
            intervals, method = _bootstrap_many(arr, qs, n_boot, confidence, seed), "bootstrap"
        else:
            intervals, method = _order_statistic_ci(arr, qs, confidence), "order_statistic"
    return LatencySummary(
        metric=metric,
        count=int(arr.size),
        requests=len(counted),
        errors=errors,
        error_rate=errors / len(counted) if counted else 0.0,
        mean=float(arr.mean()) if arr.size else math.nan,
        std=float(arr.std()) if arr.size else math.nan,
        min=float(arr.min()) if arr.size else math.nan,
        max=float(arr.max()) if arr.size else math.nan,
        percentiles=pct,
        ok_percentiles=percentiles(ok, qs),
        ci=intervals,
        confidence=confidence,
        ci_method=method,
        failure_value_s=failure_value,
    )
