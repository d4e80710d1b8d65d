"""Serve's ways in on the real stack, hop by hop: the proxies, the coordinator, direct ingress.

Runs after every other test of the shared cluster: direct ingress restarts Serve (Serve's
throughput-optimized mode is set when its controller starts), which removes the shared deployment.
"""

from __future__ import annotations

import pytest

from labkit.load import LoadConfig, run_load
from labkit.stats import HOPS, TTFT_HOPS, hop_times

pytestmark = pytest.mark.slow


def _records(url: str, model: str) -> list:
    config = LoadConfig(
        url=url,
        model=model,
        arrival="closed",
        users=1,
        num_requests=6,
        max_tokens=8,
        ignore_eos=True,
        warmup_requests=1,
        timeout_s=120,
    )
    return [r for r in run_load(config, progress=False).records if not r.warmup]


def _check_hops(records: list, *, coordinator: bool) -> None:
    assert records and all(r.ok for r in records), [r.error for r in records]
    for r in records:
        hops = hop_times(r)
        assert set(HOPS) <= set(hops), sorted(set(HOPS) - set(hops))
        assert abs(sum(hops[h] for h in TTFT_HOPS) - r.ttft_s) < 1e-5
        assert "proxy_at_s" in r.server  # the ingress's HTTP server stamped it
        assert ("coordinator_at_s" in r.server) == coordinator
        # a stamp per text chunk the client saw (the engine may put two tokens in one chunk)
        assert len(hops["chunk_return"]) == len(r.itl_s) + 1 <= r.output_tokens


def test_every_hop_is_stamped_through_the_proxies_and_through_the_gate(lab_cluster, lab_deployment):
    from ray import serve

    from labkit.serve import deploy_coordinator, measure_clock_offsets

    _check_hops(_records(lab_deployment.url, lab_deployment.served_model_name), coordinator=False)
    gated = deploy_coordinator(lab_deployment, max_concurrency=4, name="gated-hops", route_prefix="/gated-hops")
    try:
        _check_hops(_records(gated, lab_deployment.served_model_name), coordinator=True)
    finally:
        serve.delete("gated-hops")
    clock = measure_clock_offsets(lab_deployment.url, probes=6)
    assert "proxy" in clock["offsets"]
    replicas = set(clock["offsets"]) - {"proxy"}
    assert replicas and replicas <= set(lab_cluster.node_names())  # keyed by the replicas' node ids
    assert all(u >= 0 for u in clock["uncertainty_s"].values())


def test_direct_ingress_answers_from_the_replica_without_a_proxy(lab_cluster, lab_deployment):
    from ray import serve

    from labkit.serve import deploy, deploy_coordinator, topology_preset
    from labkit.serve.metrics import serve_details

    proxy_port = int(serve_details()["http_options"]["port"])
    direct = deploy(topology_preset("direct-ingress", app_name="labkit-direct"))
    try:
        port = int(direct.url.rsplit(":", 1)[1].split("/", 1)[0])
        assert port != proxy_port
        details = serve_details()
        groups = [g for g in details.get("target_groups", []) if g.get("app_name") == "labkit-direct"]
        targets = [t for g in groups for t in g["targets"] if str(g["protocol"]).endswith("HTTP")]
        assert [t["port"] for t in targets] == [port]
        assert not targets[0]["name"].startswith("SERVE_PROXY_ACTOR")  # a replica, not a proxy
        records = _records(direct.url, direct.served_model_name)
        _check_hops(records, coordinator=False)
        assert {r.replica_id for r in records} == {direct.replicas[0]["replica_id"]}
        # a coordinator in front is an ingress of its own: its own port, the replica behind it
        gated = deploy_coordinator(direct, max_concurrency=2, name="direct-gated", route_prefix="/direct-gated")
        assert gated.split(":")[-1].split("/")[0] not in (str(port), str(proxy_port))
        _check_hops(_records(gated, direct.served_model_name), coordinator=True)
        serve.delete("direct-gated")
    finally:
        direct.shutdown()
