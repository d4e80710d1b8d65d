"""Every hop of a request: the arithmetic (exact), and known delays injected at each hop of a real HTTP exchange."""

from __future__ import annotations

import math

import pytest
from _fake_openai import FakeOpenAIServer

from labkit.contracts import RequestRecord
from labkit.load import LoadConfig, run_load
from labkit.stats import HOPS, TTFT_HOPS, hop_breakdown, hop_times


def _record(**server: float) -> RequestRecord:
    # sent 0.5 s late; first token 0.30 s after the send, last 0.50 s; three chunks
    return RequestRecord(
        request_id="r",
        scheduled_s=10.0,
        sent_s=10.5,
        done_s=11.1,
        first_token_s=10.8,
        last_token_s=11.0,
        output_tokens=3,
        itl_s=[0.1, 0.1],
        node_id="node-a",
        server=dict(server),
        extra={"chunks_at_s": [0.29, 0.38, 0.47]},
    )


FULL = {
    "proxy_at_s": 0.01,
    "replica_at_s": 0.05,
    "submit_at_s": 0.06,
    "engine_queue_s": 0.02,
    "first_token_at_s": 0.26,
    "last_token_at_s": 0.46,
}


def test_each_hop_is_the_gap_between_two_stamps_and_the_ttft_hops_add_up():
    hops = hop_times(_record(**FULL))
    assert hops["send_lag"] == pytest.approx(0.5)
    assert hops["to_ingress"] == pytest.approx(0.01)
    assert hops["routing"] == pytest.approx(0.04)
    assert hops["coordinator_wait"] == 0.0
    assert hops["replica"] == pytest.approx(0.01)
    assert hops["engine_first"] == pytest.approx(0.20)
    assert hops["engine_queue"] == pytest.approx(0.02)
    assert hops["first_return"] == pytest.approx(0.04)
    assert hops["decode"] == pytest.approx(0.20)
    assert hops["last_return"] == pytest.approx(0.04)
    assert hops["chunk_return"] == pytest.approx([0.01, 0.02, 0.03])
    assert sum(hops[h] for h in TTFT_HOPS) == pytest.approx(_record(**FULL).ttft_s)


def test_the_coordinator_hop_splits_routing_from_the_wait_for_a_slot():
    hops = hop_times(_record(**FULL, coordinator_at_s=0.02, coordinator_wait_s=0.03))
    assert hops["to_ingress"] == pytest.approx(0.01)  # the proxy still stamps first
    assert hops["coordinator_wait"] == pytest.approx(0.03)
    assert hops["routing"] == pytest.approx(0.01)  # 0.05 - 0.01 - 0.03
    assert sum(hops[h] for h in TTFT_HOPS) == pytest.approx(_record(**FULL).ttft_s)


def test_without_a_proxy_the_replica_is_the_ingress():
    no_proxy = {k: v for k, v in FULL.items() if k != "proxy_at_s"}
    hops = hop_times(_record(**no_proxy))
    assert hops["to_ingress"] == pytest.approx(0.05)
    assert hops["routing"] == pytest.approx(0.0)


def test_clock_offsets_move_time_between_hops_but_not_the_total():
    # the replica's host clock runs 0.02 s ahead of the client's, the proxy's 0.005 s
    skewed = {k: (v + 0.02 if k.endswith("_at_s") and k != "proxy_at_s" else v) for k, v in FULL.items()}
    skewed["proxy_at_s"] = FULL["proxy_at_s"] + 0.005
    record = _record(**skewed)
    record.extra["chunks_at_s"] = [c + 0.02 for c in record.extra["chunks_at_s"]]
    raw = hop_times(record)
    assert raw["first_return"] == pytest.approx(0.02)  # off by the skew
    fixed = hop_times(record, {"node-a": 0.02, "proxy": 0.005})
    expected = hop_times(_record(**FULL))
    for hop, value in expected.items():
        assert fixed[hop] == pytest.approx(value), hop
    assert sum(raw[h] for h in TTFT_HOPS) == pytest.approx(sum(fixed[h] for h in TTFT_HOPS))


def test_requests_without_stamps_or_that_failed_give_only_the_client_hop():
    assert set(hop_times(_record())) == {"send_lag"}  # vLLM alone: no stamps
    failed = _record(**FULL)
    failed.status = "error"
    assert set(hop_times(failed)) == {"send_lag"}
    mismatched = _record(**FULL)
    mismatched.extra["chunks_at_s"] = [0.29]  # not one stamp per chunk the client saw: no chunk hop
    assert "chunk_return" not in hop_times(mismatched)


def test_breakdown_pools_chunks_and_reports_only_supported_percentiles():
    records = [_record(**FULL) for _ in range(10)]
    records.append(RequestRecord(request_id="w", scheduled_s=0, sent_s=0, done_s=1, warmup=True, server=dict(FULL)))
    out = hop_breakdown(records)
    assert list(out) == [h for h in HOPS if h in out]
    assert out["routing"]["count"] == 10
    assert out["chunk_return"]["count"] == 30
    assert "p95" not in out["routing"] and "p95" in out["chunk_return"]  # 10 samples cannot show a p95
    assert out["routing"]["p50"] == pytest.approx(0.04)
    assert len(out["chunk_return"]["values"]) == 30


@pytest.mark.parametrize("hop", ["to_ingress", "routing", "replica", "engine_first", "chunk_return"])
def test_a_delay_injected_at_one_hop_is_measured_at_that_hop(hop):
    """A server that sleeps 0.12 s at one hop: that hop is at least 0.12 s, and the TTFT hops still add up.

    Only lower bounds: a sleep is never early, and every stamp is on this host's one clock; how much
    longer a loaded machine makes any hop is not asserted.
    """
    delay = 0.12
    server = FakeOpenAIServer(
        ttft_s=delay if hop == "engine_first" else 0.0,
        hop_delays={} if hop == "engine_first" else {hop: delay},
        output_tokens=4,
        node_id="node-a",
        replica_id="rep-a",
    )
    with server:
        config = LoadConfig(
            url=server.url,
            model="fake-model",
            arrival="closed",
            users=1,
            num_requests=3,
            max_tokens=4,
            warmup_requests=0,
            timeout_s=30,
        )
        records = run_load(config, progress=False).records
    assert len(records) == 3 and all(r.ok for r in records)
    for record in records:
        hops = hop_times(record)
        assert set(HOPS) - {"engine_queue"} <= set(hops), sorted(set(HOPS) - set(hops))  # no engine here
        measured = min(hops[hop]) if hop == "chunk_return" else hops[hop]
        assert measured >= delay - 2e-6  # stamps carry microseconds
        assert len(hops["chunk_return"]) == 4
        assert math.isclose(sum(hops[h] for h in TTFT_HOPS), record.ttft_s, abs_tol=1e-5)


def _run(n: int = 120, *, wait: float = 0.0, engine: float = 0.20) -> list[RequestRecord]:
    out = []
    for i in range(n):
        jitter = 0.0001 * (i % 7)
        s = {
            "proxy_at_s": 0.001,
            "coordinator_at_s": 0.002,
            "coordinator_wait_s": wait + jitter,
            "replica_at_s": 0.004 + wait + jitter,
            "submit_at_s": 0.005 + wait + jitter,
        }
        s["first_token_at_s"] = s["submit_at_s"] + engine
        s["last_token_at_s"] = s["first_token_at_s"] + 0.1
        first = s["first_token_at_s"] + 0.002
        out.append(
            RequestRecord(
                request_id=f"r{i}",
                scheduled_s=0.0,
                sent_s=0.0,
                done_s=first + 0.11,
                first_token_s=first,
                last_token_s=s["last_token_at_s"] + 0.002,
                server=s,
            )
        )
    return out


def test_compare_hops_names_the_gate_when_the_wait_grew_and_the_engine_when_it_did():
    from labkit.diagnose import compare_hops

    comparison = compare_hops({"healthy": _run(), "gated": _run(wait=0.3), "engine-bound": _run(engine=0.9)})
    assert comparison.quantile == 99
    assert comparison.largest_growth("gated")[0] == "coordinator_wait"
    assert comparison.largest_growth("engine-bound")[0] == "engine_first"
    gated, engine = comparison.sentences()
    assert gated.startswith("gated: the hop that grew most at p99 is 'waiting for a gate slot' (before or after")
    assert "'engine: submit -> first token' went 200.0 ms -> 200.0 ms" in gated
    assert engine.startswith("engine-bound: the hop that grew most at p99 is 'engine: submit -> first token' (inside")
    assert "| waiting for a gate slot | 0.6 ms | 300.6 ms | 0.6 ms |" in comparison.to_markdown()


def test_compare_hops_says_nothing_grew_when_nothing_did_and_falls_back_to_a_supported_percentile():
    from labkit.diagnose import compare_hops

    comparison = compare_hops({"a": _run(30), "b": _run(30)})
    assert comparison.quantile == 95  # 30 samples cannot show a p99
    assert comparison.sentences() == ["b: no hop's p95 grew by 1 ms and 1.2x over a's."]
    with pytest.raises(ValueError, match="baseline='c' is not one of the runs"):
        compare_hops({"a": _run(5)}, baseline="c")


def _overhead(ttft: dict[str, float], e2e: dict[str, float]) -> dict:
    def cells(name: str) -> dict:
        return {r: {"ratio": {"ttft_p50": ttft[name], "e2e_p99": e2e[name]}} for r in ("2.0", "5.0")}

    return {
        "when": "2026-12-01T22:00:00Z",
        "max_tokens": 32,
        "duration_s": 15.0,
        "rates_rps": [2.0, 5.0],
        "topologies": {name: {"rates": cells(name)} for name in ttft},
        "hop_p50_s": {"distributed": {"5.0": {"routing": 0.0068}}, "direct-ingress": {"5.0": {"routing": 0.0004}}},
    }


def test_overhead_sentences_follow_the_numbers_whichever_way_they_point():
    from labkit.experiment import describe_serve_overhead

    good = describe_serve_overhead(
        _overhead({"distributed": 2.5, "direct-ingress": 1.1}, {"distributed": 2.0, "direct-ingress": 1.05})
    )
    assert good[0].startswith("Measured by bench_serve_overhead.py (2026-12-01T22:00:00Z)")
    assert "direct-ingress: Serve's throughput-optimized mode" in good[2]
    assert "TTFT p50 1.10x/1.10x, e2e p99 1.05x/1.05x" in good[2]
    assert "ingress -> replica 0.40 ms (distributed: 6.80 ms)" in good[2]
    assert good[-1].endswith(
        "Closest to vLLM alone: direct-ingress, at worst 1.10x its TTFT p50 and 1.05x its e2e p99 "
        "over these rates; the kit's target (1.25x and 1.2x) is met."
    )
    nice = describe_serve_overhead(_overhead({"distributed+nice0": 1.3}, {"distributed+nice0": 1.1}))
    assert "distributed+nice0: a Serve HTTP proxy on every node" in nice[1]
    assert "at niceness 0 (ClusterConfig.worker_niceness=0) instead of Ray's default 15" in nice[1]
    bad = describe_serve_overhead(
        _overhead({"distributed": 1.4, "direct-ingress": 1.6}, {"distributed": 1.3, "direct-ingress": 1.1})
    )
    assert bad[-1].startswith("Closest to vLLM alone: distributed, at worst 1.40x")
    assert bad[-1].endswith("is not met.")


def test_overhead_sentences_without_a_result_say_so(tmp_path):
    from labkit.experiment import describe_serve_overhead

    assert describe_serve_overhead(tmp_path / "none.json") == [
        "No overhead benchmark result at none.json: run benchmarks/bench_serve_overhead.py."
    ]
