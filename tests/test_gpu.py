"""GPU path on real NVIDIA GPUs: simulated nodes that own devices, placement, NVML, deploys.

Run on a GPU host (after ``scripts/gpu/install_wheels.sh``) with ``pytest -m gpu tests/test_gpu.py``.
Everything here is skipped where NVML finds no NVIDIA GPU. The cluster is a head without GPU and
workers that own the GPUs: one worker for one GPU (or an odd count), two that own half each for an
even count. The pipeline tests need two GPUs; the rest run on one.
"""

from __future__ import annotations

import os

import pytest

from labkit.cluster import count_physical_gpus

GPUS = count_physical_gpus()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(GPUS == 0, reason="needs an NVIDIA GPU (NVML found none)")]
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


@pytest.fixture(autouse=True)
def _no_nvlink_multicast(monkeypatch):
    for key, value in NO_MULTICAST.items():
        monkeypatch.setenv(key, value)


WORKERS = 2 if GPUS >= 2 and GPUS % 2 == 0 else 1


@pytest.fixture
def gpu_cluster():
    """Head without GPU plus workers that own the physical GPUs (one worker per half, or one for all)."""
    from labkit.cluster import start_cluster

    handle = start_cluster(
        num_nodes=1 + WORKERS,
        gpus_per_node=GPUS // WORKERS,
        gpu_mode="physical",
        cpus_per_node=4.0,
        start_timeout_s=120.0,
    )
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def split_cluster(request):
    """The cluster above when it has two GPU workers (a pipeline of two stages can cross nodes)."""
    if WORKERS < 2:
        pytest.skip(f"needs an even number of GPUs (2 or more), this host has {GPUS}")
    return request.getfixturevalue("gpu_cluster")


def test_each_simulated_node_owns_its_own_gpu(gpu_cluster):
    import ray

    nodes = gpu_cluster.nodes()
    gpus = {n.name: n.gpus for n in nodes}
    expected = {"head": 0.0, **{f"worker-{i}": float(GPUS // WORKERS) for i in range(1, WORKERS + 1)}}
    assert gpus == expected, gpus

    @ray.remote(num_gpus=1)
    def which_gpu() -> tuple[str, str, str]:
        import pynvml

        pynvml.nvmlInit()
        try:
            index = int(os.environ["CUDA_VISIBLE_DEVICES"].split(",")[0])
            uuid = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(index))
        finally:
            pynvml.nvmlShutdown()
        return ray.get_runtime_context().get_node_id(), os.environ["CUDA_VISIBLE_DEVICES"], str(uuid)

    names = gpu_cluster.node_names()
    seen = {}
    for node in nodes:
        if node.is_head:
            continue
        strategy = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(node.node_id, soft=False)
        node_id, visible, uuid = ray.get(which_gpu.options(scheduling_strategy=strategy).remote(), timeout=120)
        seen[names[node_id]] = (visible, uuid)
    assert set(seen) == {f"worker-{i}" for i in range(1, WORKERS + 1)}, seen
    assert len({uuid for _, uuid in seen.values()}) == WORKERS, f"each node must own other physical GPUs: {seen}"


@pytest.mark.slow
def test_one_replica_answers_on_the_worker_that_owns_the_gpu(gpu_cluster):
    """The kit deploys a dummy-weight Llama on one GPU; the replica lands on a GPU worker and answers."""
    import labkit
    from labkit.telemetry import GpuSampler

    config = labkit.topology_preset(
        "distributed",
        backend="gpu",
        model="dummy:llama-2-7b",
        num_replicas=1,
        max_model_len=1024,
        max_num_seqs=16,
        gpu_memory_utilization=0.5,
        deploy_timeout_s=400.0,
    )
    deployment = labkit.deploy(config)
    try:
        assert all(node.startswith("worker-") for node in deployment.plan.nodes_for_replicas[0]), deployment.plan
        answer = deployment.complete("One replica on one GPU", max_tokens=8)
        assert answer["usage"]["completion_tokens"] == 8
        used = [s.gpu_mem_used_bytes for s in GpuSampler().sample_once()]
        assert max(used) > 4 * 1024**3, used  # the 6.7 B bf16 weights (13 GB) sit on a GPU
    finally:
        deployment.shutdown()


def test_pipeline_stages_are_placed_on_both_nodes(split_cluster):
    from labkit.serve import plan_placement, reserve_placement, topology_preset

    config = topology_preset(
        "distributed", backend="gpu", num_replicas=1, tensor_parallel_size=1, pipeline_parallel_size=2
    )
    plan = plan_placement(config, split_cluster.nodes())
    assert len(plan.bundles) == 2 and all(b["GPU"] == 1.0 for b in plan.bundles)
    assert sorted(plan.nodes_for_replicas[0]) == ["worker-1", "worker-2"]
    placed = reserve_placement(config, timeout_s=60)
    assert sorted(placed[0]) == ["worker-1", "worker-2"], placed


@pytest.mark.slow
def test_pp2_replica_answers_across_two_gpu_nodes(split_cluster):
    """The kit deploys a dummy-weight Llama with PP 2 over two GPU nodes and it answers."""
    import labkit

    config = labkit.topology_preset(
        "distributed",
        backend="gpu",
        model="dummy:llama-2-7b",
        num_replicas=1,
        tensor_parallel_size=1,
        pipeline_parallel_size=2,
        max_model_len=1024,
        max_num_seqs=16,
        gpu_memory_utilization=0.5,
        engine_kwargs={"enforce_eager": True},
        deploy_timeout_s=400.0,
    )
    deployment = labkit.deploy(config)
    try:
        answer = deployment.complete("Pipeline parallel across nodes", max_tokens=8)
        assert answer["usage"]["completion_tokens"] == 8
        from labkit.telemetry import GpuSampler

        used = {s.component_id: s.gpu_mem_used_bytes for s in GpuSampler().sample_once()}
        assert used["gpu0"] > 4 * 1024**3 and used["gpu1"] > 4 * 1024**3, used
    finally:
        deployment.shutdown()


# The tests that need no cluster.
def test_gpu_sampler_reads_every_gpu():
    from labkit.telemetry import GpuSampler

    sampler = GpuSampler()
    assert sampler.available, sampler.reason
    samples = sampler.sample_once()
    assert len(samples) == GPUS
    for s in samples:
        assert s.role == "gpu" and 0 <= s.gpu_util_percent <= 100
        assert 0 < s.gpu_mem_used_bytes <= s.gpu_mem_total_bytes


def test_environment_record_names_the_gpus():
    from labkit.record import record_environment

    env = record_environment()
    text = repr(env.get("hardware", env)).lower()
    assert "nvidia" in text or "h100" in text or "h200" in text, text[:500]
