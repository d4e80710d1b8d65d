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
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from labkit.errors import ConfigError

if TYPE_CHECKING:
    from labkit.load import RequestRecord

__all__ = [
    "DEFAULT_PERCENTILES",
    "METRICS",
    "LatencySummary",
    "RunSummary",
    "bootstrap_ci",
    "decompose_latency",
    "histogram_bins",
    "latency_values",
    "load_balance_index",
    "percentile_label",
    "percentiles",
    "share_by",
    "summarize_latencies",
    "summarize_run",
]

METRICS = ("e2e", "e2e_uncorrected", "ttft", "ttft_uncorrected", "itl", "tpot", "schedule_lag")
DEFAULT_PERCENTILES = (50, 90, 95, 99, 99.9)
SLO_KEYS = ("ttft_s", "e2e_s", "tpot_s", "itl_s")
# Above this many samples the confidence interval is the distribution-free order-statistic
# interval (what the bootstrap converges to) instead of 1000 resamples of a huge array.
_BOOTSTRAP_MAX_N = 10_000
_PENALIZED = ("e2e", "e2e_uncorrected", "ttft", "ttft_uncorrected")


def _np() -> Any:
    import numpy  # heavy-ish: imported on first use, not with labkit

    return numpy


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN / inf become None, tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def percentile_label(q: float) -> str:
    """Name a percentile: 50 -> ``"p50"``, 99.9 -> ``"p99.9"``.

    Parameters
    ----------
    q : float
        Percentile in [0, 100].

    Returns
    -------
    str
        The label used as key in every summary.
    """
    return f"p{float(q):g}"


# --------------------------------------------------------------------------- primitives
def percentiles(values: Iterable[float], qs: Sequence[float] = DEFAULT_PERCENTILES) -> dict[str, float]:
    """Percentiles of ``values``, identical to ``numpy.percentile`` (linear interpolation).

    Parameters
    ----------
    values : iterable of float
        Samples.
    qs : sequence of float
        Percentiles in [0, 100].

    Returns
    -------
    dict
        ``{"p50": ..., "p99.9": ...}``; NaN for every q when ``values`` is empty.

    Raises
    ------
    ConfigError
        A q outside [0, 100].
    """
    np = _np()
    for q in qs:
        if not 0 <= q <= 100:
            msg = f"Percentile {q!r} is outside [0, 100]. Pass qs like (50, 99, 99.9)."
            raise ConfigError(msg, field="qs", value=q)
    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0:
        return {percentile_label(q): math.nan for q in qs}
    res = np.percentile(arr, list(qs))
    return {percentile_label(q): float(v) for q, v in zip(qs, res, strict=True)}


def _bootstrap_many(arr: Any, qs: Sequence[float], n_boot: int, confidence: float, seed: int) -> dict:
    np = _np()
    n = arr.size
    if n == 0:
        return {percentile_label(q): (math.nan, math.nan) for q in qs}
    if n == 1:
        return {percentile_label(q): (float(arr[0]), float(arr[0])) for q in qs}
    rng = np.random.default_rng(seed)
    rows = max(1, 4_000_000 // n)  # resample in blocks of ~4M values to bound memory
    stats = []
    done = 0
    while done < n_boot:
        b = min(rows, n_boot - done)
        sample = arr[rng.integers(0, n, size=(b, n))]
        stats.append(np.percentile(sample, list(qs), axis=1).T)  # (b, len(qs))
        done += b
    all_stats = np.concatenate(stats, axis=0)
    alpha = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(all_stats, [alpha, 100 - alpha], axis=0)
    return {percentile_label(q): (float(lo[k]), float(hi[k])) for k, q in enumerate(qs)}


def _order_statistic_ci(arr: Any, qs: Sequence[float], confidence: float) -> dict:
    from statistics import NormalDist

    np = _np()
    s = np.sort(arr)
    n = s.size
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    out = {}
    for q in qs:
        p = q / 100
        half = z * math.sqrt(n * p * (1 - p))
        lo = min(max(int(math.floor(n * p - half)) - 1, 0), n - 1)
        hi = min(max(int(math.ceil(n * p + half)), 0), n - 1)
        out[percentile_label(q)] = (float(s[lo]), float(s[hi]))
    return out


def bootstrap_ci(values: Iterable[float], q: float, *, n_boot: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the q-th percentile.

    Parameters
    ----------
    values : iterable of float
        Samples.
    q : float
        Percentile in [0, 100].
    n_boot : int
        Resamples.
    confidence : float
        Coverage in (0, 1).
    seed : int
        Seed of the resampling (the interval is deterministic).

    Returns
    -------
    tuple of float
        ``(low, high)``; NaN for no samples, ``(v, v)`` for one.

    Raises
    ------
    ConfigError
        ``q``, ``n_boot`` or ``confidence`` out of range.
    """
    if not 0 <= q <= 100 or n_boot < 1 or not 0 < confidence < 1:
        msg = (f"bootstrap_ci needs 0 <= q <= 100, n_boot >= 1, 0 < confidence < 1; got q={q!r}, "
               f"n_boot={n_boot!r}, confidence={confidence!r}.")
        raise ConfigError(msg, field="q", value=q)
    arr = _np().asarray(list(values), dtype=float)
    return _bootstrap_many(arr, [q], n_boot, confidence, seed)[percentile_label(q)]


def histogram_bins(values: Iterable[float], *, bins: int = 40, log: bool = False) -> Any:
    """Bin edges for a latency histogram, linear or log-spaced.

    Parameters
    ----------
    values : iterable of float
        Samples; non-finite ones (and, with ``log``, non-positive ones) are ignored.
    bins : int
        Number of bins (edges = bins + 1).
    log : bool
        Log-spaced edges (``numpy.geomspace``), for tails spanning decades.

    Returns
    -------
    numpy.ndarray
        ``bins + 1`` increasing edges covering every used value; ``[0, 1]`` split evenly when
        there is nothing to bin. Pass to ``numpy.histogram`` or ``plt.hist(..., bins=edges)``.

    Raises
    ------
    ConfigError
        ``bins`` < 1.
    """
    np = _np()
    if not isinstance(bins, int) or bins < 1:
        msg = f"histogram_bins needs bins >= 1, got {bins!r}. Pass bins=40."
        raise ConfigError(msg, field="bins", value=bins)
    arr = np.asarray(list(values), dtype=float)
    arr = arr[np.isfinite(arr)]
    if log:
        arr = arr[arr > 0]
    if arr.size == 0:
        return np.geomspace(1e-3, 1.0, bins + 1) if log else np.linspace(0.0, 1.0, bins + 1)
    lo, hi = float(arr.min()), float(arr.max())
    if log:
        if hi <= lo:
            lo, hi = lo / 1.1, hi * 1.1
        return np.geomspace(lo, hi, bins + 1)
    if hi <= lo:
        pad = abs(lo) * 0.05 or 0.5
        lo, hi = lo - pad, hi + pad
    return np.linspace(lo, hi, bins + 1)


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


def latency_values(records: Iterable[RequestRecord], metric: str = "e2e", *, include_failures: bool = True,
                   include_warmup: bool = False) -> list[float]:
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
        return _clean({
            "metric": self.metric, "unit": self.unit, "count": self.count, "requests": self.requests,
            "errors": self.errors, "error_rate": self.error_rate, "mean": self.mean, "std": self.std,
            "min": self.min, "max": self.max, "percentiles": dict(self.percentiles),
            "ok_percentiles": dict(self.ok_percentiles),
            "ci": None if self.ci is None else {k: list(v) for k, v in self.ci.items()},
            "confidence": self.confidence, "ci_method": self.ci_method,
            "failure_value_s": self.failure_value_s,
        })

    def __repr__(self) -> str:
        ps = "  ".join(f"{k}={_ms(v)}" for k, v in self.percentiles.items())
        return (f"LatencySummary({self.metric}: n={self.count}, errors={self.errors} "
                f"({self.error_rate:.1%}), mean={_ms(self.mean)}  {ps})")

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(k)}</th>" for k in self.percentiles)
        cells = "".join(f"<td>{_ms(v)}</td>" for v in self.percentiles.values())
        ci = ""
        if self.ci:
            ci = "<tr><td>CI</td>" + "".join(
                f"<td>{_ms(lo)}–{_ms(hi)}</td>" for lo, hi in self.ci.values()) + "</tr>"
        return (f"<table><caption>{html.escape(self.metric)}: n={self.count}, errors={self.errors} "
                f"({self.error_rate:.1%}), mean {_ms(self.mean)}</caption>"
                f"<tr><th></th>{head}</tr><tr><td>value</td>{cells}</tr>{ci}</table>")


def _ms(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v * 1e3:.2f} ms"


def summarize_latencies(records: Iterable[RequestRecord], metric: str = "e2e", *, ci: bool = True,
                        qs: Sequence[float] = DEFAULT_PERCENTILES, confidence: float = 0.95,
                        n_boot: int = 1000, seed: int = 0, include_warmup: bool = False) -> LatencySummary:
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
        metric=metric, count=int(arr.size), requests=len(counted), errors=errors,
        error_rate=errors / len(counted) if counted else 0.0,
        mean=float(arr.mean()) if arr.size else math.nan, std=float(arr.std()) if arr.size else math.nan,
        min=float(arr.min()) if arr.size else math.nan, max=float(arr.max()) if arr.size else math.nan,
        percentiles=pct, ok_percentiles=percentiles(ok, qs), ci=intervals, confidence=confidence,
        ci_method=method, failure_value_s=failure_value)


def share_by(records: Iterable[RequestRecord], key: str = "node_id", *,
             include_warmup: bool = False) -> dict[str, float]:
    """Fraction of successful requests served by each node or replica.

    Parameters
    ----------
    records : iterable of RequestRecord
        Records of one run.
    key : str
        ``"node_id"`` or ``"replica_id"``; requests without one count as ``"unknown"``.
    include_warmup : bool
        Keep warm-up records.

    Returns
    -------
    dict
        ``{id: share}`` summing to 1, sorted by id; empty when no request succeeded.

    Raises
    ------
    ConfigError
        Another key.
    """
    if key not in ("node_id", "replica_id"):
        msg = f"share_by key {key!r} is not supported. Available: ['node_id', 'replica_id']."
        raise ConfigError(msg, field="key", value=key)
    counts: dict[str, int] = {}
    for r in _selected(records, include_warmup):
        if r.status == "ok":
            k = getattr(r, key) or "unknown"
            counts[k] = counts.get(k, 0) + 1
    total = sum(counts.values())
    return {k: counts[k] / total for k in sorted(counts)} if total else {}


def load_balance_index(shares_or_counts: Mapping[str, float] | Sequence[float]) -> float:
    """Jain's fairness index of a load split: 1.0 is perfectly even, 1/n is all on one.

    ``J = (sum x)^2 / (n * sum x^2)`` over the n nodes (or replicas). It reads as "the
    fraction of the nodes that are effectively in use": 0.5 on 4 nodes is as uneven as two
    nodes carrying everything. Include nodes that got nothing (zeros) if you know them:
    :func:`share_by` only sees nodes that served something.

    Parameters
    ----------
    shares_or_counts : mapping or sequence of float
        Shares or counts per node (non-negative).

    Returns
    -------
    float
        In [1/n, 1]; NaN for an empty input or all zeros.

    Raises
    ------
    ConfigError
        A negative value.
    """
    xs = list(shares_or_counts.values()) if isinstance(shares_or_counts, Mapping) else list(shares_or_counts)
    if any(x < 0 for x in xs):
        msg = f"load_balance_index needs non-negative shares or counts, got {xs!r}."
        raise ConfigError(msg, field="shares_or_counts", value=xs)
    s, s2 = sum(xs), sum(x * x for x in xs)
    if not xs or s2 == 0:
        return math.nan
    return s * s / (len(xs) * s2)


def _describe(vals: list[float]) -> dict[str, float]:
    np = _np()
    arr = np.asarray(vals, dtype=float)
    p50, p99 = np.percentile(arr, [50, 99])
    return {"count": int(arr.size), "p50": float(p50), "p99": float(p99), "mean": float(arr.mean())}


def decompose_latency(records: Iterable[RequestRecord], *, include_warmup: bool = False) -> dict[str, dict]:
    """Split latency into client, pre-engine and engine parts where server timings exist.

    Components (seconds), each ``{"count", "p50", "p99", "mean"}`` over the successful
    requests that carry the timings it needs (a component with none is left out):

    - ``schedule_lag``: client, actual - intended send (every request);
    - ``pre_engine``: proxy + router + coordinator, ``client_to_replica_s + replica_wait_s``;
    - ``coordinator_wait``: the part of it spent waiting for a coordinator slot;
    - ``engine_queue``: ``engine_queue_s``;
    - ``prefill``: ``engine_ttft_s - engine_queue_s``;
    - ``decode``: ``engine_total_s - engine_ttft_s``;
    - ``residual``: ``e2e_uncorrected - pre_engine - engine_total_s`` (response path, network,
      client; negative values mean clock skew between client and server hosts).

    Parameters
    ----------
    records : iterable of RequestRecord
        Records of one run.
    include_warmup : bool
        Keep warm-up records.

    Returns
    -------
    dict
        ``{component: {"count", "p50", "p99", "mean"}}``.
    """
    recs = _selected(records, include_warmup)
    parts: dict[str, list[float]] = {k: [] for k in ("schedule_lag", "pre_engine", "coordinator_wait",
                                                     "engine_queue", "prefill", "decode", "residual")}
    for r in recs:
        parts["schedule_lag"].append(r.sent_s - r.scheduled_s)
        if r.status != "ok":
            continue
        s = r.server or {}
        pre = None
        if "client_to_replica_s" in s and "replica_wait_s" in s:
            pre = s["client_to_replica_s"] + s["replica_wait_s"]
            parts["pre_engine"].append(pre)
        if "coordinator_wait_s" in s:
            parts["coordinator_wait"].append(s["coordinator_wait_s"])
        if "engine_queue_s" in s:
            parts["engine_queue"].append(s["engine_queue_s"])
            if "engine_ttft_s" in s:
                parts["prefill"].append(s["engine_ttft_s"] - s["engine_queue_s"])
        if "engine_total_s" in s and "engine_ttft_s" in s:
            parts["decode"].append(s["engine_total_s"] - s["engine_ttft_s"])
        if pre is not None and "engine_total_s" in s:
            parts["residual"].append((r.done_s - r.sent_s) - pre - s["engine_total_s"])
    return {k: _describe(v) for k, v in parts.items() if v}


@dataclass(frozen=True)
class RunSummary:
    """Everything :mod:`labkit.stats` says about one run.

    Rates are requests per second over the measured window (first intended send to last
    completion). ``achieved_rate_rps`` is the rate at which requests actually left the
    client; ``throughput_rps`` the rate of successful completions.
    """

    requests: int
    ok: int
    errors: int
    error_rate: float
    statuses: dict[str, int]
    warmup_excluded: int
    duration_s: float
    offered_rate_rps: float | None
    achieved_rate_rps: float | None
    throughput_rps: float | None
    output_tokens_per_s: float | None
    metrics: dict[str, LatencySummary]
    goodput: dict[str, Any] | None = None
    node_share: dict[str, float] = field(default_factory=dict)
    replica_share: dict[str, float] = field(default_factory=dict)
    node_balance_index: float | None = None
    replica_balance_index: float | None = None
    decomposition: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (NaN as None)."""
        return _clean({
            "requests": self.requests, "ok": self.ok, "errors": self.errors, "error_rate": self.error_rate,
            "statuses": dict(self.statuses), "warmup_excluded": self.warmup_excluded,
            "duration_s": self.duration_s, "offered_rate_rps": self.offered_rate_rps,
            "achieved_rate_rps": self.achieved_rate_rps, "throughput_rps": self.throughput_rps,
            "output_tokens_per_s": self.output_tokens_per_s,
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
            "goodput": self.goodput, "node_share": dict(self.node_share),
            "replica_share": dict(self.replica_share), "node_balance_index": self.node_balance_index,
            "replica_balance_index": self.replica_balance_index, "decomposition": self.decomposition,
            "notes": list(self.notes),
        })

    def __repr__(self) -> str:
        def rate(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.1f}"

        lines = [f"RunSummary: {self.requests} requests, {self.errors} failed ({self.error_rate:.1%}), "
                 "\n  "
                 f"offered {rate(self.offered_rate_rps)} req/s, "
                 f"achieved {rate(self.achieved_rate_rps)} req/s, "
                 f"throughput {rate(self.throughput_rps)} req/s"]
        lines += [f"  {m!r}" for m in self.metrics.values() if m.count]
        if self.node_share:
            lines.append(f"  node share {self.node_share} (balance index {self.node_balance_index:.3f})")
        if self.goodput:
            lines.append(f"  goodput {self.goodput['goodput_rps']:.2f} req/s "
                         f"({self.goodput['fraction']:.1%} within {self.goodput['slo']})")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        qs = next((list(m.percentiles) for m in self.metrics.values()), [])
        head = "".join(f"<th>{html.escape(q)}</th>" for q in qs)
        rows = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{m.count}</td>"
            + "".join(f"<td>{_ms(m.percentiles.get(q))}</td>" for q in qs) + "</tr>"
            for name, m in self.metrics.items() if m.count)
        rate = "n/a" if self.achieved_rate_rps is None else f"{self.achieved_rate_rps:.1f}"
        offered = "n/a" if self.offered_rate_rps is None else f"{self.offered_rate_rps:.1f}"
        caption = (f"{self.requests} requests, {self.errors} failed ({self.error_rate:.1%}); "
                   f"offered {offered} req/s, achieved {rate} req/s")
        return (f"<table><caption>{html.escape(caption)}</caption><tr><th>metric</th><th>n</th>{head}</tr>"
                f"{rows}</table>")


def _goodput(recs: list[RequestRecord], slo: Mapping[str, float], duration_s: float) -> dict[str, Any]:
    unknown = sorted(set(slo) - set(SLO_KEYS))
    if unknown:
        msg = f"Unknown SLO keys {unknown}. Available: {list(SLO_KEYS)} (seconds)."
        raise ConfigError(msg, field="slo", value=dict(slo))
    good = 0
    for r in recs:
        if r.status != "ok":
            continue
        checks = {"ttft_s": r.ttft_s, "e2e_s": r.e2e_s, "tpot_s": r.tpot_s,
                  "itl_s": max(r.itl_s) if r.itl_s else None}
        if all(checks[k] is not None and checks[k] <= v for k, v in slo.items() if k != "itl_s") and (
                "itl_s" not in slo or checks["itl_s"] is None or checks["itl_s"] <= slo["itl_s"]):
            good += 1
    return {"slo": dict(slo), "good": good, "fraction": good / len(recs) if recs else math.nan,
            "goodput_rps": good / duration_s if duration_s > 0 else math.nan}


def summarize_run(records: Iterable[RequestRecord], *, offered_rate_rps: float | None = None,
                  slo: Mapping[str, float] | None = None, ci: bool = True,
                  include_warmup: bool = False) -> RunSummary:
    """Summarize a run: every metric, rates, goodput, shares, balance and decomposition.

    Parameters
    ----------
    records : iterable of RequestRecord
        Records of one run (warm-up records are left out unless ``include_warmup``).
    offered_rate_rps : float, optional
        The configured rate; None infers it from the intended send times.
    slo : mapping, optional
        Objectives in seconds, keys among ``ttft_s``, ``e2e_s``, ``tpot_s`` (corrected
        latencies, per request) and ``itl_s`` (the largest gap of a request). A request is
        "good" when it succeeded and meets all of them; goodput is good requests per second.
    ci : bool
        Confidence intervals for every metric.
    include_warmup : bool
        Keep warm-up records.

    Returns
    -------
    RunSummary
        The summary.

    Raises
    ------
    ConfigError
        An unknown SLO key.
    """
    all_recs = list(records)
    recs = _selected(all_recs, include_warmup)
    statuses: dict[str, int] = {}
    for r in recs:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    ok = statuses.get("ok", 0)
    n = len(recs)
    duration = (max(r.done_s for r in recs) - min(r.scheduled_s for r in recs)) if recs else 0.0
    sched = sorted(r.scheduled_s for r in recs)
    sent = sorted(r.sent_s for r in recs)
    inferred = None
    if offered_rate_rps is None and n > 1 and sched[-1] > sched[0]:
        inferred = (n - 1) / (sched[-1] - sched[0])
    achieved = (n - 1) / (sent[-1] - sent[0]) if n > 1 and sent[-1] > sent[0] else None
    tokens = [r.output_tokens for r in recs if r.status == "ok" and r.output_tokens is not None]
    notes = []
    if offered_rate_rps is None and inferred is not None:
        notes.append("offered rate inferred from the intended send times")
    missing = ok - len(tokens)
    if missing:
        notes.append(f"{missing} successful requests have no output token count (no usage, no tokenizer)")
    metrics = {m: summarize_latencies(recs, m, ci=ci, include_warmup=True) for m in METRICS}
    node_share = share_by(recs, "node_id", include_warmup=True)
    replica_share = share_by(recs, "replica_id", include_warmup=True)
    return RunSummary(
        requests=n, ok=ok, errors=n - ok, error_rate=(n - ok) / n if n else 0.0, statuses=statuses,
        warmup_excluded=len(all_recs) - n, duration_s=duration,
        offered_rate_rps=offered_rate_rps if offered_rate_rps is not None else inferred,
        achieved_rate_rps=achieved, throughput_rps=ok / duration if duration > 0 else None,
        output_tokens_per_s=sum(tokens) / duration if tokens and duration > 0 else None,
        metrics=metrics, goodput=_goodput(recs, slo, duration) if slo else None,
        node_share=node_share, replica_share=replica_share,
        node_balance_index=load_balance_index(node_share) if node_share else None,
        replica_balance_index=load_balance_index(replica_share) if replica_share else None,
        decomposition=decompose_latency(recs, include_warmup=True), notes=notes)
