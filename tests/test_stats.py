"""Tests of labkit.stats: pure functions over hand-built records."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.errors import ConfigError
from labkit.load import RequestRecord
from labkit.stats import (
    DEFAULT_PERCENTILES,
    METRICS,
    LatencySummary,
    RunSummary,
    bootstrap_ci,
    decompose_latency,
    histogram_bins,
    latency_values,
    load_balance_index,
    percentile_label,
    percentiles,
    share_by,
    summarize_latencies,
    summarize_run,
)


def _rec(i: int, *, sched: float | None = None, lag: float = 0.0, ttft: float | None = 0.1, e2e: float = 0.5,
         status: str = "ok", tokens: int | None = 5, gaps: list[float] | None = None, node: str | None = None,
         replica: str | None = None, server: dict | None = None, warmup: bool = False,
         timeout_s: float | None = 10.0) -> RequestRecord:
    s = float(i) if sched is None else sched
    sent = s + lag
    first = None if ttft is None else sent + ttft
    return RequestRecord(
        request_id=f"r{i}", scheduled_s=s, sent_s=sent, done_s=sent + e2e, status=status, warmup=warmup,
        first_token_s=first if status == "ok" else None, last_token_s=sent + e2e if first is not None else None,
        output_tokens=tokens if status == "ok" else None, itl_s=list(gaps or []), node_id=node,
        replica_id=replica, server=server or {}, timeout_s=timeout_s)


# --------------------------------------------------------------------------- percentiles
@pytest.mark.parametrize("n", [1, 2, 7, 100, 1001])
@pytest.mark.parametrize("qs", [DEFAULT_PERCENTILES, (0, 100), (12.5, 33.3, 99.99)])
def test_percentiles_equal_numpys(n, qs):
    values = np.random.default_rng(n).lognormal(size=n)
    got = percentiles(values.tolist(), qs)
    assert list(got) == [percentile_label(q) for q in qs]
    assert list(got.values()) == [float(v) for v in np.percentile(values, qs)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=1e4, allow_nan=False), min_size=1, max_size=200),
       st.floats(min_value=0, max_value=100))
def test_percentiles_equal_numpys_property(values, q):
    assert percentiles(values, [q])[percentile_label(q)] == float(np.percentile(values, q))


def test_percentile_labels_and_edge_cases():
    assert [percentile_label(q) for q in (50, 99.9, 12.5, 100.0)] == ["p50", "p99.9", "p12.5", "p100"]
    assert all(math.isnan(v) for v in percentiles([], (50, 99)).values())
    with pytest.raises(ConfigError, match="101"):
        percentiles([1.0], (101,))


# --------------------------------------------------------------------------- confidence intervals
def test_bootstrap_ci_brackets_the_estimate_and_is_deterministic():
    values = np.random.default_rng(0).exponential(size=500).tolist()
    lo, hi = bootstrap_ci(values, 99)
    assert lo <= float(np.percentile(values, 99)) <= hi
    assert (lo, hi) == bootstrap_ci(values, 99)
    assert bootstrap_ci(values, 99, seed=1) != (lo, hi)
    narrow = bootstrap_ci(values, 50, confidence=0.5)
    wide = bootstrap_ci(values, 50, confidence=0.99)
    assert wide[0] <= narrow[0] <= narrow[1] <= wide[1]


def test_bootstrap_ci_covers_the_true_percentile_most_of_the_time():
    rng = np.random.default_rng(3)
    true_p90 = -math.log(0.1)  # Exp(1)
    hits = sum(lo <= true_p90 <= hi for lo, hi in (
        bootstrap_ci(rng.exponential(size=300).tolist(), 90, n_boot=300, seed=k) for k in range(40)))
    assert hits >= 33  # 95% nominal; allow for a finite number of trials


@pytest.mark.parametrize(("values", "expected"), [([], (math.nan, math.nan)), ([3.0], (3.0, 3.0))])
def test_bootstrap_ci_degenerate(values, expected):
    got = bootstrap_ci(values, 50)
    assert all((math.isnan(a) and math.isnan(b)) or a == b for a, b in zip(got, expected, strict=True))


@pytest.mark.parametrize("kwargs", [{"q": 101}, {"q": 50, "n_boot": 0}, {"q": 50, "confidence": 1.0}])
def test_bootstrap_ci_rejects_bad_arguments(kwargs):
    q = kwargs.pop("q")
    with pytest.raises(ConfigError):
        bootstrap_ci([1.0, 2.0], q, **kwargs)


def test_large_samples_use_the_order_statistic_interval():
    recs = [_rec(0, gaps=np.random.default_rng(0).exponential(0.01, size=20_000).tolist())]
    s = summarize_latencies(recs, "itl")
    assert s.ci_method == "order_statistic"
    for label, (lo, hi) in s.ci.items():
        assert lo <= s.percentiles[label] <= hi
    assert summarize_latencies([_rec(i) for i in range(50)], "e2e").ci_method == "bootstrap"


# --------------------------------------------------------------------------- latency summaries
def test_every_metric_from_its_definition():
    r = _rec(3, lag=0.01, ttft=0.2, e2e=1.0, tokens=5, gaps=[0.1, 0.2, 0.3, 0.2])
    expected = {"e2e": 1.01, "e2e_uncorrected": 1.0, "ttft": 0.21, "ttft_uncorrected": 0.2,
                "tpot": 0.2, "schedule_lag": 0.01}
    for metric, value in expected.items():
        assert latency_values([r], metric) == [pytest.approx(value)]
    assert latency_values([r], "itl") == [0.1, 0.2, 0.3, 0.2]
    assert set(METRICS) == set(expected) | {"itl"}


def test_each_gap_is_a_sample_not_a_per_request_average():
    recs = [_rec(0, gaps=[0.01] * 9), _rec(1, gaps=[1.0])]
    s = summarize_latencies(recs, "itl", ci=False)
    assert s.count == 10 and s.percentiles["p50"] == 0.01  # a per-request mean would say 0.505
    assert s.percentiles == percentiles([0.01] * 9 + [1.0])


@pytest.mark.parametrize("metric", ["e2e", "e2e_uncorrected", "ttft", "ttft_uncorrected"])
def test_failures_count_as_their_timeout(metric):
    ok = [_rec(i, e2e=0.1 + i / 100, ttft=0.05) for i in range(8)]
    failed = [_rec(8, status="error", e2e=0.01, timeout_s=30.0), _rec(9, status="timeout", e2e=30.0)]
    recs = ok + failed
    values = latency_values(recs, metric)
    assert len(values) == 10 and sorted(values)[-2:] == [30.0, 30.0]
    s = summarize_latencies(recs, metric, ci=False)
    assert s.errors == 2 and s.error_rate == 0.2 and s.failure_value_s == 30.0
    assert s.percentiles == percentiles(values)  # numpy over the same samples
    assert s.percentiles["p99"] == 30.0
    assert s.ok_percentiles == percentiles(latency_values(recs, metric, include_failures=False))
    assert s.ok_percentiles["p99"] < 1.0


def test_a_failure_without_timeout_counts_as_the_slowest_success_at_least():
    recs = [_rec(0, e2e=0.2), _rec(1, e2e=0.7), _rec(2, status="error", e2e=0.05, timeout_s=None)]
    assert latency_values(recs, "e2e_uncorrected") == [0.2, 0.7, 0.7]


def test_per_token_metrics_skip_failures_and_lag_keeps_them():
    recs = [_rec(0, gaps=[0.1]), _rec(1, status="error", gaps=[5.0], lag=0.3)]
    assert latency_values(recs, "itl") == [0.1]
    assert latency_values(recs, "tpot") == [pytest.approx(0.1)]
    assert latency_values(recs, "schedule_lag") == [0.0, pytest.approx(0.3)]
    assert summarize_latencies(recs, "itl").errors == 1


def test_ttft_is_empty_for_a_run_without_streaming():
    recs = [_rec(i, ttft=None) for i in range(3)] + [_rec(3, status="error")]
    s = summarize_latencies(recs, "ttft")
    assert s.count == 0 and math.isnan(s.percentiles["p50"]) and s.ci is None
    assert json.dumps(s.to_dict(), allow_nan=False)


def test_warmup_is_left_out_unless_asked():
    recs = [_rec(0, e2e=9.0, warmup=True), _rec(1, e2e=1.0)]
    assert latency_values(recs, "e2e_uncorrected") == [1.0]
    assert latency_values(recs, "e2e_uncorrected", include_warmup=True) == [9.0, 1.0]


def test_unknown_metric():
    with pytest.raises(ConfigError, match="Available"):
        summarize_latencies([_rec(0)], "latency")


def test_latency_summary_views():
    s = summarize_latencies([_rec(i, e2e=0.1 * (i + 1)) for i in range(20)], "e2e")
    assert isinstance(s, LatencySummary) and s.ci_method == "bootstrap"
    d = s.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["ci"]["p50"][0] <= d["percentiles"]["p50"] <= d["ci"]["p50"][1]
    assert "p99=" in repr(s) and "<table>" in s._repr_html_()


# --------------------------------------------------------------------------- histogram bins
@pytest.mark.parametrize(
    ("values", "log", "lo", "hi"),
    [
        ([0.1, 0.2, 0.5, 2.0], False, 0.1, 2.0),
        ([0.001, 0.1, 10.0], True, 0.001, 10.0),
        ([0.0, -1.0, 0.01, 1.0, math.inf, math.nan], True, 0.01, 1.0),
    ],
)
def test_histogram_bins_cover_the_values(values, log, lo, hi):
    edges = histogram_bins(values, bins=10, log=log)
    assert len(edges) == 11 and np.all(np.diff(edges) > 0)
    assert edges[0] == pytest.approx(lo) and edges[-1] == pytest.approx(hi)
    if log:  # equal ratios
        ratios = edges[1:] / edges[:-1]
        assert np.allclose(ratios, ratios[0])


@pytest.mark.parametrize("values", [[], [0.5, 0.5], [0.0]])
@pytest.mark.parametrize("log", [False, True])
def test_histogram_bins_degenerate_inputs(values, log):
    edges = histogram_bins(values, bins=4, log=log)
    assert len(edges) == 5 and np.all(np.diff(edges) > 0)


def test_histogram_bins_rejects_zero_bins():
    with pytest.raises(ConfigError):
        histogram_bins([1.0], bins=0)


# --------------------------------------------------------------------------- shares and balance
def test_share_by_node_and_replica():
    recs = ([_rec(i, node="a", replica="a-1") for i in range(3)] + [_rec(3, node="b", replica="b-1")]
            + [_rec(4)] + [_rec(5, node="b", status="error")])
    assert share_by(recs, "node_id") == {"a": 0.6, "b": 0.2, "unknown": 0.2}
    assert share_by(recs, "replica_id") == {"a-1": 0.6, "b-1": 0.2, "unknown": 0.2}
    assert share_by([], "node_id") == {}
    with pytest.raises(ConfigError):
        share_by(recs, "host")


@pytest.mark.parametrize(
    ("shares", "expected"),
    [([1, 1, 1, 1], 1.0), ([1, 0, 0, 0], 0.25), ({"a": 0.5, "b": 0.5}, 1.0), ([3, 1], 0.8), ([7], 1.0)],
)
def test_load_balance_index_is_jains(shares, expected):
    assert load_balance_index(shares) == pytest.approx(expected)


def test_load_balance_index_edge_cases():
    assert math.isnan(load_balance_index([])) and math.isnan(load_balance_index([0, 0]))
    with pytest.raises(ConfigError):
        load_balance_index([1, -1])


# --------------------------------------------------------------------------- decomposition
def test_decomposition_where_server_timings_exist():
    timings = {"client_to_replica_s": 0.02, "replica_wait_s": 0.01, "coordinator_wait_s": 0.015,
               "engine_queue_s": 0.05, "engine_ttft_s": 0.15, "engine_total_s": 0.45}
    recs = [_rec(i, lag=0.001, e2e=0.5, server=timings) for i in range(4)] + [_rec(4, lag=0.001)]
    d = decompose_latency(recs)
    expected = {"schedule_lag": 0.001, "pre_engine": 0.03, "coordinator_wait": 0.015, "engine_queue": 0.05,
                "prefill": 0.10, "decode": 0.30, "residual": 0.02}
    assert set(d) == set(expected)
    for name, value in expected.items():
        assert d[name]["p50"] == pytest.approx(value) and d[name]["mean"] == pytest.approx(value)
    assert d["schedule_lag"]["count"] == 5 and d["decode"]["count"] == 4


def test_decomposition_without_server_timings_has_only_the_client_part():
    assert set(decompose_latency([_rec(0), _rec(1)])) == {"schedule_lag"}


# --------------------------------------------------------------------------- run summary
def test_summarize_run_rates_goodput_and_views():
    recs = [_rec(i, sched=i * 0.1, lag=0.0 if i < 10 else 0.05, ttft=0.05 * (1 + i % 3), e2e=0.3, tokens=4,
                 gaps=[0.01, 0.02, 0.03], node="a" if i % 4 else "b") for i in range(20)]
    recs.append(_rec(20, sched=2.0, status="timeout", e2e=10.0))
    recs.insert(0, _rec(99, sched=-1.0, warmup=True))
    s = summarize_run(recs, offered_rate_rps=10.0, slo={"ttft_s": 0.12, "e2e_s": 1.0})
    assert isinstance(s, RunSummary)
    assert (s.requests, s.ok, s.errors, s.warmup_excluded) == (21, 20, 1, 1)
    assert s.statuses == {"ok": 20, "timeout": 1}
    assert s.offered_rate_rps == 10.0
    assert s.achieved_rate_rps == pytest.approx(20 / 2.0)
    assert s.duration_s == pytest.approx(12.0)  # first intended send 0.0 to the time-out at 12.0
    assert s.throughput_rps == pytest.approx(20 / 12.0)
    assert s.output_tokens_per_s == pytest.approx(80 / 12.0)
    good = sum(1 for r in recs if not r.warmup and r.ok and r.ttft_s <= 0.12)
    assert s.goodput["good"] == good and s.goodput["goodput_rps"] == pytest.approx(good / 12.0)
    assert s.node_share == {"a": 0.75, "b": 0.25}
    assert s.node_balance_index == pytest.approx(load_balance_index([3, 1]))
    assert set(s.metrics) == set(METRICS) and s.metrics["itl"].count == 60
    assert s.decomposition["schedule_lag"]["count"] == 21
    text = json.dumps(s.to_dict(), allow_nan=False)
    assert '"p99.9"' in text
    assert "RunSummary: 21 requests" in repr(s) and "<table>" in s._repr_html_()


def test_summarize_run_infers_the_offered_rate_and_rejects_unknown_slos():
    recs = [_rec(i, sched=i * 0.5) for i in range(5)]
    s = summarize_run(recs, ci=False)
    assert s.offered_rate_rps == pytest.approx(2.0) and any("inferred" in n for n in s.notes)
    with pytest.raises(ConfigError, match="Unknown SLO"):
        summarize_run(recs, slo={"p99_s": 1.0})


def test_summarize_run_of_nothing():
    s = summarize_run([], ci=False)
    assert s.requests == 0 and s.achieved_rate_rps is None
    json.dumps(s.to_dict(), allow_nan=False)
