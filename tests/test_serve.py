"""Serve: request validation, topology presets, placement planning (no cluster needed)."""

from __future__ import annotations

import json

import pytest

from labkit.errors import ConfigError, PlacementError
from labkit.serve import PRESETS, ServeConfig, check_memory, plan_placement, topology_preset

LIMITS = {"max_tokens_limit": 256, "max_prompt_chars": 100, "max_body_bytes": 2000}


def _parse(body, kind="completions"):
    pytest.importorskip("ray.serve")
    from labkit.serve.protocol import parse_request

    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_request(raw, kind=kind, served_name="m", limits=LIMITS)


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        ({"model": "m"}, 400, "'prompt' is required"),
        ({"model": "m", "prompt": ""}, 400, "'prompt' is required"),
        ({"model": "other", "prompt": "hi"}, 404, "The model 'other' does not exist"),
        ({"prompt": "hi"}, 400, "'model' is required"),
        ({"model": "m", "prompt": "hi", "max_tokens": -1}, 400, "positive integer"),
        ({"model": "m", "prompt": "hi", "max_tokens": 0}, 400, "positive integer"),
        ({"model": "m", "prompt": "hi", "max_tokens": 10**9}, 400, "exceeds this server's limit of 256"),
        ({"model": "m", "prompt": "hi", "max_tokens": "8"}, 400, "positive integer"),
        ({"model": "m", "prompt": "x" * 101}, 400, "limit is 100"),
        ({"model": "m", "prompt": "hi", "temperature": 9}, 400, "'temperature'"),
        ({"model": "m", "prompt": "hi", "n": 2}, 400, "n=1"),
        ({"model": "m", "prompt": "hi", "stream": "yes"}, 400, "'stream'"),
        (b"{" + b" " * 3000 + b"}", 413, "exceeds the limit"),
    ],
)
def test_bad_requests_get_a_clear_4xx(body, status, words):
    from labkit.serve.protocol import BadRequest

    with pytest.raises(BadRequest) as info:
        _parse(body)
    assert info.value.status == status
    assert words in info.value.message
    assert json.loads(info.value.body())["error"]["message"] == info.value.message


def test_good_request_is_normalised():
    req = _parse(
        {
            "model": "m",
            "prompt": ["hi"],
            "max_tokens": 4,
            "stream": True,
            "stream_options": {"include_usage": True},
            "stop": "x",
        }
    )
    assert req["prompt"] == "hi" and req["max_tokens"] == 4 and req["include_usage"] and req["stop"] == ["x"]


def test_chat_request_needs_messages():
    from labkit.serve.protocol import BadRequest

    with pytest.raises(BadRequest, match="'messages' is required"):
        _parse({"model": "m", "messages": []}, kind="chat")
    req = _parse(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 3}, kind="chat"
    )
    assert req["max_tokens"] == 3


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_compose_valid_configs(name):
    config = topology_preset(name)
    config.validate()
    assert config.proxy_location in ("EveryNode", "HeadOnly")
    if not config.throughput_optimized:
        topology_preset(name, num_replicas=2).validate()


def test_direct_ingress_refuses_replicas_nothing_balances_between():
    with pytest.raises(ConfigError, match=r"num_replicas=2 with throughput_optimized=True.*num_replicas=1"):
        topology_preset("direct-ingress", num_replicas=2).validate()
    topology_preset("direct-ingress", num_replicas=2, coordinator=True).validate()  # one ingress routes to both


def test_gated_preset_has_one_coordinator_and_head_only_proxy():
    config = topology_preset("gated", coordinator_max_concurrency=3)
    assert config.coordinator and config.coordinator_max_concurrency == 3 and config.proxy_location == "HeadOnly"


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ConfigError, match=r"Unknown topology 'ring'. Available: \['direct-ingress', 'distributed'"):
        topology_preset("ring")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"num_replicas": 0}, "num_replicas"),
        ({"backend": "tpu"}, "backend"),
        ({"proxy_location": "Everywhere"}, "proxy_location"),
        ({"placement": "random"}, "placement"),
        ({"request_router": "fastest"}, "request_router"),
        ({"max_tokens_limit": 10_000}, "max_tokens_limit"),
    ],
)
def test_bad_serve_config_names_the_field(overrides, field):
    with pytest.raises(ConfigError) as info:
        ServeConfig(**overrides).validate()
    assert info.value.field == field


def _nodes(gpus):
    nodes = [{"node_id": "h", "name": "head", "is_head": True, "cpus": 1, "gpus": 0}]
    nodes += [
        {"node_id": f"w{i}", "name": f"worker-{i}", "is_head": False, "cpus": 2, "gpus": g}
        for i, g in enumerate(gpus, start=1)
    ]
    return nodes


def test_chapter_snippet_bug_is_fixed_by_one_bundle_per_device():
    """The chapter's num_gpus=2 for TP 2 x PP 2 reserves 2 of the 4 devices a replica uses."""
    plan = plan_placement(
        ServeConfig(backend="gpu", num_replicas=1, tensor_parallel_size=2, pipeline_parallel_size=2), _nodes([2, 2])
    )
    assert sum(b.get("GPU", 0) for b in plan.bundles) == 4
    assert "num_gpus" not in plan.ray_actor_options
    assert sorted(plan.nodes_for_replicas[0]) == ["worker-1", "worker-2"]


@pytest.mark.parametrize(
    ("tp", "pp", "replicas", "gpus", "words"),
    [
        (2, 2, 1, [2], "a replica needs 4 GPUs (TP 2 x PP 2); the largest node has 2 and PP across nodes needs 2"),
        (4, 1, 1, [2, 2], "TP 4 must fit inside one node but the largest node has 2"),
        (2, 2, 2, [2, 2], "4 for 2 replica(s); the cluster holds 2 such stages"),
        (1, 1, 1, [0, 0], "the largest node has 0"),
    ],
)
def test_unplaceable_tp_pp_is_refused_with_the_numbers(tp, pp, replicas, gpus, words):
    config = ServeConfig(backend="gpu", num_replicas=replicas, tensor_parallel_size=tp, pipeline_parallel_size=pp)
    with pytest.raises(PlacementError) as info:
        plan_placement(config, _nodes(gpus))
    assert words in str(info.value)


def test_spread_needs_enough_nodes_and_packed_one_big_node():
    with pytest.raises(PlacementError, match="at most one replica per node: 3 replicas need 3 nodes"):
        plan_placement(ServeConfig(num_replicas=3), _nodes([0, 0]))
    plan = plan_placement(ServeConfig(num_replicas=2, placement="packed"), _nodes([0, 0]))
    assert plan.nodes_for_replicas == [["worker-1"], ["worker-1"]]
    with pytest.raises(PlacementError, match="packed"):
        plan_placement(ServeConfig(num_replicas=3, placement="packed"), _nodes([0, 0]))


def _cpu_nodes(slots):
    nodes = _nodes([0] * len(slots))
    for node, n in zip(nodes, [0, *slots], strict=True):
        node["resources"] = (
            {"labkit_head": 1} if node["is_head"] else {"labkit_worker": 1, **({"labkit_cpu_device": n} if n else {})}
        )
    return nodes


def test_cpu_pipeline_stages_get_one_device_slot_each_on_separate_nodes():
    """PP 2 on the CPU backend: one bundle per rank on the CPU device slot resource, STRICT_SPREAD."""
    plan = plan_placement(ServeConfig(num_replicas=1, pipeline_parallel_size=2), _cpu_nodes([2, 2]))
    assert plan.bundles == [{"CPU": 1.0, "labkit_cpu_device": 1.0, "labkit_worker": 0.001}, {"labkit_cpu_device": 1.0}]
    assert plan.strategy == "STRICT_SPREAD"
    assert sorted(plan.nodes_for_replicas[0]) == ["worker-1", "worker-2"]
    tp_pp = plan_placement(
        ServeConfig(num_replicas=1, tensor_parallel_size=2, pipeline_parallel_size=2), _cpu_nodes([2, 2])
    )
    assert len(tp_pp.bundles) == 4
    assert tp_pp.strategy == "PACK"


@pytest.mark.parametrize(
    ("tp", "pp", "slots", "words"),
    [
        (1, 2, [0, 0], "no node of this cluster offers one"),
        (1, 3, [2, 2], "PP 3 across nodes puts each pipeline stage on its own node, but only 2 node(s)"),
        (4, 1, [2, 2], "TP 4 must fit inside one node but the largest node has 2"),
    ],
)
def test_cpu_tp_pp_that_cannot_be_placed_is_refused_before_deploy(tp, pp, slots, words):
    config = ServeConfig(num_replicas=1, tensor_parallel_size=tp, pipeline_parallel_size=pp)
    with pytest.raises(PlacementError) as info:
        plan_placement(config, _cpu_nodes(slots))
    assert words in str(info.value)


def test_cpu_engine_args_use_vllms_ray_executor_only_when_split():
    from labkit.models import resolve_model
    from labkit.serve.app import _engine_args, _runtime_env

    spec = resolve_model("tiny")
    split = ServeConfig(pipeline_parallel_size=2)
    assert _engine_args(split, spec)["distributed_executor_backend"] == "ray"
    assert _engine_args(split, spec)["enforce_eager"] is False
    assert _runtime_env(split)["env_vars"]["LABKIT_VLLM_CPU_RAY"] == "1"
    whole = ServeConfig()
    assert "distributed_executor_backend" not in _engine_args(whole, spec)
    assert "LABKIT_VLLM_CPU_RAY" not in _runtime_env(whole)["env_vars"]


def test_not_enough_memory_for_the_engines():
    with pytest.raises(ConfigError, match=r"4 engines need about 10.0 GiB .* 2.0 GiB is available"):
        check_memory(ServeConfig(num_replicas=4), available_bytes=2 * 1024**3)
    assert check_memory(ServeConfig(num_replicas=2), available_bytes=20 * 1024**3)["needed_gib"] == 5.0
    # every rank of a split CPU replica is a process with its own KV cache
    assert (
        check_memory(ServeConfig(num_replicas=1, pipeline_parallel_size=2), available_bytes=20 * 1024**3)["needed_gib"]
        == 5.0
    )


def test_embedded_cluster_keeps_replicas_off_the_head():
    nodes = _nodes([0, 0])
    for node in nodes:
        node["resources"] = {"labkit_head": 1} if node["is_head"] else {"labkit_worker": 1}
    plan = plan_placement(ServeConfig(num_replicas=2), nodes)
    assert plan.ray_actor_options["resources"] == {"labkit_worker": 0.001}
    assert "resources" not in plan_placement(ServeConfig(num_replicas=2), _nodes([0, 0])).ray_actor_options


def test_packed_on_a_cluster_without_pin_resources_says_how_to_add_them():
    nodes = _nodes([0, 0])
    for node in nodes:
        node["resources"] = {"CPU": node["cpus"]}
    with pytest.raises(PlacementError, match=r"ray start --resources"):
        plan_placement(ServeConfig(num_replicas=2, placement="packed"), nodes)


def _rank(rank, pp, tp, node):
    return {"rank": rank, "pp_rank": pp, "tp_rank": tp, "node_id": node, "node_name": node, "pid": 100 + rank}


@pytest.mark.parametrize(
    ("tp", "pp", "ranks", "problem"),
    [
        (1, 2, [_rank(0, 0, 0, "w1"), _rank(1, 1, 0, "w2")], None),
        (2, 2, [_rank(0, 0, 0, "w1"), _rank(1, 0, 1, "w1"), _rank(2, 1, 0, "w2"), _rank(3, 1, 1, "w2")], None),
        (1, 2, [_rank(0, 0, 0, "w1"), _rank(1, 1, 0, "w1")], "pipeline stages on one node"),
        (2, 2, [_rank(0, 0, 0, "w1"), _rank(1, 0, 1, "w2"), _rank(2, 1, 0, "w2"), _rank(3, 1, 1, "w1")], "2 nodes"),
        (1, 2, [_rank(0, 0, 0, "w1")], "has 1 ranks where TP 1 x PP 2 = 2"),
        (1, 2, [_rank(0, 0, 0, "w1"), _rank(1, 1, 0, "elsewhere")], "not in the cluster"),
    ],
)
def test_placement_rule_tp_inside_a_node_pp_across_nodes(tp, pp, ranks, problem):
    from labkit.serve import check_placement

    placement = {
        "tensor_parallel_size": tp,
        "pipeline_parallel_size": pp,
        "replicas": [{"replica_id": "r1", "node_id": "w1", "node_name": "w1", "ranks": ranks}],
    }
    found = check_placement(placement, {"h", "w1", "w2"})
    if problem is None:
        assert found == []
    else:
        assert any(problem in p for p in found), found


def test_placement_object_prints_what_it_found():
    from labkit.serve.ranks import Placement, ReplicaPlacement

    broken = Placement(1, 2, [ReplicaPlacement("r1", "w1", "worker-1", [_rank(0, 0, 0, "w1"), _rank(1, 1, 0, "w1")])])
    assert not broken.crosses_nodes
    assert "rule broken" in repr(broken) and "Rule broken" in broken._repr_html_()
    good = Placement(1, 2, [ReplicaPlacement("r1", "w1", "worker-1", [_rank(0, 0, 0, "w1"), _rank(1, 1, 0, "w2")])])
    assert good.crosses_nodes and "rule holds" in repr(good)
    assert good.to_dict()["replicas"][0]["ranks"][1]["node_id"] == "w2"
