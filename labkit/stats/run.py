"""Summary of a whole run: rates, goodput, per-node / per-replica shares, balance, decomposition.

Owns: :func:`share_by`, :func:`load_balance_index` (Jain's index), :func:`decompose_latency`,
goodput against SLOs (:data:`SLO_KEYS`), :class:`RunSummary` and :func:`summarize_run`, which
puts them together with a :class:`~labkit.stats.latency.LatencySummary` of every metric.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from labkit.errors import ConfigError
from labkit.stats.distribution import _np
from labkit.stats.latency import METRICS, LatencySummary, _clean, _ms, _selected, summarize_latencies

if TYPE_CHECKING:
    from labkit.contracts import RequestRecord

__all__ = ["RunSummary", "decompose_latency", "load_balance_index", "share_by", "summarize_run"]

SLO_KEYS = ("ttft_s", "e2e_s", "tpot_s", "itl_s")


def share_by(
    records: Iterable[RequestRecord], key: str = "node_id", *, include_warmup: bool = False
) -> dict[str, float]:
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
    parts: dict[str, list[float]] = {
        k: []
        for k in ("schedule_lag", "pre_engine", "coordinator_wait", "engine_queue", "prefill", "decode", "residual")
    }
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
        return _clean(
            {
                "requests": self.requests,
                "ok": self.ok,
                "errors": self.errors,
                "error_rate": self.error_rate,
                "statuses": dict(self.statuses),
                "warmup_excluded": self.warmup_excluded,
                "duration_s": self.duration_s,
                "offered_rate_rps": self.offered_rate_rps,
                "achieved_rate_rps": self.achieved_rate_rps,
                "throughput_rps": self.throughput_rps,
                "output_tokens_per_s": self.output_tokens_per_s,
                "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
                "goodput": self.goodput,
                "node_share": dict(self.node_share),
                "replica_share": dict(self.replica_share),
                "node_balance_index": self.node_balance_index,
                "replica_balance_index": self.replica_balance_index,
                "decomposition": self.decomposition,
                "notes": list(self.notes),
            }
        )

    def __repr__(self) -> str:
        def rate(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.1f}"

        lines = [
            f"RunSummary: {self.requests} requests, {self.errors} failed ({self.error_rate:.1%}), "
            "\n  "
            f"offered {rate(self.offered_rate_rps)} req/s, "
            f"achieved {rate(self.achieved_rate_rps)} req/s, "
            f"throughput {rate(self.throughput_rps)} req/s"
        ]
        lines += [f"  {m!r}" for m in self.metrics.values() if m.count]
        if self.node_share:
            lines.append(f"  node share {self.node_share} (balance index {self.node_balance_index:.3f})")
        if self.goodput:
            lines.append(
                f"  goodput {self.goodput['goodput_rps']:.2f} req/s "
                f"({self.goodput['fraction']:.1%} within {self.goodput['slo']})"
            )
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        qs = next((list(m.percentiles) for m in self.metrics.values()), [])
        head = "".join(f"<th>{html.escape(q)}</th>" for q in qs)
        rows = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{m.count}</td>"
            + "".join(f"<td>{_ms(m.percentiles.get(q))}</td>" for q in qs)
            + "</tr>"
            for name, m in self.metrics.items()
            if m.count
        )
        rate = "n/a" if self.achieved_rate_rps is None else f"{self.achieved_rate_rps:.1f}"
        offered = "n/a" if self.offered_rate_rps is None else f"{self.offered_rate_rps:.1f}"
        caption = (
            f"{self.requests} requests, {self.errors} failed ({self.error_rate:.1%}); "
            f"offered {offered} req/s, achieved {rate} req/s"
        )
        return f"<table><caption>{html.escape(caption)}</caption><tr><th>metric</th><th>n</th>{head}</tr>{rows}</table>"


def _goodput(recs: list[RequestRecord], slo: Mapping[str, float], duration_s: float) -> dict[str, Any]:
    unknown = sorted(set(slo) - set(SLO_KEYS))
    if unknown:
        msg = f"Unknown SLO keys {unknown}. Available: {list(SLO_KEYS)} (seconds)."
        raise ConfigError(msg, field="slo", value=dict(slo))
    good = 0
    for r in recs:
        if r.status != "ok":
            continue
        checks = {"ttft_s": r.ttft_s, "e2e_s": r.e2e_s, "tpot_s": r.tpot_s, "itl_s": max(r.itl_s) if r.itl_s else None}
        if all(checks[k] is not None and cast(float, checks[k]) <= v for k, v in slo.items() if k != "itl_s") and (
            "itl_s" not in slo or checks["itl_s"] is None or checks["itl_s"] <= slo["itl_s"]
        ):
            good += 1
    return {
        "slo": dict(slo),
        "good": good,
        "fraction": good / len(recs) if recs else math.nan,
        "goodput_rps": good / duration_s if duration_s > 0 else math.nan,
    }


def summarize_run(
    records: Iterable[RequestRecord],
    *,
    offered_rate_rps: float | None = None,
    slo: Mapping[str, float] | None = None,
    ci: bool = True,
    include_warmup: bool = False,
) -> RunSummary:
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
        requests=n,
        ok=ok,
        errors=n - ok,
        error_rate=(n - ok) / n if n else 0.0,
        statuses=statuses,
        warmup_excluded=len(all_recs) - n,
        duration_s=duration,
        offered_rate_rps=offered_rate_rps if offered_rate_rps is not None else inferred,
        achieved_rate_rps=achieved,
        throughput_rps=ok / duration if duration > 0 else None,
        output_tokens_per_s=sum(tokens) / duration if tokens and duration > 0 else None,
        metrics=metrics,
        goodput=_goodput(recs, slo, duration) if slo else None,
        node_share=node_share,
        replica_share=replica_share,
        node_balance_index=load_balance_index(node_share) if node_share else None,
        replica_balance_index=load_balance_index(replica_share) if replica_share else None,
        decomposition=decompose_latency(recs, include_warmup=True),
        notes=notes,
    )
