"""Serve configuration: :class:`ServeConfig`, the named topologies and the routers.

Owns every knob of the deployment (model, replicas, TP x PP, proxies, coordinator, placement,
router), its validation before anything deploys, :data:`PRESETS` with :func:`topology_preset`,
and :data:`ROUTERS` (Serve ``RequestRouter`` class paths).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from labkit.errors import ConfigError

__all__ = ["PRESETS", "ROUTERS", "ServeConfig", "topology_preset"]


PRESETS: dict[str, dict[str, Any]] = {
    "distributed": {"proxy_location": "EveryNode", "coordinator": False, "placement": "spread"},
    "head-proxy": {"proxy_location": "HeadOnly", "coordinator": False, "placement": "spread"},
    "gated": {"proxy_location": "HeadOnly", "coordinator": True, "placement": "spread"},
    "packed": {"proxy_location": "EveryNode", "coordinator": False, "placement": "packed"},
    # Serve's throughput-optimized mode: no proxies, the client reaches the replica's own HTTP server.
    "direct-ingress": {
        "proxy_location": "EveryNode",
        "coordinator": False,
        "placement": "spread",
        "throughput_optimized": True,
        "num_replicas": 1,
    },
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
        Devices of one replica: TP inside a node, PP across nodes. A device is a GPU, or on the
        CPU backend a CPU device slot (``labkit_cpu_device``) of an embedded worker node: each rank
        is then its own process (a Ray actor of vLLM's Ray executor) on the node Ray chose.
    proxy_location : str
        ``"EveryNode"`` or ``"HeadOnly"``: where Serve runs HTTP proxies.
    throughput_optimized : bool
        Serve's throughput-optimized mode (``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` in the controller and
        the replicas): no HTTP proxies; the ingress deployment's replicas run their own HTTP servers
        (direct ingress) and the client connects to one (``Deployment.url``); handle calls use gRPC and
        user code runs on the replica's own event loop. Serve has no balancer in front of several
        direct-ingress replicas (its answer is an HAProxy ingress), so without a coordinator it
        takes ``num_replicas=1``.
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
    route_prefix : str
        Where the application answers (``"/"``; another prefix lets a second application of
        other engines run beside it).
    """

    model: str = "tiny"
    served_model_name: str | None = None
    backend: str = "cpu"
    num_replicas: int = 2
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    proxy_location: str = "EveryNode"
    throughput_optimized: bool = False
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
    route_prefix: str = "/"

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
                not (self.throughput_optimized and not self.coordinator and self.num_replicas != 1),
                "num_replicas",
                f"num_replicas={self.num_replicas!r} with throughput_optimized=True: each direct-ingress replica "
                "is its own HTTP server and nothing balances between them. Use num_replicas=1, or "
                "coordinator=True (one ingress that routes to every replica), or throughput_optimized=False.",
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
            (
                isinstance(self.route_prefix, str) and self.route_prefix.startswith("/"),
                "route_prefix",
                f"route_prefix={self.route_prefix!r} must start with '/' (e.g. '/' or '/pp').",
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
