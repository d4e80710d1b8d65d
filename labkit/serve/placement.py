"""Placement: where the replicas of a :class:`~labkit.serve.config.ServeConfig` go, checked first.

Owns :class:`PlacementPlan`, :func:`plan_placement` (TP x PP into placement-group bundles, TP
inside a node, PP across nodes, checked against the cluster's nodes), :func:`check_memory` (the
CPU engines against this machine's memory) and :func:`reserve_placement` (reserve the groups on
a live cluster, report where they landed, release them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from labkit.contracts import CPU_DEVICE_RESOURCE
from labkit.errors import ConfigError, PlacementError
from labkit.serve.config import ServeConfig

__all__ = ["PlacementPlan", "check_memory", "plan_placement", "reserve_placement"]

_GIB = 1024**3


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
    if config.backend == "cpu" and config.devices_per_replica > 1:
        # A replica split over CPU device slots: one slot per rank, planned as GPUs are.
        workers = [n for n in info if not n["is_head"]] or info
        slots = {n["name"]: int(n.get("resources", {}).get(CPU_DEVICE_RESOURCE, 0)) for n in workers}
        if not any(slots.values()):
            msg = (
                f"TP {tp} x PP {pp} on the CPU backend runs each rank on a CPU device slot "
                f"('{CPU_DEVICE_RESOURCE}'), and no node of this cluster offers one. Start the embedded cluster "
                "with cpu_devices_per_node >= 1 (the default is 2), or start your nodes with "
                f"`ray start --resources '{{\"{CPU_DEVICE_RESOURCE}\": 2}}'`."
            )
            raise PlacementError(msg, needed={CPU_DEVICE_RESOURCE: tp * pp}, available=slots)
        extra = {"labkit_worker": 0.001} if any("labkit_worker" in n.get("resources", {}) for n in info) else {}
        return _plan_devices(config, slots, CPU_DEVICE_RESOURCE, "CPU device slot", extra)
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
    return _plan_devices(config, {n["name"]: int(n["gpus"]) for n in info}, "GPU", "GPU", {})


def _plan_devices(
    config: ServeConfig, devices_per_node: dict[str, int], key: str, word: str, extra: dict[str, float]
) -> PlacementPlan:
    """Plan TP x PP ranks on device bundles (``key``: ``GPU`` or the CPU device slot resource)."""
    tp, pp = config.tensor_parallel_size, config.pipeline_parallel_size
    replicas, cpu = config.num_replicas, config.cpus_per_replica
    gpus = devices_per_node
    devices = tp * pp
    largest = max(gpus.values(), default=0)
    if tp > largest:
        msg = (
            f"a replica needs {devices} {word}s (TP {tp} x PP {pp}); TP {tp} must fit inside one node but the "
            f"largest node has {largest}. Lower tensor_parallel_size to <= {largest}."
        )
        raise PlacementError(msg, needed={key: devices, f"{key}_per_node": tp}, available=gpus)
    stage_slots = {k: v // tp for k, v in gpus.items()}
    total_stages = sum(stage_slots.values())
    if total_stages < pp * replicas:
        msg = (
            f"a replica needs {devices} {word}s (TP {tp} x PP {pp}); the largest node has {largest} and PP across "
            f"nodes needs {pp} pipeline stages of {tp} {word}s each per replica, {pp * replicas} for {replicas} "
            f"replica(s); the cluster holds {total_stages} such stages ({gpus}). Add nodes, lower "
            "num_replicas, or lower TP x PP."
        )
        raise PlacementError(msg, needed={key: devices * replicas}, available=gpus)
    hosts = [k for k, v in stage_slots.items() if v > 0]
    if tp == 1 and pp > 1 and len(hosts) < pp:
        msg = (
            f"PP {pp} across nodes puts each pipeline stage on its own node, but only {len(hosts)} node(s) offer a "
            f"{word} ({hosts}). Add nodes or lower pipeline_parallel_size to <= {len(hosts)}."
        )
        raise PlacementError(msg, needed={"nodes": pp}, available={"nodes": len(hosts)})
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
    bundles = [{"CPU": cpu, key: 1.0, **extra}] + [{key: 1.0} for _ in range(devices - 1)]
    # One rank per bundle. With TP 1 every bundle is a pipeline stage: STRICT_SPREAD puts each on its own
    # node. With TP > 1 a stage's ranks must share a node, which no single strategy says; PACK fills a
    # node before the next, so stages cross nodes when a node holds exactly TP devices (the embedded
    # default). describe_placement() shows where the ranks really ran.
    strategy = "STRICT_SPREAD" if tp == 1 else "PACK"
    return PlacementPlan(
        bundles,
        strategy,
        {"num_cpus": cpu},
        None,
        forecast,
        f"Each replica reserves {devices} {word} bundles (TP {tp} x PP {pp}, {strategy}): TP ranks share a node, "
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
    # On CPUs every TP x PP rank is a process of its own with its own KV cache.
    ranks = config.devices_per_replica if config.backend == "cpu" else 1
    needed = per_engine * config.num_replicas * ranks
    avail = available_bytes / _GIB
    if needed > avail:
        msg = (
            f"{config.num_replicas} engines need about {needed:.1f} GiB ({ranks} rank(s) each, "
            f"{config.kv_cache_gib:g} GiB KV cache + ~1.5 GiB per rank) but {avail:.1f} GiB is available. "
            "Lower num_replicas or kv_cache_gib."
        )
        raise ConfigError(msg, field="num_replicas", value=config.num_replicas)
    return {"needed_gib": needed, "available_gib": avail}


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
