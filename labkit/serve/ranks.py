"""Where every rank of every replica actually runs: the placement proof.

Owns :class:`RankReporter` (a vLLM *worker extension*: each TP x PP rank process answers with its
rank, its TP and PP rank and its pid), :class:`ReplicaPlacement` / :class:`Placement` (what was
found, checked against the rule "TP ranks share a node, PP stages cross nodes") and
:func:`describe_placement`, which asks each replica for its ranks and looks every rank process up
with Ray: each rank process reads its node id from its own Ray runtime context, and each replica's
node comes from Serve's own record of it. Nothing is taken from the configuration.
"""

from __future__ import annotations

import html
import json
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Placement", "RankReporter", "ReplicaPlacement", "check_placement", "describe_placement"]

#: Route of the replica that answers with its ranks (labkit/serve/_replica.py serves it).
PLACEMENT_ROUTE = "/v1/labkit/placement"


class RankReporter:
    """vLLM worker extension (``worker_extension_cls``): each rank process says who it is."""

    def labkit_rank_info(self) -> dict[str, Any]:
        """Return this rank's numbers, read in the rank's own process.

        Returns
        -------
        dict
            ``rank``, ``local_rank``, ``tp_rank``, ``pp_rank``, ``pid``, ``host_ip`` and, where the
            process is a Ray actor, ``node_id`` and ``actor_id``.
        """
        import os

        from vllm.distributed import parallel_state

        info: dict[str, Any] = {
            "rank": int(getattr(self, "rank", 0)),
            "local_rank": int(getattr(self, "local_rank", 0)),
            "tp_rank": int(parallel_state.get_tp_group().rank_in_group),
            "pp_rank": int(parallel_state.get_pp_group().rank_in_group),
            "pid": os.getpid(),
            "host_ip": os.environ.get("VLLM_HOST_IP"),
        }
        try:
            import ray

            if ray.is_initialized():
                context = ray.get_runtime_context()
                info["node_id"] = context.get_node_id()
                info["actor_id"] = context.get_actor_id()
        except Exception:  # noqa: BLE001 - a rank outside Ray (one process engine) has no node id of its own
            pass
        return info


@dataclass
class ReplicaPlacement:
    """One replica: its own node and the node of each of its ranks."""

    replica_id: str
    node_id: str
    node_name: str
    ranks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stage_nodes(self) -> dict[int, list[str]]:
        """Return, for each pipeline stage, the node names its TP ranks ran on."""
        out: dict[int, list[str]] = {}
        for r in self.ranks:
            out.setdefault(int(r["pp_rank"]), []).append(str(r["node_name"]))
        return dict(sorted(out.items()))


@dataclass
class Placement:
    """Every replica of a deployment and where its TP x PP ranks ran, as Ray reported it in each process."""

    tensor_parallel_size: int
    pipeline_parallel_size: int
    replicas: list[ReplicaPlacement]
    source: str = "ray_runtime_context"
    notes: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """Return what breaks the rule (TP inside a node, PP across nodes); empty when it holds."""
        return check_placement(self.to_dict())

    @property
    def crosses_nodes(self) -> bool:
        """Whether every replica's pipeline stages ran on more than one node."""
        return bool(self.replicas) and all(
            len({n for nodes in rep.stage_nodes.values() for n in nodes}) > 1 for rep in self.replicas
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form a verification log records as ``outputs.placement``."""
        return {
            "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            "source": self.source,
            "replicas": [asdict(r) for r in self.replicas],
            "notes": list(self.notes),
        }

    def __repr__(self) -> str:
        lines = [f"Placement: TP {self.tensor_parallel_size} x PP {self.pipeline_parallel_size}, source {self.source}"]
        for rep in self.replicas:
            lines.append(f"  replica {rep.replica_id} (on {rep.node_name})")
            for r in rep.ranks:
                lines.append(
                    f"    rank {r['rank']}: PP stage {r['pp_rank']}, TP rank {r['tp_rank']} on {r['node_name']}"
                    f" (pid {r['pid']})"
                )
        problems = self.problems()
        lines.append("  rule holds" if not problems else "  rule broken: " + "; ".join(problems))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(rep.replica_id)}</td><td>{r['rank']}</td><td>{r['pp_rank']}</td>"
            f"<td>{r['tp_rank']}</td><td>{html.escape(str(r['node_name']))}</td><td>{r['pid']}</td></tr>"
            for rep in self.replicas
            for r in rep.ranks
        )
        problems = self.problems()
        verdict = (
            "TP ranks share a node; PP stages cross nodes."
            if not problems and self.pipeline_parallel_size > 1
            else "TP ranks share a node."
            if not problems
            else "Rule broken: " + "; ".join(problems)
        )
        return (
            "<table><tr><th>replica</th><th>rank</th><th>PP stage</th><th>TP rank</th><th>node (Ray)</th>"
            f"<th>pid</th></tr>{rows}</table><p>{html.escape(verdict)}</p>"
        )


def check_placement(placement: dict[str, Any], cluster_node_ids: set[str] | None = None) -> list[str]:
    """Check a placement (``Placement.to_dict()`` form) against the chapter's rule.

    Parameters
    ----------
    placement : dict
        ``tensor_parallel_size``, ``pipeline_parallel_size`` and ``replicas`` with their ``ranks``.
    cluster_node_ids : set of str, optional
        The cluster's node ids; when given, every rank's node must be one of them.

    Returns
    -------
    list of str
        One sentence per violation; empty when each replica has TP x PP ranks, the ranks of a
        pipeline stage share one node, and (PP > 1) the stages use more than one node.
    """
    tp = int(placement.get("tensor_parallel_size") or 1)
    pp = int(placement.get("pipeline_parallel_size") or 1)
    out: list[str] = []
    replicas = placement.get("replicas") or []
    if not replicas:
        return ["no replica was found"]
    for rep in replicas:
        rid = rep.get("replica_id", "?")
        ranks = rep.get("ranks") or []
        if len(ranks) != tp * pp:
            out.append(f"replica {rid} has {len(ranks)} ranks where TP {tp} x PP {pp} = {tp * pp}")
            continue
        stages: dict[int, set[str]] = {}
        for r in ranks:
            stages.setdefault(int(r.get("pp_rank", -1)), set()).add(str(r.get("node_id")))
            if cluster_node_ids is not None and r.get("node_id") not in cluster_node_ids:
                out.append(f"replica {rid} rank {r.get('rank')} ran on node {r.get('node_id')}, not in the cluster")
        for stage, nodes in sorted(stages.items()):
            if len(nodes) > 1:
                out.append(f"replica {rid} PP stage {stage} has its TP ranks on {len(nodes)} nodes")
        if pp > 1 and len(set().union(*stages.values())) < 2:
            out.append(f"replica {rid} has its {pp} pipeline stages on one node")
    return out


def _get_json(url: str, timeout_s: float) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - the kit's own local endpoint
        return json.loads(resp.read())


def describe_placement(deployment: Any, *, attempts_per_replica: int = 20, timeout_s: float = 60.0) -> Placement:
    """Ask every replica of a deployment where its ranks run, as Ray tells each rank process.

    Parameters
    ----------
    deployment : labkit.serve.Deployment
        A running deployment (``url``, ``config``, ``config.app_name``).
    attempts_per_replica : int
        Requests to the placement route per replica (Serve picks the replica; the kit asks until
        it has heard from each one).
    timeout_s : float
        Time-out of one request.

    Returns
    -------
    Placement
        Every replica reached, with the node of each rank; replicas not reached are named in
        ``notes``.
    """
    from labkit.cluster import ClusterHandle
    from labkit.contracts import LLM_DEPLOYMENT
    from labkit.serve.metrics import list_replicas

    config = deployment.config
    names = {n.node_id: n.name for n in ClusterHandle(address="auto", embedded=False, config=None).nodes()}
    expected = {
        r["replica_id"]: r
        for r in list_replicas(config.app_name)
        if r["deployment"] == LLM_DEPLOYMENT and r["replica_id"]
    }
    answers: dict[str, dict[str, Any]] = {}
    for _ in range(max(1, attempts_per_replica * max(1, len(expected)))):
        answer = _get_json(deployment.url + PLACEMENT_ROUTE, timeout_s)
        answers[str(answer["replica_id"])] = answer
        if set(expected) <= set(answers):
            break
        time.sleep(0.05)
    replicas: list[ReplicaPlacement] = []
    notes: list[str] = []
    for rid, answer in sorted(answers.items()):
        rep_node = str(answer.get("node_id") or expected.get(rid, {}).get("node_id") or "")
        ranks = []
        for info in sorted(answer.get("ranks", []), key=lambda r: r["rank"]):
            if info.get("node_id"):  # a Ray actor: Ray's runtime context in that process named its node
                node_id, how = str(info["node_id"]), "ray actor"
            else:  # one-process engine: the rank is the replica's engine process, on the replica's node
                node_id, how = rep_node, "engine process of the replica"
            ranks.append(
                {
                    "rank": info["rank"],
                    "tp_rank": info["tp_rank"],
                    "pp_rank": info["pp_rank"],
                    "node_id": node_id,
                    "node_name": names.get(node_id, node_id[:8]),
                    "pid": info["pid"],
                    "process": how,
                }
            )
        replicas.append(ReplicaPlacement(rid, rep_node, names.get(rep_node, rep_node[:8]), ranks))
    missing = sorted(set(expected) - set(answers))
    if missing:
        notes.append(f"{len(missing)} replica(s) did not answer the placement route: {missing}")
    return Placement(config.tensor_parallel_size, config.pipeline_parallel_size, replicas, notes=notes)
