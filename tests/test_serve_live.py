"""The real stack: an embedded 3-node Ray cluster, Serve proxies, vLLM CPU engines (shared fixture)."""

from __future__ import annotations

import concurrent.futures
import json
import time

import httpx
import pytest
from _wait import until

pytestmark = pytest.mark.slow


def test_smallest_example_answers_from_two_nodes(lab_cluster, lab_deployment):
    replicas = [r for r in lab_deployment.replicas if r["deployment"] == "LLMServer"]
    assert len(replicas) == 2
    assert len({r["node_id"] for r in replicas}) == 2, "replicas must be spread over two nodes"
    names = lab_cluster.node_names()
    assert {names[r["node_id"]] for r in replicas} <= {"worker-1", "worker-2"}
    seen = set()
    for i in range(16):
        answer = lab_deployment.complete(f"Question {i}: what is tail latency?", max_tokens=8)
        assert answer["choices"][0]["text"]
        assert answer["usage"]["completion_tokens"] >= 1
        assert answer["_headers"]["x-labkit-node-id"] == answer["labkit"]["node_id"]
        seen.add(answer["labkit"]["node_id"])
    assert len(seen) == 2, f"16 requests were all served by {seen}"


def test_openai_client_streams_with_usage_and_attribution(lab_deployment):
    import openai

    client = openai.OpenAI(base_url=lab_deployment.url + "/v1", api_key="unused")
    chunks = list(
        client.completions.create(
            model=lab_deployment.served_model_name,
            prompt="Hello",
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text
    final = chunks[-1]
    assert final.usage.completion_tokens == 12
    labkit = final.model_extra["labkit"]
    timings = labkit["timings"]
    assert labkit["node_id"] and labkit["replica_id"]
    assert 0 < timings["engine_ttft_s"] <= timings["engine_total_s"]
    models = client.models.list()
    assert [m.id for m in models.data] == [lab_deployment.served_model_name]
    chat = client.chat.completions.create(
        model=lab_deployment.served_model_name, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert chat.choices[0].message.content is not None


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{oops", 400),
        (b'{"model": "labkit-tiny-llama"}', 400),
        (b'{"model": "labkit-tiny-llama", "prompt": "x", "max_tokens": -5}', 400),
        (b'{"model": "labkit-tiny-llama", "prompt": "x", "max_tokens": 100000000}', 400),
        (b'{"model": "gpt-4", "prompt": "x"}', 404),
    ],
)
def test_bad_requests_get_4xx_not_500_through_the_proxy(lab_deployment, body, status):
    response = httpx.post(
        lab_deployment.url + "/v1/completions", content=body, timeout=30, headers={"content-type": "application/json"}
    )
    assert response.status_code == status
    assert "message" in response.json()["error"]


def test_proxy_binds_loopback_only(lab_deployment):
    assert lab_deployment.url.startswith("http://127.0.0.1:")


def test_concurrent_requests_are_batched_by_the_engine(lab_deployment):
    """Several long requests in flight: one engine reports more than one running request."""
    body = {
        "model": lab_deployment.served_model_name,
        "prompt": "Count:",
        "max_tokens": 200,
        "ignore_eos": True,
        "temperature": 0,
    }
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [
            pool.submit(httpx.post, lab_deployment.url + "/v1/completions", json=body, timeout=300) for _ in range(8)
        ]
        answers = [f.result() for f in futures]
    assert all(a.status_code == 200 for a in answers)
    # 8 requests sent at once to 2 replicas: one replica got at least 4, all in flight together. Each engine
    # counts the most requests it ran in one step (vLLM's scheduler stats); ask until both replicas answered.
    # Right after the burst Serve's router still holds the busy replica's queue length in its cache and sends
    # every quick probe to the other one, so the probes are spaced out (the time-out is only a hang guard).
    peaks: dict[str, int] = {}

    def both_replicas_answered() -> bool:
        health = httpx.get(lab_deployment.url + "/healthz", timeout=30)
        peaks[health.headers["x-labkit-replica-id"]] = health.json()["running_peak"]
        return len(peaks) == 2

    until(both_replicas_answered, "both replicas answering /healthz", timeout_s=300, poll_s=0.5)
    assert max(peaks.values()) >= 2, f"no engine ran two requests in one batch: {peaks}"


def test_engine_and_serve_metrics_are_reachable(lab_deployment):
    from labkit.serve import fetch_metrics

    lab_deployment.complete("warm the metrics", max_tokens=4)
    deadline = time.monotonic() + 300  # a hang guard: Ray exports metrics every few seconds
    text = ""
    while time.monotonic() < deadline and "ray_vllm_num_requests_running" not in text:
        time.sleep(2)
        text = "\n".join(fetch_metrics().values())
    assert "ray_serve_" in text
    assert "ray_vllm_num_requests_running" in text and "ray_vllm_time_to_first_token_seconds" in text


def test_gated_coordinator_in_front_of_the_same_replicas(lab_deployment):
    from labkit.serve import deploy_coordinator, post_json

    url = deploy_coordinator(lab_deployment, max_concurrency=1)
    body = {"model": lab_deployment.served_model_name, "prompt": "gate", "max_tokens": 32, "ignore_eos": True}
    # Hold the single slot with a long stream; once its first event arrived the slot is taken, so every
    # request sent after that waits at the coordinator until the stream ends.
    with httpx.Client(timeout=300) as client, concurrent.futures.ThreadPoolExecutor(3) as pool:
        long = {**body, "max_tokens": 200, "stream": True}
        with client.stream("POST", url + "/v1/completions", json=long) as holder:
            lines = holder.iter_lines()
            assert next(line for line in lines if line.startswith("data: {"))
            futures = [pool.submit(post_json, url + "/v1/completions", body, timeout_s=300) for _ in range(3)]
            for _ in lines:  # read the long answer to its end: the slot is freed
                pass
        answers = [f.result() for f in futures]
    waits = [a["labkit"]["timings"]["coordinator_wait_s"] for a in answers]
    assert all(w > 0 for w in waits), f"a single-slot coordinator must make later requests wait: {waits}"
    assert all(a["labkit"]["replica_id"] for a in answers)
    stream = httpx.post(url + "/v1/completions", json={**body, "stream": True}, timeout=60)
    events = [line for line in stream.text.splitlines() if line.startswith("data: {")]
    assert "coordinator_wait_s" in json.loads(events[-1][6:])["labkit"]["timings"]


def test_one_replica_split_across_two_nodes_answers_through_serve(lab_cluster, lab_deployment):
    """PP 2 on the CPU default: two pipeline stages, each a vLLM rank actor on another worker node."""
    from ray import serve

    from labkit.serve import check_placement, deploy, describe_placement, topology_preset

    config = topology_preset(
        "distributed", num_replicas=1, pipeline_parallel_size=2, app_name="labkit-pp", route_prefix="/pp"
    )
    split = deploy(config)
    try:
        assert split.plan.strategy == "STRICT_SPREAD"
        answer = split.complete("Where do the stages run?", max_tokens=8)
        assert answer["usage"]["completion_tokens"] == 8
        assert answer["choices"][0]["text"]
        placement = describe_placement(split)
        assert len(placement.replicas) == 1
        ranks = placement.replicas[0].ranks
        assert sorted(r["pp_rank"] for r in ranks) == [0, 1]
        assert all(r["process"] == "ray actor" for r in ranks), ranks
        names = lab_cluster.node_names()
        stage_nodes = {r["pp_rank"]: names[r["node_id"]] for r in ranks}
        assert set(stage_nodes.values()) == {"worker-1", "worker-2"}, stage_nodes
        assert check_placement(placement.to_dict(), set(names)) == []
        # the main deployment beside it still answers (its own route, its own engines)
        assert lab_deployment.complete("still there?", max_tokens=2)["usage"]["completion_tokens"] == 2
    finally:
        serve.delete("labkit-pp")
