"""Tests of labkit.diagnose on synthetic record sets, one per verdict, plus edge cases."""

from __future__ import annotations

import random

import pytest

from labkit.diagnose import VERDICTS, Diagnosis, Thresholds, compare, diagnose
from labkit.errors import ConfigError
from labkit.load import RequestRecord
from labkit.telemetry import TelemetrySample

RATE_RPS = 10.0


def make_run(n=200, *, slow_every=10, slow_pre_s=0.0, slow_queue_s=0.0, replicas=("r0", "r1"),
             weights=None, server=True, seed=0, errors=0, base_queue_s=0.0):
    """A 10 rps run with ~200 ms requests; every `slow_every`-th request gets extra time before
    the engine (`slow_pre_s`, as coordinator wait) or in the engine queue (`slow_queue_s`)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        sched = i / RATE_RPS
        sent = sched + rng.uniform(0, 0.002)
        slow = slow_every and i % slow_every == 0
        pre = 0.005 + rng.uniform(0, 0.002) + (slow_pre_s if slow else 0.0)
        queue = base_queue_s + rng.uniform(0, 0.002) + (slow_queue_s if slow else 0.0)
        engine = queue + 0.19 + rng.uniform(0, 0.01)
        done = sent + pre + engine + 0.002
        replica = rng.choices(replicas, weights=weights)[0] if weights else replicas[i % len(replicas)]
        timings = {}
        if server:
            timings = {"client_to_replica_s": pre - 0.001, "replica_wait_s": 0.001,
                       "coordinator_wait_s": (slow_pre_s if slow else 0.0), "engine_queue_s": queue,
                       "engine_ttft_s": queue + 0.02, "engine_total_s": engine}
        out.append(RequestRecord(request_id=f"q{i}", scheduled_s=sched, sent_s=sent, done_s=done,
                                 first_token_s=sent + pre + queue + 0.02, last_token_s=done - 0.001,
                                 output_tokens=32, node_id=f"node-{replica}", replica_id=replica,
                                 server=timings))
    for j in range(errors):
        out.append(RequestRecord(request_id=f"e{j}", scheduled_s=j / RATE_RPS, sent_s=j / RATE_RPS,
                                 done_s=j / RATE_RPS + 0.01, status="error", error="HTTP 500"))
    return out


def make_telemetry(records, *, running=2, waiting_in_slow=0, waiting_base=0, replicas=("r0", "r1"),
                   slow_s=0.3):
    """Replica samples every 0.1 s; `waiting_in_slow` while a slow (> slow_s) request is in flight."""
    slow = [(r.sent_s, r.done_s) for r in records if r.status == "ok" and r.done_s - r.scheduled_s > slow_s]
    end = max(r.done_s for r in records)
    out = []
    t = 0.0
    while t <= end:
        busy = any(a <= t <= b for a, b in slow)
        extra_running = 1 if busy and waiting_in_slow else 0
        for rep in replicas:
            out.append(TelemetrySample(t_s=t, wall_s=t, node_id=f"node-{rep}", role="replica",
                                       component_id=rep, running=running + extra_running,
                                       waiting=waiting_base + (waiting_in_slow if busy else 0)))
        out.append(TelemetrySample(t_s=t, wall_s=t, node_id="node-r0", role="coordinator",
                                   component_id="coord", waiting=5 if busy else 0, cpu_percent=95.0))
        t = round(t + 0.1, 6)
    return out


# --------------------------------------------------------------------------------------------
# one synthetic run per verdict
# --------------------------------------------------------------------------------------------


def test_healthy():
    recs = make_run(slow_every=0)
    d = diagnose(recs, make_telemetry(recs), name="distributed")
    assert d.verdict == "healthy"
    assert d.evidence["e2e_p99_p50_ratio"] < 1.2
    assert d.evidence["balance_index_replica"] == pytest.approx(1.0)
    assert "distributed" in repr(d)


def test_coordinator_bottleneck_from_server_timings_and_flat_engines():
    recs = make_run(slow_pre_s=0.6)
    d = diagnose(recs, make_telemetry(recs), name="gated")
    assert d.verdict == "coordinator_bottleneck"
    ev = d.evidence
    assert ev["e2e_p99_p50_ratio"] >= 2
    assert ev["tail_pre_engine_share"] > 0.9
    assert ev["tail_coordinator_wait_share"] > 0.9
    assert ev["tail_engine_share"] < 0.1
    assert ev["engine_active_ratio"] == pytest.approx(1.0)
    assert ev["coordinator_waiting_mean_tail"] > 0 and ev["coordinator_cpu_percent_max"] == 95.0
    assert "coordinator" in d.explanation and "not engine throughput" in d.explanation
    passed = {c.threshold: c.passed for c in d.checks}
    assert passed["tail_ratio_e2e"] is True and passed["pre_engine_share_min"] is True


def test_coordinator_bottleneck_without_telemetry():
    d = diagnose(make_run(slow_pre_s=0.6))
    assert d.verdict == "coordinator_bottleneck"
    assert any("No telemetry" in n for n in d.notes)


def test_engine_saturation_tail_in_engine_queue_with_rising_activity():
    recs = make_run(slow_queue_s=0.6, slow_every=25)  # bursts: the engines queue a third of the time
    d = diagnose(recs, make_telemetry(recs, waiting_in_slow=3))
    assert d.verdict == "engine_saturation"
    ev = d.evidence
    assert ev["tail_engine_queue_share"] > 0.9 and ev["tail_pre_engine_share"] < 0.1
    assert ev["engine_active_ratio"] > 1.25
    assert ev["engine_waiting_mean_tail"] >= 1
    assert "saturated" in d.explanation


def test_engine_saturation_even_tail_but_engines_queue_all_along():
    recs = make_run(slow_every=0, base_queue_s=0.3)
    d = diagnose(recs, make_telemetry(recs, waiting_base=2))
    assert d.verdict == "engine_saturation"
    assert d.evidence["e2e_p99_p50_ratio"] < 2
    assert d.evidence["engine_waiting_mean_all"] == 2


def test_engine_saturation_even_tail_from_server_queue_time_alone():
    d = diagnose(make_run(slow_every=0, base_queue_s=0.5))
    assert d.verdict == "engine_saturation"
    assert d.evidence["engine_queue_fraction_median"] > 0.5


def test_pre_engine_time_outside_the_coordinator_is_flagged_as_possible_backpressure():
    recs = make_run(slow_pre_s=0.6)
    for r in recs:
        r.server["coordinator_wait_s"] = 0.0  # the time went to the proxy / router instead
    d = diagnose(recs)
    assert d.verdict == "coordinator_bottleneck"
    assert any("back-pressure" in n for n in d.notes)
    assert not any("pressure" in n for n in diagnose(make_run(slow_pre_s=0.6)).notes)


def test_router_backpressure_from_full_engines_is_saturation_not_coordinator():
    # time before the engine grows, but the engines run at their capacity meanwhile
    recs = make_run(slow_pre_s=0.6)
    tel = make_telemetry(recs, running=4)
    assert diagnose(recs, tel).verdict == "coordinator_bottleneck"
    d = diagnose(recs, tel, engine_capacity=4)
    assert d.verdict == "engine_saturation"
    assert d.evidence["engine_running_fraction_tail"] == pytest.approx(1.0)


def test_load_imbalance():
    recs = make_run(slow_every=0, replicas=("r0", "r1"), weights=(0.85, 0.15))
    d = diagnose(recs, make_telemetry(recs))
    assert d.verdict == "load_imbalance"
    assert d.evidence["balance_index_replica"] < 0.9
    assert d.shares["replica_id"]["r0"] > 0.75
    assert "min_balance_index" in d.explanation


def test_idle_replica_counts_as_imbalance():
    recs = make_run(slow_every=0, replicas=("r0",))
    assert diagnose(recs).verdict == "healthy"
    d = diagnose(recs, expected_replicas=2)
    assert d.verdict == "load_imbalance"
    assert d.evidence["balance_index_replica"] == pytest.approx(0.5)
    # the same, learned from telemetry of a replica that served nothing
    d2 = diagnose(recs, make_telemetry(recs, replicas=("r0", "r1")))
    assert d2.verdict == "load_imbalance"


def test_balance_not_judged_on_few_requests():
    recs = make_run(n=30, slow_every=0, replicas=("r0", "r1"), weights=(0.8, 0.2))
    d = diagnose(recs)
    assert d.verdict == "healthy"
    assert any("Balance not judged" in n for n in d.notes)


# --------------------------------------------------------------------------------------------
# edge cases
# --------------------------------------------------------------------------------------------


def test_tiny_n_is_insufficient():
    d = diagnose(make_run(n=5))
    assert d.verdict == "insufficient_data"
    assert "min_requests = 20" in d.explanation
    assert d.checks[0].passed is False


def test_empty_and_all_errors():
    assert diagnose([]).verdict == "insufficient_data"
    d = diagnose(make_run(n=0, errors=30))
    assert d.verdict == "insufficient_data"
    assert d.evidence["error_rate"] == 1.0


def test_no_server_timings_no_telemetry_spiky_tail_is_insufficient():
    d = diagnose(make_run(slow_pre_s=0.6, server=False))
    assert d.verdict == "insufficient_data"
    assert d.evidence["tail_pre_engine_share"] is None
    assert "cannot" in d.explanation


def test_no_server_timings_with_flat_telemetry_points_at_coordinator():
    recs = make_run(slow_pre_s=0.6, server=False)
    d = diagnose(recs, make_telemetry(recs))
    assert d.verdict == "coordinator_bottleneck"
    assert any("No server timings" in n for n in d.notes)
    recs = make_run(slow_queue_s=0.6, slow_every=25, server=False)
    assert diagnose(recs, make_telemetry(recs, waiting_in_slow=3)).verdict == "engine_saturation"


def test_errors_are_noted_and_excluded():
    d = diagnose(make_run(slow_every=0, errors=30))
    assert d.verdict == "healthy"
    assert d.evidence["n_ok"] == 200 and d.evidence["error_rate"] == pytest.approx(30 / 230)
    assert any("failed" in n for n in d.notes)


def test_warmup_excluded_and_dicts_and_result_objects_accepted():
    recs = make_run(slow_every=0)
    recs[0].warmup = True

    class Result:  # a LoadResult's shape: records (here as dicts); its config carries no name
        records = [r.to_dict() for r in recs]

    d = diagnose(Result(), name="from-caller")
    assert d.name == "from-caller" and d.evidence["n_requests"] == 199
    assert diagnose(Result()).name == ""


def test_lagging_generator_noted():
    recs = make_run(slow_every=0)
    for r in recs[::3]:
        r.sent_s += 0.2
        r.done_s += 0.2
    assert any("sent late" in n for n in diagnose(recs).notes)


@pytest.mark.parametrize("field, value", [("tail_ratio_e2e", -1.0), ("min_requests", float("nan"))])
def test_thresholds_validate(field, value):
    with pytest.raises(ConfigError, match=field):
        Thresholds(**{field: value})


def test_thresholds_change_the_verdict_and_show_in_checks():
    recs = make_run(slow_pre_s=0.6)
    strict = Thresholds(tail_ratio_e2e=100.0, tail_ratio_ttft=100.0)
    d = diagnose(recs, thresholds=strict)
    assert d.verdict == "healthy"
    check = next(c for c in d.checks if c.threshold == "tail_ratio_e2e")
    assert check.limit == 100.0 and check.passed is False
    assert "tail_ratio_e2e = 100" in str(check)


def test_bad_parameters():
    with pytest.raises(ConfigError, match="engine_capacity=0"):
        diagnose(make_run(), engine_capacity=0)


def test_to_dict_repr_html_and_compare():
    gated = diagnose(make_run(slow_pre_s=0.6), name="gated")
    dist = diagnose(make_run(slow_every=0), name="distributed")
    data = gated.to_dict()
    assert data["verdict"] in VERDICTS and data["thresholds"]["tail_ratio_e2e"] == 2.0
    import json

    json.dumps(data)
    assert isinstance(gated, Diagnosis)
    assert "coordinator bottleneck" in gated._repr_html_()
    table = compare({"gated": gated, "distributed": dist})
    text = repr(table)
    assert "coordinator_bottleneck" in text and "healthy" in text
    assert "<table>" in table._repr_html_()
    assert set(compare([gated, dist]).to_dict()) == {"gated", "distributed"}
    with pytest.raises(ConfigError):
        compare({})
    with pytest.raises(ConfigError, match="unique"):
        compare([gated, gated])


def test_any_record_set_gets_a_verdict_and_valid_json():
    import json

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    timing = st.one_of(st.none(), st.floats(0, 2))
    record = st.builds(
        lambda i, lat, ttft, status, rep, pre, queue, total: RequestRecord(
            request_id=str(i), scheduled_s=i * 0.1, sent_s=i * 0.1, done_s=i * 0.1 + lat,
            first_token_s=None if ttft is None else i * 0.1 + min(ttft, lat), status=status,
            replica_id=rep, node_id=rep,
            server={k: v for k, v in (("client_to_replica_s", pre), ("engine_queue_s", queue),
                                      ("engine_total_s", total)) if v is not None}),
        st.integers(0, 500), st.floats(0, 5), timing, st.sampled_from(["ok", "ok", "ok", "error"]),
        st.sampled_from([None, "a", "b"]), timing, timing, timing)

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(record, max_size=80))
    def check(records):
        d = diagnose(records)
        assert d.verdict in VERDICTS
        json.dumps(d.to_dict(), allow_nan=False)
        assert d.explanation

    check()


def _cli(argv):
    from labkit.cli import build_parser

    args = build_parser().parse_args(argv)
    return args.func(args)  # a LabkitError propagates here; main() would turn it into exit code 3


def test_cli_diagnose_reads_jsonl_and_telemetry(tmp_path, capsys):
    import json

    from labkit.telemetry import TelemetryRecorder

    recs = make_run(slow_pre_s=0.6)
    path = tmp_path / "gated.jsonl"
    path.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in recs), encoding="utf-8")
    rec = TelemetryRecorder(use_collector=False, gpu=False, name="gated")
    rec.samples = make_telemetry(recs)
    tel = tmp_path / "tel.json"
    tel.write_text(json.dumps(rec.to_dict()), encoding="utf-8")
    out = tmp_path / "d.json"
    assert _cli(["diagnose", str(path), "--telemetry", str(tel), "--json", str(out)]) == 0
    assert "Diagnosis(gated): coordinator_bottleneck" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["verdict"] == "coordinator_bottleneck" and data["evidence"]["engine_active_ratio"] == 1.0
    assert _cli(["diagnose", str(path), "--threshold", "tail_ratio_e2e=100",
                 "--threshold", "tail_ratio_ttft=100"]) == 0
    assert "healthy" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["nonsense", "tail_ratio_e2e=abc", "unknown=1"])
def test_cli_diagnose_rejects_bad_thresholds(tmp_path, bad):
    path = tmp_path / "r.jsonl"
    path.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match="--threshold|not a number"):
        _cli(["diagnose", str(path), "--threshold", bad])


# --------------------------------------------------------------------------------------------
# every sentence follows from its numbers: cases where the numbers point the other way
# --------------------------------------------------------------------------------------------


def _own_request_telemetry(records, *, capacity=4, waiting=0, replicas=("r0", "r1"), slow_s=0.3):
    """Engines idle but for the slow requests themselves: 1 running while one is in flight."""
    slow = [(r.sent_s, r.done_s) for r in records if r.status == "ok" and r.done_s - r.scheduled_s > slow_s]
    end = max(r.done_s for r in records)
    out, t = [], 0.0
    while t <= end:
        busy = any(a <= t <= b for a, b in slow)
        for rep in replicas:
            out.append(TelemetrySample(t_s=t, wall_s=t, node_id=f"node-{rep}", role="replica", component_id=rep,
                                       running=1 if busy else 0, waiting=waiting, extra={"capacity": capacity}))
        t = round(t + 0.1, 6)
    return out


def test_coordinator_text_says_activity_rose_when_it_did_and_why_the_engines_are_still_not_the_limit():
    """The engines are 'busier' during the tail (the slow requests run in them) yet have room."""
    recs = make_run(slow_pre_s=0.6)
    d = diagnose(recs, _own_request_telemetry(recs))
    assert d.verdict == "coordinator_bottleneck"
    ev = d.evidence
    assert ev["engine_active_mean_tail"] > 1.25 * ev["engine_active_mean_all"]
    assert "not busier" not in d.explanation and "no higher" not in d.explanation
    assert "Engine activity was higher" in d.explanation
    from labkit.diagnose.results import _fmt

    assert f"({_fmt(ev['engine_active_mean_tail'])} running+waiting per engine" in d.explanation
    assert "had room" in d.explanation and "of their 4 slots in use" in d.explanation


def test_coordinator_text_says_no_higher_when_activity_was_flat():
    recs = make_run(slow_pre_s=0.6)
    d = diagnose(recs, make_telemetry(recs))
    assert d.verdict == "coordinator_bottleneck"
    assert "Engine activity was no higher" in d.explanation
    assert "Engine activity was higher" not in d.explanation


def test_a_tail_not_made_before_the_engine_with_engines_that_had_room_is_not_saturation():
    """The misdiagnosis of the healthy door: a few slow requests (CPU noise) inside the engine,
    engine activity 'rising' only because those requests ran there, no request ever waiting."""
    recs = make_run(slow_every=10)
    for r in recs[::10]:  # slow inside the engine's compute, not its queue
        r.done_s += 0.6
        r.last_token_s += 0.6
        r.server["engine_total_s"] += 0.6
    d = diagnose(recs, _own_request_telemetry(recs))
    assert d.evidence["engine_active_ratio"] > 1.25
    assert d.evidence["tail_engine_share"] > 0.5
    assert d.verdict == "healthy", d.explanation
    assert "had room (0 requests waiting" in d.explanation and "25% of their 4 slots in use" in d.explanation


def test_saturation_text_names_the_numbers_that_showed_full_engines():
    recs = make_run(slow_every=0)
    d = diagnose(recs, _own_request_telemetry(recs, waiting=3))
    assert d.verdict == "engine_saturation"
    assert "3 requests waiting per engine over the run (>= saturated_waiting_mean = 1)" in d.explanation
    # the same run with engines that had room is healthy, and says so with its numbers
    d2 = diagnose(recs, _own_request_telemetry(recs, waiting=0))
    assert d2.verdict == "healthy"
    assert "had room" in d2.explanation


def test_full_engines_by_slots_in_use_are_saturation_even_without_waiting():
    recs = make_run(slow_every=0)
    d = diagnose(recs, make_telemetry(recs, running=4), engine_capacity=4)
    assert d.verdict == "engine_saturation"
    assert "100% of their 4 slots in use" in d.explanation


def test_a_coordinator_so_busy_that_every_request_waits_is_still_the_coordinator():
    """Past the gate's capacity the median waits too: no spike, but the time is before the engine."""
    recs = make_run(slow_every=1, slow_pre_s=0.6)
    d = diagnose(recs, make_telemetry(recs))
    assert d.evidence["e2e_p99_p50_ratio"] < 2
    assert d.verdict == "coordinator_bottleneck"
    assert "the median request spent" in d.explanation and "before the engine" in d.explanation
    assert diagnose(make_run(slow_every=0), make_telemetry(make_run(slow_every=0))).verdict == "healthy"


def test_telemetry_of_another_applications_replicas_is_left_out():
    """Two deployments on one cluster: the idle replicas of the other one are not this run's."""
    recs = make_run(slow_every=0)
    tel = make_telemetry(recs, replicas=("r0", "r1", "x0", "x1"))
    assert diagnose(recs, tel).verdict == "load_imbalance"  # without knowing the deployment
    d = diagnose(recs, tel, expected_replicas=2)
    assert d.verdict == "healthy", d.explanation
    assert set(d.shares["replica_id"]) == {"r0", "r1"}
    assert any("another application's" in n for n in d.notes)
    # an idle replica of this deployment still counts
    only_r0 = make_run(slow_every=0, replicas=("r0",))
    assert diagnose(only_r0, make_telemetry(only_r0, replicas=("r0", "r1")), expected_replicas=2).verdict == (
        "load_imbalance"
    )


def test_a_gate_everyone_waits_for_is_the_coordinator_even_when_the_split_is_uneven():
    recs = make_run(slow_every=1, slow_pre_s=0.6, weights=(0.7, 0.3))
    d = diagnose(recs, make_telemetry(recs))
    assert d.evidence["balance_index_replica"] < 0.9
    assert d.verdict == "coordinator_bottleneck", d.explanation
