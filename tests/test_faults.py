"""Faults on the real stack: a replica killed in the middle of a load run."""

from __future__ import annotations

import threading
import time

import pytest

pytestmark = pytest.mark.slow


def _running_replicas(app="labkit"):
    from labkit.serve import list_replicas

    return [r for r in list_replicas(app) if r["deployment"] == "LLMServer" and r["state"].endswith("RUNNING")]


def _young_request_in_flight(started, thread, max_events):
    """A request of the run that a replica holds with nearly all of its answer still to come.

    Killing a replica picked blindly, or one that has just answered, can hit one that holds no
    request at that moment: Serve then routes around it and nothing fails. The request returned
    here has its response headers (so its replica is known) and fewer than ``max_events`` of
    its stream events: its replica has hundreds of engine steps to go before it could finish it,
    against one kill call to an actor on this machine.
    """
    while thread.is_alive():
        for req in list(started):
            if req.replica_id is not None and not req.done and len(req.itl) < max_events:
                return req
        time.sleep(0.01)
    pytest.fail("the load run ended before a replica was seen holding one of its requests")


def test_killed_replica_fails_in_flight_requests_clearly_and_serve_recovers(lab_deployment, tmp_path, monkeypatch):
    import ray

    from labkit.load import LoadConfig, read_records, run_load
    from labkit.load.runner import _Runner

    replicas = {r["replica_id"]: r for r in _running_replicas()}
    assert len(replicas) == 2, replicas
    actors = {rid: ray.get_actor(r["actor_name"], namespace="serve") for rid, r in replicas.items()}
    started = []  # every request of the run, as the client starts it
    original_start = _Runner._start

    def spy(self, req):
        started.append(req)
        original_start(self, req)

    monkeypatch.setattr(_Runner, "_start", spy)
    max_tokens = 240  # the deployment's limit is 256
    config = LoadConfig(
        url=lab_deployment.url,
        model=lab_deployment.served_model_name,
        arrival="constant",
        rate_rps=2.0,
        duration_s=16.0,
        max_tokens=max_tokens,
        ignore_eos=True,
        timeout_s=60.0,
        hard_stop_s=120.0,
    )
    path = tmp_path / "records.jsonl"
    result = {}
    thread = threading.Thread(target=lambda: result.update(r=run_load(config, records_path=str(path), progress=False)))
    started_at = time.monotonic()
    thread.start()
    held = _young_request_in_flight(started, thread, max_events=8)
    victim = replicas[held.replica_id]
    ray.kill(actors[held.replica_id], no_restart=True)
    thread.join(timeout=config.hard_stop_s + 300)  # a hang guard: the hard stop ends the run
    assert not thread.is_alive(), "the load run hung after a replica was killed"
    records = result["r"].records
    assert len(read_records(path)) == len(records)
    assert sorted(r.request_id for r in records) == [f"req-{i:06d}" for i in range(len(records))]
    mine = next(r for r in records if r.request_id == f"req-{held.index:06d}")
    assert mine.status != "ok" and mine.error, mine.to_dict()  # in flight on the killed replica: a clear failure
    failed = [r for r in records if r.status != "ok"]
    assert all(r.error for r in failed), [r.to_dict() for r in failed][:3]
    print(
        f"{len(failed)} of {len(records)} requests failed; e2e of the ok ones:",
        sorted(round(r.done_s - r.sent_s, 2) for r in records if r.status == "ok")[::5],
    )
    # A time-out is a timer on the client's event loop at timeout_s after the send; it can only be
    # late by as long as the loop was kept from running. The 30 s is a hang guard, not a measurement.
    assert all(r.done_s - r.sent_s <= config.timeout_s + 30 for r in records), "a request outlived its time-out"
    assert any(r.status == "ok" and r.replica_id != victim["replica_id"] for r in records)
    # Serve brings a replacement up (a fresh vLLM engine: about a minute on 2 cores; 600 s is a hang guard).
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        alive = _running_replicas()
        if len(alive) == 2 and victim["replica_id"] not in {r["replica_id"] for r in alive}:
            break
        time.sleep(2)
    else:
        pytest.fail(f"Serve did not replace the killed replica within 600 s: {_running_replicas()}")
    for i in range(6):
        answer = lab_deployment.complete(f"after the fault {i}", max_tokens=4)
        assert answer["choices"][0]["text"] is not None
    print(f"recovered {time.monotonic() - started_at:.0f} s after the load started")
