"""Code that runs inside Serve's HTTP proxies: the stamp of the proxy hop.

Serve calls :func:`proxy_middlewares` in every proxy it starts when the controller's environment
has ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=labkit.serve.hops:proxy_middlewares`` (the kit
sets it through ``serve.start(controller_options=...)``, see :func:`serve_env`). The middleware
adds one header to every request before Serve's router sees it: the proxy's wall clock when the
request arrived (:data:`~labkit.contracts.HEADER_PROXY_AT`). The replica turns it into the
``proxy_at_s`` hop stamp. ``GET /-/labkit/clock`` answers the proxy's wall clock and node, so a
client on another host can measure the offset between the two clocks.

Imports only the standard library at module level (Serve imports it in every proxy).
"""

from __future__ import annotations

import json
import time
from typing import Any

from labkit.contracts import HEADER_PROXY_AT

__all__ = ["CLOCK_PATH", "ProxyStamp", "proxy_middlewares", "serve_env"]

#: The proxies answer their wall clock here (``{"now": ..., "node_id": ...}``).
CLOCK_PATH = "/-/labkit/clock"
_CALLBACK = "labkit.serve.hops:proxy_middlewares"
_HEADER = HEADER_PROXY_AT.encode()


def serve_env(*, throughput_optimized: bool = False) -> dict[str, str]:
    """Return the environment the kit gives Serve's controller (and so its proxies).

    Parameters
    ----------
    throughput_optimized : bool
        Serve's throughput-optimized mode (``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``): direct ingress into
        the replicas (no proxies), gRPC between deployments, user code on the replica's own loop.

    Returns
    -------
    dict
        Environment variables.
    """
    env = {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": _CALLBACK}
    if throughput_optimized:
        env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    return env


class ProxyStamp:
    """Pure ASGI middleware: stamp the arrival time, answer the clock probe."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.node_id = ""
        try:
            import ray

            self.node_id = ray.get_runtime_context().get_node_id()
        except Exception:  # noqa: BLE001 - outside Ray (unit tests): no node id
            self.node_id = ""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Stamp an HTTP request's arrival, or answer the clock probe; pass anything else through."""
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        now = time.time()
        if scope.get("path") == CLOCK_PATH:
            body = json.dumps({"now": now, "node_id": self.node_id, "role": "proxy"}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        scope = dict(scope)
        scope["headers"] = [*scope.get("headers", []), (_HEADER, b"%.6f" % now)]
        await self.app(scope, receive, send)


def proxy_middlewares() -> list[Any]:
    """Serve's proxy callback: the middlewares every proxy wraps its ASGI app in."""
    from starlette.middleware import Middleware

    return [Middleware(ProxyStamp)]
