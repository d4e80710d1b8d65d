"""Embedded cluster: validation before start, topology, teardown without leftovers."""

from __future__ import annotations

import pytest
from _wait import until

from labkit.cluster import ClusterConfig, connect_cluster, find_ray_processes, start_cluster
from labkit.errors import ClusterError, ConfigError


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"num_nodes": 0}, "num_nodes", "at least 1 node"),
        ({"num_nodes": -2}, "num_nodes", "num_nodes=-2"),
        ({"gpus_per_node": (1, 1, 1)}, "gpus_per_node", "names 3 worker nodes but the cluster has 2"),
        ({"gpus_per_node": -1}, "gpus_per_node", ">= 0"),
        ({"gpu_mode": "virtual"}, "gpu_mode", "Available: ['logical', 'physical']"),
        ({"gpus_per_node": 2, "gpu_mode": "physical"}, "gpus_per_node", "this machine has 0"),
        ({"object_store_mb_per_node": 10}, "object_store_mb_per_node", "minimum"),
    ],
)
def test_bad_cluster_config_is_refused_before_start(overrides, field, words):
    from labkit.cluster import list_session_dirs

    before = list_session_dirs()
    with pytest.raises(ConfigError) as info:
        start_cluster(**overrides)
    assert info.value.field == field
    assert words in str(info.value)
    assert list_session_dirs() == before, "nothing may start before the config is checked"


def test_unreachable_address_names_the_address_and_the_fix():
    with pytest.raises(ClusterError) as info:
        connect_cluster("127.0.0.1:1", timeout_s=1)
    text = str(info.value)
    assert "127.0.0.1:1" in text and "ray start --head" in text


def test_bad_address_port_is_a_config_error():
    with pytest.raises(ConfigError, match="no valid port"):
        connect_cluster("127.0.0.1:notaport", timeout_s=1)


@pytest.mark.slow
def test_cluster_with_logical_gpus_places_tp_inside_nodes_and_pp_across():
    """3 nodes, 2 logical GPUs per worker: TP 2 x PP 2 bundles land 2 + 2 on the two workers."""
    from labkit.serve import ServeConfig, reserve_placement

    with start_cluster(gpus_per_node=2) as handle:
        names = {n.name: n for n in handle.nodes()}
        assert set(names) == {"head", "worker-1", "worker-2"}
        assert names["worker-1"].gpus == 2 and names["head"].gpus == 0
        assert len({n.node_id for n in handle.nodes()}) == 3
        topo = handle.describe()
        assert topo["num_nodes"] == 3 and topo["total_gpus"] == 4
        placed = reserve_placement(
            ServeConfig(backend="gpu", num_replicas=1, tensor_parallel_size=2, pipeline_parallel_size=2)
        )
        assert sorted(placed[0]) == ["worker-1", "worker-1", "worker-2", "worker-2"]
        marker = handle._session_marker()
    # stop() kills what outlives its grace period; a process just killed may take a moment to go
    until(lambda: find_ray_processes(marker) == [], "no Ray process of the cluster left", 120)


@pytest.mark.slow
def test_teardown_after_exception_leaves_no_ray_process():
    marker = None
    with pytest.raises(RuntimeError, match="boom"), start_cluster(num_nodes=2) as handle:
        marker = handle._session_marker()
        assert len(handle.nodes()) == 2
        raise RuntimeError("boom")
    # stop() kills what outlives its grace period; a process just killed may take a moment to go
    until(lambda: find_ray_processes(marker) == [], "no Ray process of the cluster left", 120)
    import ray

    assert not ray.is_initialized()


def test_config_defaults_fit_a_small_machine():
    config = ClusterConfig()
    config.validate()
    assert config.num_nodes == 3
    assert config.to_dict()["gpus_per_node"] == [0, 0]


def test_whole_cpu_counts_reach_ray_as_ints():
    # A raylet given num_cpus=4.0 beside a GPU exited at start-up on Ray 2.60 GPU hosts.
    from labkit.cluster import _whole

    assert _whole(4.0) == 4 and isinstance(_whole(4.0), int)
    assert _whole(2) == 2 and isinstance(_whole(2), int)
    assert _whole(0.5) == 0.5


def test_a_worker_past_rays_30_s_wait_is_waited_for_not_fatal():
    from labkit.cluster import _add_worker

    class SlowCluster:
        def add_node(self, **_):
            raise Exception("The current node timed out during startup. This could happen because ...")  # noqa: TRY002

    class BrokenCluster:
        def add_node(self, **_):
            raise ValueError("bad argument")

    slow: list[str] = []
    _add_worker(SlowCluster(), {}, "worker-1", slow)
    assert slow == ["worker-1"]
    with pytest.raises(ValueError, match="bad argument"):
        _add_worker(BrokenCluster(), {}, "worker-2", slow)
    assert slow == ["worker-1"]
