"""What a running application exposes: its replicas, Serve's proxies and the Prometheus metrics.

Owns :func:`serve_details` (the one read of Serve's details), :func:`list_replicas` and
:func:`fetch_metrics` (vLLM's and Serve's metrics as Ray exports them on every node).
"""

from __future__ import annotations

import urllib.request
from typing import Any

__all__ = ["fetch_metrics", "list_replicas", "serve_details"]


def serve_details() -> dict[str, Any]:
    """Return Serve's details of the running instance: applications, replicas, proxies, HTTP options.

    Returns
    -------
    dict
        What ``serve status`` and the dashboard show, as plain data.
    """
    from ray import serve

    # Ray private: replicas with actor and node ids, the proxy location and the HTTP port are only in
    # the controller's details (serve.status() has none of them, the REST API needs the dashboard).
    client = serve.context._get_global_client()
    return dict(client.get_serve_details())  # type: ignore[union-attr]  # Ray raises, never returns None, by default


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
    details = serve_details()
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
