"""Serving: build and deploy the Ray Serve application around vLLM engines.

Owns the deployment shape the lesson compares and the checks made *before* anything deploys:

- :class:`ServeConfig` holds every knob (model, replicas, TP x PP, proxies, coordinator,
  placement, router); :func:`topology_preset` gives the named topologies of the lesson:

  ============== ==================== ============= ============
  preset         proxies              coordinator   placement
  ============== ==================== ============= ============
  ``distributed`` every node           no            spread
  ``head-proxy``  head only            no            spread
  ``gated``       head only            one, gating   spread
  ``packed``      every node           no            packed
  ============== ==================== ============= ============

- :func:`plan_placement` turns TP x PP into placement-group bundles (TP inside a node, PP
  across nodes) and checks them against the cluster's nodes; it raises
  :class:`~labkit.errors.PlacementError` with the numbers when they cannot fit. The chapter's
  snippet (``ray_actor_options={"num_gpus": 2}`` with TP 2 x PP 2) reserves 2 devices for a
  replica that needs 4; the kit reserves one bundle per device instead.
- :func:`deploy` validates, starts Serve (proxies bound to 127.0.0.1 unless asked otherwise),
  deploys and waits until the application answers; :class:`Deployment` is the handle the
  notebooks use (``url``, ``complete()``, ``shutdown()``).
- :func:`build_llm_config` offers the ``ray.serve.llm`` path (``LLMConfig`` /
  ``build_openai_app``) for GPU clusters, through the same checks.
"""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any

from labkit.errors import ConfigError, DeploymentError, PlacementError

__all__ = [
    "PRESETS",
    "ROUTERS",
    "Deployment",
    "PlacementPlan",
    "ServeConfig",
    "build_llm_config",
    "check_memory",
    "deploy",
    "deploy_coordinator",
    "list_replicas",
    "reserve_placement",
    "fetch_metrics",
    "plan_placement",
    "topology_preset",
]

_GIB = 1024**3

PRESETS: dict[str, dict[str, Any]] = {
    "distributed": {"proxy_location": "EveryNode", "coordinator": False, "placement": "spread"},
    "head-proxy": {"proxy_location": "HeadOnly", "coordinator": False, "placement": "spread"},
    "gated": {"proxy_location": "HeadOnly", "coordinator": True, "placement": "spread"},
    "packed": {"proxy_location": "EveryNode", "coordinator": False, "placement": "packed"},
}

ROUTERS: dict[str, str | None] = {
    "power_of_two": None,  # Serve's default
    "round_robin": "ray.serve.experimental.round_robin_router:RoundRobinRouter",
    "capacity_queue": "ray.serve.experimental.capacity_queue_router:CapacityQueueRouter",
}


@dataclass(frozen=True)
class ServeConfig:
    """Everything that shapes the Serve application. Defaults: the embedded CPU lab.

    Attributes
    ----------
    model : str
        ``"tiny"`` (offline tiny model), ``"dummy:<arch>"``, a directory or a Hub id.
    served_model_name : str or None
        Name clients send as ``model``; default from the model.
    backend : str
        ``"cpu"`` (vLLM CPU build) or ``"gpu"`` (CUDA vLLM).
    num_replicas : int
        Model replicas (each its own engine).
    tensor_parallel_size, pipeline_parallel_size : int
        Devices of one replica: TP inside a node, PP across nodes (GPU backend).
    proxy_location : str
        ``"EveryNode"`` or ``"HeadOnly"``: where Serve runs HTTP proxies.
    coordinator : bool
        Put one gating coordinator on the head in front of the replicas.
    coordinator_max_concurrency : int
        Requests the coordinator lets through at once.
    placement : str
        ``"spread"`` (at most one replica per node) or ``"packed"`` (all on one worker node).
    max_ongoing_requests : int
        Serve's per-replica cap of concurrent requests (router knob).
    request_router : str
        One of :data:`ROUTERS` or ``"module:Class"`` of a Serve ``RequestRouter``.
    host, port : str, int or None
        Where the proxies listen: 127.0.0.1 unless you mean to expose it; port None picks a free
        port when Serve starts (two labs on one machine never share one).
    max_model_len, max_num_seqs : int
        Engine context length and batch size.
    max_tokens_limit, max_prompt_chars, max_body_bytes : int
        Request bounds; larger requests get a 400/413.
    kv_cache_gib : float
        KV cache per CPU engine (``VLLM_CPU_KVCACHE_SPACE``).
    gpu_memory_utilization : float
        Fraction of each GPU vLLM may take (GPU backend).
    cpus_per_replica : float
        Logical CPUs one replica reserves.
    engine_kwargs : dict
        Extra ``AsyncEngineArgs`` fields, passed through.
    telemetry : bool
        Start telemetry reporters in replicas and coordinator.
    deploy_timeout_s : float
        How long to wait for the application to answer.
    app_name : str
        Serve application name.
    """

    model: str = "tiny"
    served_model_name: str | None = None
    backend: str = "cpu"
    num_replicas: int = 2
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    proxy_location: str = "EveryNode"
    coordinator: bool = False
    coordinator_max_concurrency: int = 2
    placement: str = "spread"
    max_ongoing_requests: int = 32
    request_router: str = "power_of_two"
    host: str = "127.0.0.1"
    port: int | None = None
    max_model_len: int = 512
    max_num_seqs: int = 32
    max_tokens_limit: int = 256
    max_prompt_chars: int = 8192
    max_body_bytes: int = 1_000_000
    kv_cache_gib: float = 1.0
    gpu_memory_utilization: float = 0.85
    cpus_per_replica: float = 1.0
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    telemetry: bool = True
    deploy_timeout_s: float = 600.0
    app_name: str = "labkit"

    @property
    def devices_per_replica(self) -> int:
        """TP x PP: the devices one replica spans."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values no cluster could use (checked before deploy)."""
        checks = [
            (
                self.backend in ("cpu", "gpu"),
                "backend",
                f"backend={self.backend!r} is unknown. Available: ['cpu', 'gpu']",
            ),
            (
                isinstance(self.num_replicas, int) and self.num_replicas >= 1,
                "num_replicas",
                f"num_replicas={self.num_replicas!r} must be an integer >= 1.",
            ),
            (
                isinstance(self.tensor_parallel_size, int) and self.tensor_parallel_size >= 1,
                "tensor_parallel_size",
                f"tensor_parallel_size={self.tensor_parallel_size!r} must be an integer >= 1.",
            ),
            (
                isinstance(self.pipeline_parallel_size, int) and self.pipeline_parallel_size >= 1,
                "pipeline_parallel_size",
                f"pipeline_parallel_size={self.pipeline_parallel_size!r} must be an integer >= 1.",
            ),
            (
                self.proxy_location in ("EveryNode", "HeadOnly"),
                "proxy_location",
                f"proxy_location={self.proxy_location!r} is unknown. Available: ['EveryNode', 'HeadOnly']",
            ),
            (
                self.placement in ("spread", "packed"),
                "placement",
                f"placement={self.placement!r} is unknown. Available: ['packed', 'spread']",
            ),
            (
                self.coordinator_max_concurrency >= 1,
                "coordinator_max_concurrency",
                f"coordinator_max_concurrency={self.coordinator_max_concurrency!r} must be >= 1.",
            ),
            (
                self.max_ongoing_requests >= 1,
                "max_ongoing_requests",
                f"max_ongoing_requests={self.max_ongoing_requests!r} must be >= 1.",
            ),
            (
                self.request_router in ROUTERS or ":" in self.request_router,
                "request_router",
                f"request_router={self.request_router!r} is unknown. Available: {sorted(ROUTERS)} or 'module:Class'.",
            ),
            (self.port is None or 0 < self.port < 65536, "port", f"port={self.port!r} must be None or in 1..65535."),
            (
                1 <= self.max_tokens_limit <= self.max_model_len,
                "max_tokens_limit",
                f"max_tokens_limit={self.max_tokens_limit!r} must be in 1..max_model_len ({self.max_model_len}).",
            ),
            (self.kv_cache_gib > 0, "kv_cache_gib", f"kv_cache_gib={self.kv_cache_gib!r} must be > 0."),
            (
                0 < self.gpu_memory_utilization <= 1,
                "gpu_memory_utilization",
                f"gpu_memory_utilization={self.gpu_memory_utilization!r} must be in (0, 1].",
            ),
        ]
        for ok, name, msg in checks:
            if not ok:
                raise ConfigError(msg, field=name, value=getattr(self, name))
        if self.backend == "cpu" and self.devices_per_replica > 1:
            msg = (
                f"TP x PP = {self.tensor_parallel_size} x {self.pipeline_parallel_size} needs backend='gpu'. "
                "On the CPU backend each replica is one engine (TP 1 x PP 1); use plan_placement(..., "
                "backend='gpu') on a cluster with logical GPUs to study where TP x PP would land."
            )
            raise ConfigError(msg, field="backend", value=self.backend)

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a JSON-ready dict."""
        return asdict(self)


def topology_preset(name: str, **overrides: Any) -> ServeConfig:
    """Return the :class:`ServeConfig` of a named topology of the lesson.

    Parameters
    ----------
    name : str
        One of :data:`PRESETS`.
    **overrides
        Any other :class:`ServeConfig` field.

    Returns
    -------
    ServeConfig
        The composed configuration.

    Raises
    ------
    ConfigError
        If the name is unknown.
    """
    if name not in PRESETS:
        msg = f"Unknown topology '{name}'. Available: {sorted(PRESETS)}"
        raise ConfigError(msg, field="topology", value=name)
    return ServeConfig(**{**PRESETS[name], **overrides})


# -- placement ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlacementPlan:
    """How one replica's devices are reserved, and where the replicas can go.

    Attributes
    ----------
    bundles : list of dict
        Placement-group bundles of one replica (one per device; the first also holds the
        replica's CPU). Empty when the replica is a single actor.
    strategy : str
        Placement-group strategy.
    ray_actor_options : dict
        Options of the replica actor itself.
    max_replicas_per_node : int or None
        Serve's spread knob (only without bundles).
    nodes_for_replicas : list of list of str
        For each replica, the node names its stages would use if placed now (a forecast).
    explanation : str
        One sentence a learner reads.
    """

    bundles: list[dict[str, float]]
    strategy: str
    ray_actor_options: dict[str, Any]
    max_replicas_per_node: int | None
    nodes_for_replicas: list[list[str]]
    explanation: str

    def to_dict(self) -> dict[str, Any]:
        """Return the plan as a JSON-ready dict."""
        return asdict(self)


def plan_placement(config: ServeConfig, nodes: list[Any] | None = None) -> PlacementPlan:
    """Plan (and check) the resources of every replica against the cluster's nodes.

    Parameters
    ----------
    config : ServeConfig
        The deployment.
    nodes : list of NodeInfo or dict, optional
        The cluster's nodes (``ClusterHandle.nodes()``); read from Ray when omitted.

    Returns
    -------
    PlacementPlan
        Bundles, strategy and the forecast node of each stage.

    Raises
    ------
    PlacementError
        If TP x PP x replicas cannot be placed, with what is needed and what exists.
    """
    config.validate()
    if nodes is None:
        from labkit.cluster import ClusterHandle

        nodes = ClusterHandle(address="auto", embedded=False, config=None).nodes()
    info = [n if isinstance(n, dict) else n.to_dict() for n in nodes]
    tp, pp = config.tensor_parallel_size, config.pipeline_parallel_size
    replicas = config.num_replicas
    cpu = config.cpus_per_replica
    if config.backend == "cpu":
        workers = [n for n in info if not n["is_head"]] or info
        # The embedded cluster marks its workers with a custom resource: replicas go there and leave
        # the head to Serve's controller, the proxies and the coordinator.
        on_workers = {"labkit_worker": 0.001} if any("labkit_worker" in n.get("resources", {}) for n in info) else {}
        slots = {n["name"]: int(n["cpus"] // cpu) if cpu else replicas for n in workers}
        if config.placement == "packed":
            target = max(slots, key=lambda k: slots[k])
            if slots[target] < replicas:
                msg = (
                    f"placement='packed' puts {replicas} replicas of {cpu:g} CPU on one node, but the largest "
                    f"worker node ({target}) has room for {slots[target]}. Lower num_replicas or cpus_per_replica."
                )
                raise PlacementError(msg, needed={"CPU": replicas * cpu}, available={target: slots[target] * cpu})
            forecast = [[target]] * replicas
            pin = f"labkit_node_{target}"
            if info and not any(pin in n.get("resources", {}) for n in info) and any(n.get("resources") for n in info):
                msg = (
                    f"placement='packed' pins replicas with the custom resource '{pin}', which this cluster's nodes "
                    f"do not have. Start the node with `ray start --resources '{{\"{pin}\": 1}}'`, or use "
                    "placement='spread'."
                )
                raise PlacementError(msg, needed={pin: 0.001})
            return PlacementPlan(
                [],
                "PACK",
                {"num_cpus": cpu, "resources": {pin: 0.001}},
                None,
                forecast,
                f"All {replicas} replicas packed on {target}.",
            )
        usable = [k for k, v in slots.items() if v >= 1]
        if len(usable) < replicas:
            msg = (
                f"placement='spread' puts at most one replica per node: {replicas} replicas need {replicas} nodes "
                f"with {cpu:g} free CPU, the cluster has {len(usable)} ({usable}). Add nodes, lower num_replicas, "
                "or use placement='packed'."
            )
            raise PlacementError(msg, needed={"nodes": replicas}, available={"nodes": len(usable)})
        forecast = [[name] for name in usable[:replicas]]
        return PlacementPlan(
            [],
            "SPREAD",
            {"num_cpus": cpu, **({"resources": on_workers} if on_workers else {})},
            1,
            forecast,
            f"{replicas} replicas, at most one per node.",
        )
    # GPU backend: one bundle per device; TP ranks share a node, PP stages go to other nodes.
    gpus = {n["name"]: int(n["gpus"]) for n in info}
    devices = tp * pp
    largest = max(gpus.values(), default=0)
    if tp > largest:
        msg = (
            f"a replica needs {devices} GPUs (TP {tp} x PP {pp}); TP {tp} must fit inside one node but the largest "
            f"node has {largest}. Lower tensor_parallel_size to <= {largest}."
        )
        raise PlacementError(msg, needed={"GPU": devices, "GPU_per_node": tp}, available=gpus)
    stage_slots = {k: v // tp for k, v in gpus.items()}
    total_stages = sum(stage_slots.values())
    if total_stages < pp * replicas:
        msg = (
            f"a replica needs {devices} GPUs (TP {tp} x PP {pp}); the largest node has {largest} and PP across "
            f"nodes needs {pp} pipeline stages of {tp} GPUs each per replica, {pp * replicas} for {replicas} "
            f"replica(s); the cluster holds {total_stages} such stages ({gpus}). Add GPU nodes, lower "
            "num_replicas, or lower TP x PP."
        )
        raise PlacementError(msg, needed={"GPU": devices * replicas}, available=gpus)
    forecast: list[list[str]] = []
    free = dict(stage_slots)
    for _ in range(replicas):
        stages: list[str] = []
        for _ in range(pp):
            # Prefer a node this replica does not use yet (PP across nodes), with free stages.
            choices = sorted((k for k, v in free.items() if v > 0), key=lambda k: (k in stages, -free[k], k))
            stages.append(choices[0])
            free[choices[0]] -= 1
        forecast.append(stages)
    if devices == 1:
        return PlacementPlan([], "PACK", {"num_cpus": cpu, "num_gpus": 1}, None, forecast, "One GPU per replica.")
    bundles = [{"CPU": cpu, "GPU": 1.0}] + [{"GPU": 1.0} for _ in range(devices - 1)]
    return PlacementPlan(
        bundles,
        "PACK",
        {"num_cpus": cpu},
        None,
        forecast,
        f"Each replica reserves {devices} GPU bundles (TP {tp} x PP {pp}): TP ranks share a node, "
        f"PP stages span {len(set(forecast[0]))} node(s).",
    )


def check_memory(config: ServeConfig, available_bytes: int | None = None) -> dict[str, float]:
    """Check that this machine has memory for the CPU engines asked for.

    Parameters
    ----------
    config : ServeConfig
        The deployment.
    available_bytes : int, optional
        Memory available; read with psutil when omitted.

    Returns
    -------
    dict
        ``needed_gib`` and ``available_gib``.

    Raises
    ------
    ConfigError
        If the engines would not fit.
    """
    if available_bytes is None:
        import psutil

        available_bytes = psutil.virtual_memory().available
    per_engine = config.kv_cache_gib + 1.5 if config.backend == "cpu" else 1.0  # process + weights + kv
    needed = per_engine * config.num_replicas
    avail = available_bytes / _GIB
    if needed > avail:
        msg = (
            f"{config.num_replicas} engines need about {needed:.1f} GiB ({config.kv_cache_gib:g} GiB KV cache + "
            f"~1.5 GiB each) but {avail:.1f} GiB is available. Lower num_replicas or kv_cache_gib."
        )
        raise ConfigError(msg, field="num_replicas", value=config.num_replicas)
    return {"needed_gib": needed, "available_gib": avail}


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
        "enforce_eager": config.backend == "cpu",
    }
    if config.backend == "cpu":
        args["dtype"] = "float32" if spec.load_format == "auto" and "tiny" in spec.served_name else "auto"
    else:
        args["gpu_memory_utilization"] = config.gpu_memory_utilization
        if config.devices_per_replica > 1:
            args["distributed_executor_backend"] = "ray"
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
    else:
        env.update({"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"})
    return {"env_vars": env}


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

    from labkit import _replica

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
        "name": "LLMServer",
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

        options["request_router_config"] = RequestRouterConfig(request_router_class=router.replace(":", "."))
    llm = serve.deployment(_replica.LLMServer).options(**options).bind(settings)
    if not config.coordinator:
        return llm
    coord = serve.deployment(_replica.Coordinator).options(
        name="Coordinator",
        num_replicas=1,
        max_ongoing_requests=100_000,
        ray_actor_options={"num_cpus": 0, "resources": {"labkit_head": 0.001}},
    )
    return coord.bind(llm, config.coordinator_max_concurrency, config.telemetry)


@dataclass
class Deployment:
    """A deployed application: where it answers and how to stop it."""

    config: ServeConfig
    model: Any
    plan: PlacementPlan
    url: str
    deploy_s: float
    replicas: list[dict[str, Any]] = field(default_factory=list)

    @property
    def served_model_name(self) -> str:
        """The name clients send as ``model``."""
        return self.config.served_model_name or self.model.served_name

    def complete(self, prompt: str, *, max_tokens: int = 16, timeout_s: float = 60.0, **extra: Any) -> dict[str, Any]:
        """Send one non-streaming completion and return the JSON answer (with headers under ``_headers``).

        Parameters
        ----------
        prompt : str
            The prompt.
        max_tokens : int
            Tokens to generate.
        timeout_s : float
            Request timeout.
        **extra
            More request fields (``temperature``...).

        Returns
        -------
        dict
            The OpenAI response, plus ``labkit`` attribution and ``_headers``.
        """
        body = {
            "model": self.served_model_name,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            **extra,
        }
        return post_json(
            f"{self.url}/v1/completions", body, timeout_s=timeout_s, headers={"x-labkit-sent-at": f"{time.time():.6f}"}
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready description."""
        return {
            "config": self.config.to_dict(),
            "model": self.model.to_dict(),
            "plan": self.plan.to_dict(),
            "url": self.url,
            "deploy_s": self.deploy_s,
            "replicas": self.replicas,
        }

    def __repr__(self) -> str:
        return (
            f"Deployment({self.config.app_name!r}, {self.config.num_replicas} replicas, "
            f"proxies={self.config.proxy_location}, coordinator={self.config.coordinator}, url={self.url})"
        )

    def shutdown(self) -> None:
        """Delete the application (Serve itself keeps running)."""
        from ray import serve

        serve.delete(self.config.app_name)


def post_json(
    url: str, body: dict[str, Any], *, timeout_s: float = 60.0, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """POST JSON with the standard library and return the decoded answer.

    Parameters
    ----------
    url : str
        Endpoint.
    body : dict
        JSON body.
    timeout_s : float
        Timeout.
    headers : dict, optional
        Extra headers.

    Returns
    -------
    dict
        The decoded JSON, with response headers under ``_headers``.

    Raises
    ------
    DeploymentError
        On a non-2xx answer (status and server message included).
    """
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:  # noqa: S310 - local endpoint
            result = json.loads(resp.read())
            result["_headers"] = {k.lower(): v for k, v in resp.headers.items()}
            return result
    except urllib.error.HTTPError as err:
        text = err.read().decode(errors="replace")[:500]
        msg = f"{url} answered {err.code}: {text}"
        raise DeploymentError(msg) from None


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve_http_port() -> int:
    from ray import serve

    details = serve.context._get_global_client().get_serve_details()
    return int(details["http_options"]["port"])


def _serve_running_proxy_location() -> str | None:
    import ray

    try:
        ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve")
    except ValueError:
        return None
    from ray import serve

    try:
        details = serve.context._get_global_client().get_serve_details()
        return str(details.get("proxy_location", "")) or None
    except Exception:  # noqa: BLE001 - older/newer Serve: fall back to "unknown"
        return "unknown"


def deploy(config: ServeConfig | None = None, *, wait: bool = True, **overrides: Any) -> Deployment:
    """Validate, deploy and wait until the application answers.

    Parameters
    ----------
    config : ServeConfig, optional
        The deployment; defaults to the ``distributed`` topology.
    wait : bool
        Wait until a completion succeeds.
    **overrides
        :class:`ServeConfig` fields to change.

    Returns
    -------
    Deployment
        URL, plan, time to deploy.

    Raises
    ------
    ConfigError, PlacementError, ModelError
        Before anything deploys, for bad values.
    DeploymentError
        If Serve fails or the application does not answer in ``deploy_timeout_s``.
    """
    import ray

    from labkit.models import resolve_model

    config = dataclasses.replace(config or ServeConfig(), **overrides)
    config.validate()
    if not ray.is_initialized():
        msg = (
            "No Ray cluster is connected. Start one first: labkit.start_cluster() (embedded) "
            "or labkit.connect_cluster('auto')."
        )
        raise DeploymentError(msg)
    spec = resolve_model(config.model, served_name=config.served_model_name)
    from labkit.cluster import ClusterHandle

    plan = plan_placement(config, ClusterHandle(address="auto", embedded=False, config=None).nodes())
    if config.backend == "cpu":
        check_memory(config)
    from ray import serve

    started = time.monotonic()
    running = _serve_running_proxy_location()
    want = config.proxy_location
    if running is not None and running.replace("_", "").lower() not in (want.lower(), "unknown"):
        serve.shutdown()
        running = None
    if running is None:
        serve.start(proxy_location=want, http_options={"host": config.host, "port": config.port or _free_port()})
    app = build_app(config, plan, spec)
    try:
        # serve.run would block until RUNNING with no deadline; _run returns at once and we wait below.
        serve._run(app, name=config.app_name, route_prefix="/", _blocking=False)
    except Exception as err:  # noqa: BLE001 - Serve raises many types; wrap with context
        msg = f"Deploying '{config.app_name}' failed: {err}"
        raise DeploymentError(msg) from err
    url = f"http://{'127.0.0.1' if config.host in ('0.0.0.0', '::') else config.host}:{_serve_http_port()}"
    deployment = Deployment(config=config, model=spec, plan=plan, url=url, deploy_s=0.0)
    if wait:
        _wait_until_ready(deployment, config.deploy_timeout_s, started)
    deployment.deploy_s = time.monotonic() - started
    deployment.replicas = list_replicas(config.app_name)
    return deployment


def _wait_until_ready(deployment: Deployment, timeout_s: float, started: float) -> None:
    from ray import serve

    deadline = started + timeout_s
    last = ""
    while time.monotonic() < deadline:
        status = serve.status().applications.get(deployment.config.app_name)
        state = str(status.status) if status else "MISSING"
        if "DEPLOY_FAILED" in state or "UNHEALTHY" in state:
            msg = f"Application '{deployment.config.app_name}' failed to deploy: {status.message or state}"
            raise DeploymentError(msg)
        if "RUNNING" in state:
            try:
                deployment.complete("ready?", max_tokens=1, timeout_s=30)
                return
            except (DeploymentError, OSError) as err:
                last = str(err)
        time.sleep(1.0)
    msg = (
        f"Application '{deployment.config.app_name}' did not answer within {timeout_s:g} s "
        f"({last or 'still deploying'}). "
        "Check `serve.status()` and the replica logs under the Ray session folder."
    )
    raise DeploymentError(msg)


def list_replicas(app_name: str = "labkit") -> list[dict[str, Any]]:
    """Return the running replicas of an application with their node ids.

    Parameters
    ----------
    app_name : str
        Serve application name.

    Returns
    -------
    list of dict
        ``deployment``, ``replica_id``, ``node_id``, ``actor_name``, ``pid``, ``state``.
    """
    from ray import serve

    details = serve.context._get_global_client().get_serve_details()
    app = details.get("applications", {}).get(app_name, {})
    out = []
    for dep_name, dep in app.get("deployments", {}).items():
        for rep in dep.get("replicas", []):
            out.append(
                {
                    "deployment": dep_name,
                    "replica_id": rep.get("replica_id"),
                    "node_id": rep.get("node_id"),
                    "actor_name": rep.get("actor_name"),
                    "pid": rep.get("pid"),
                    "state": str(rep.get("state")),
                }
            )
    return out


def list_proxies() -> list[dict[str, Any]]:
    """Return Serve's HTTP proxies with node id and pid (for telemetry)."""
    from ray import serve

    details = serve.context._get_global_client().get_serve_details()
    return [
        {"node_id": node_id, "actor_name": p.get("actor_name"), "pid": p.get("pid"), "status": str(p.get("status"))}
        for node_id, p in details.get("proxies", {}).items()
    ]


def _metric_name(line: str) -> str:
    if line.startswith("# HELP ") or line.startswith("# TYPE "):
        return line.split(" ", 3)[2]
    return line.split("{", 1)[0].split(" ", 1)[0]


def fetch_metrics(prefixes: tuple[str, ...] = ("ray_vllm", "vllm", "ray_serve")) -> dict[str, str]:
    """Read the Prometheus metrics that Ray exports on every node (vLLM's and Serve's among them).

    vLLM's engine metrics arrive as ``ray_vllm_*`` (``ray_vllm_num_requests_running``,
    ``ray_vllm_num_requests_waiting``, ``ray_vllm_time_to_first_token_seconds``...), Serve's as
    ``ray_serve_*`` (proxy and router latency, ongoing requests). Ray exports them every few
    seconds, so a value can lag the engine by that much.

    Parameters
    ----------
    prefixes : tuple of str
        Keep only metric lines starting with one of these (comments kept for them too).

    Returns
    -------
    dict
        ``{node_id: prometheus_text}`` for every node whose metrics endpoint answered.
    """
    import ray

    out = {}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        port = node.get("MetricsExportPort")
        host = node.get("NodeManagerAddress", "127.0.0.1")
        if not port:
            continue
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:  # noqa: S310
                text = resp.read().decode(errors="replace")
        except OSError:
            continue
        keep = [line for line in text.splitlines() if _metric_name(line).startswith(prefixes)]
        out[node["NodeID"]] = "\n".join(keep)
    return out


def build_llm_config(config: ServeConfig, nodes: list[Any] | None = None) -> dict[str, Any]:
    """Return the ``ray.serve.llm`` ``LLMConfig`` fields of a configuration, after the kit's checks.

    The modern path on GPU clusters: ``LLMConfig(**fields)`` then
    ``build_openai_app({"llm_configs": [llm_config]})``. Built as plain data so it can be
    checked (and taught) on a CPU box; :func:`deploy_llm_app` deploys it where ``ray[llm]`` runs.

    Parameters
    ----------
    config : ServeConfig
        The deployment (GPU backend).
    nodes : list, optional
        Cluster nodes for the placement check; skipped when None and Ray is not connected.

    Returns
    -------
    dict
        Keyword arguments of ``ray.serve.llm.LLMConfig``.

    Raises
    ------
    ConfigError, PlacementError
        As :func:`deploy`.
    """
    from labkit.models import resolve_model

    config.validate()
    if config.backend != "gpu":
        msg = "ray.serve.llm asks for GPUs; use backend='gpu' (the CPU lab deploys with labkit.deploy)."
        raise ConfigError(msg, field="backend", value=config.backend)
    plan = None
    if nodes is not None:
        plan = plan_placement(config, nodes)
    spec = resolve_model(config.model, served_name=config.served_model_name)
    engine = _engine_args(config, spec)
    engine.pop("model")
    engine.pop("served_model_name")
    fields: dict[str, Any] = {
        "model_loading_config": {"model_id": config.served_model_name or spec.served_name, "model_source": spec.model},
        "deployment_config": {"num_replicas": config.num_replicas, "max_ongoing_requests": config.max_ongoing_requests},
        "engine_kwargs": engine,
        "runtime_env": _runtime_env(config),
        "log_engine_metrics": True,
    }
    if plan is not None and plan.bundles:
        fields["placement_group_config"] = {"bundles": plan.bundles, "strategy": plan.strategy}
    return fields


def deploy_llm_app(config: ServeConfig) -> Any:
    """Deploy a configuration through ``ray.serve.llm`` (GPU clusters with ``ray[llm]`` installed).

    Parameters
    ----------
    config : ServeConfig
        The deployment (GPU backend).

    Returns
    -------
    object
        Serve's handle of the OpenAI app.

    Raises
    ------
    MissingDependencyError
        If ``ray.serve.llm`` is not importable.
    """
    from labkit.cluster import ClusterHandle
    from labkit.errors import MissingDependencyError

    fields = build_llm_config(config, ClusterHandle(address="auto", embedded=False, config=None).nodes())
    try:
        from ray import serve
        from ray.serve.llm import LLMConfig, build_openai_app
    except ImportError as err:
        msg = f"ray.serve.llm is not available ({err}). On a GPU machine run: pip install -r requirements/gpu.txt"
        raise MissingDependencyError(msg) from err
    app = build_openai_app({"llm_configs": [LLMConfig(**fields)]})
    serve.start(proxy_location=config.proxy_location, http_options={"host": config.host, "port": config.port or 8000})
    return serve.run(app, name=config.app_name, route_prefix="/")


def reserve_placement(config: ServeConfig, *, timeout_s: float = 30.0) -> list[list[str]]:
    """Reserve the placement groups that ``config``'s replicas would get, report where, release them.

    Works on logical GPUs, so a CPU box shows where TP ranks and PP stages would land.

    Parameters
    ----------
    config : ServeConfig
        The deployment (usually ``backend="gpu"``).
    timeout_s : float
        How long to wait for each reservation.

    Returns
    -------
    list of list of str
        For each replica, the node name of each bundle (one bundle per device).

    Raises
    ------
    PlacementError
        If the plan does not fit, or Ray cannot reserve it in time.
    """
    import ray
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

    from labkit.cluster import ClusterHandle

    nodes = ClusterHandle(address="auto", embedded=False, config=None).nodes()
    plan = plan_placement(config, nodes)
    names = {n.node_id: n.name for n in nodes}
    bundles = plan.bundles or [{"CPU": config.cpus_per_replica, **({"GPU": 1.0} if config.backend == "gpu" else {})}]
    groups = []
    try:
        for _ in range(config.num_replicas):
            group = placement_group(bundles, strategy=plan.strategy if plan.bundles else "PACK")
            groups.append(group)
            ready, _ = ray.wait([group.ready()], timeout=timeout_s)
            if not ready:
                msg = (
                    f"Ray could not reserve {bundles} ({plan.strategy}) within {timeout_s:g} s: the cluster's free "
                    "resources do not fit (other deployments hold them?)."
                )
                raise PlacementError(msg, needed={"bundles": len(bundles)})
        return [
            [
                names.get(node, node)
                for node in (placement_group_table(g)["bundles_to_node_id"][i] for i in range(len(bundles)))
            ]
            for g in groups
        ]
    finally:
        for group in groups:
            remove_placement_group(group)


def deploy_coordinator(
    deployment: Deployment, *, max_concurrency: int = 2, name: str = "gated", route_prefix: str = "/gated"
) -> str:
    """Put a single gating coordinator (on the head) in front of an existing deployment's replicas.

    Both doors then reach the *same* engines: ``deployment.url`` routes straight to the replicas,
    the returned URL goes through the coordinator. The comparison isolates the coordinator.

    Parameters
    ----------
    deployment : Deployment
        A running deployment without coordinator.
    max_concurrency : int
        Requests the coordinator lets through at once.
    name : str
        Serve application name of the coordinator.
    route_prefix : str
        Where it answers.

    Returns
    -------
    str
        The base URL of the gated door (``.../gated``).

    Raises
    ------
    ConfigError
        If ``max_concurrency`` < 1.
    """
    if max_concurrency < 1:
        msg = f"max_concurrency={max_concurrency!r} must be >= 1."
        raise ConfigError(msg, field="max_concurrency", value=max_concurrency)
    from ray import serve

    from labkit import _replica

    handle = serve.get_deployment_handle("LLMServer", app_name=deployment.config.app_name)
    app = (
        serve.deployment(_replica.Coordinator)
        .options(
            name="Coordinator",
            num_replicas=1,
            max_ongoing_requests=100_000,
            ray_actor_options={"num_cpus": 0, "resources": {"labkit_head": 0.001}},
        )
        .bind(handle, max_concurrency, deployment.config.telemetry)
    )
    serve.run(app, name=name, route_prefix=route_prefix)
    return deployment.url + route_prefix
