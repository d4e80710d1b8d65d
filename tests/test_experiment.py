"""The lesson's three regimes on the real stack, each made so by construction, not by timing.

A closed loop keeps a fixed number of requests in flight whatever the machine's speed, so:
* more users than the engines have slots keeps requests waiting inside the engines (engine-bound);
* more users than the coordinator has slots keeps requests waiting before the engines, while each
  engine runs at most that one request (coordinator-bound);
* one user at a time can never make an engine hold a waiting request (healthy engines).
Whether the *lesson's* open-loop defaults give the right verdict 9 times in 10 is measured by
benchmarks/bench_regimes.py, not asserted here: that depends on the machine's speed and load.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

SLOTS = 2  # max_num_seqs of each engine of this module's deployment


@pytest.fixture(scope="module")
def small_doors(lab_cluster):
    """Two replicas with 2 slots each (beside the session's deployment), and a 1-slot gate before them."""
    from ray import serve

    from labkit.serve import deploy, deploy_coordinator, topology_preset

    config = topology_preset(
        "distributed", num_replicas=2, max_num_seqs=SLOTS, app_name="labkit-regimes", route_prefix="/regimes"
    )
    deployment = deploy(config)
    gated = deploy_coordinator(deployment, max_concurrency=1, name="regimes-gated", route_prefix="/regimes-gated")
    yield {"distributed": deployment.url, "gated": gated}
    serve.delete("regimes-gated")
    serve.delete("labkit-regimes")


def _run(name, url, users, tmp_path):
    from labkit.experiment import run_topology

    # A count, not a duration: a loaded machine serves fewer requests in 10 s than the diagnosis needs
    # (it says insufficient_data below 20); the duration is only a hang guard.
    return run_topology(
        name,
        url,
        users=users,
        num_requests=40,
        duration_s=600.0,
        max_tokens=32,
        progress=False,
        expected_replicas=2,
        records_dir=tmp_path,
        warmup_requests=2,
    )


def test_engine_bound_more_users_than_slots_is_engine_saturation(small_doors, tmp_path):
    run = _run("distributed", small_doors["distributed"], 4 * SLOTS, tmp_path)  # 8 users, 4 slots in all
    ev = run.diagnosis.evidence
    assert ev["engine_capacity"] == SLOTS  # the replicas report their max_num_seqs
    assert ev["engine_waiting_mean_all"] >= 1.0, ev
    assert run.diagnosis.verdict == "engine_saturation", run.diagnosis.explanation
    assert "The engines were full" in run.diagnosis.explanation


def test_coordinator_bound_more_users_than_gate_slots_is_the_coordinator(small_doors, tmp_path):
    run = _run("gated", small_doors["gated"], 4, tmp_path)  # 4 users, 1 gate slot
    ev = run.diagnosis.evidence
    assert ev["engine_waiting_mean_all"] == 0, ev  # one request at a time reaches the engines
    assert ev["engine_running_fraction_all"] <= 0.5 + 1e-9, ev  # at most 1 of 2 slots
    assert run.diagnosis.verdict == "coordinator_bottleneck", run.diagnosis.explanation
    assert "had room" in run.diagnosis.explanation
    coord = [r.server.get("coordinator_wait_s") for r in run.result.records if r.status == "ok" and not r.warmup]
    assert all(w is not None for w in coord)


def test_one_user_never_fills_an_engine(small_doors, tmp_path):
    run = _run("distributed", small_doors["distributed"], 1, tmp_path)
    ev = run.diagnosis.evidence
    assert ev["engine_waiting_mean_all"] == 0, ev
    assert run.diagnosis.verdict != "engine_saturation", run.diagnosis.explanation


def test_run_regimes_reports_every_regime_with_n_and_percentiles_only_where_supported(small_doors, tmp_path):
    from labkit.experiment import REGIMES, run_regimes

    res = run_regimes(
        small_doors,
        rate_rps=2.0,
        duration_s=5.0,
        max_tokens=16,
        engine_users=4 * SLOTS,
        engine_duration_s=5.0,
        expected_replicas=2,
        progress=False,
        records_dir=tmp_path,
    )
    table = res.table()
    assert [r["regime"] for r in table] == list(REGIMES)
    for row in table:
        assert row["e2e_n"] >= 1
        if row["e2e_n"] < 100:  # a 5 s run: too few requests for a p99
            assert row["e2e_p99_s"] is None and not row["p99_supported"]
    from labkit.diagnose import Thresholds

    engine = res.runs["engine-bound"]  # 5 s: how many requests that is depends on the machine
    enough = sum(r.ok and not r.warmup for r in engine.result.records) >= Thresholds().min_requests
    assert engine.diagnosis.verdict == ("engine_saturation" if enough else "insufficient_data")
    claim = res.claim()
    assert set(claim["verdicts"]) == set(REGIMES)
    assert "not reported" in res.sentence()
    assert {p.name.split("-")[0] for p in tmp_path.iterdir()} == {"distributed", "gated"}
    assert len(list(tmp_path.iterdir())) == 3  # one records file per run, none overwritten
    assert "<table>" in res._repr_html_()
