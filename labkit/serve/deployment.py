"""Deploying: :func:`deploy`, the :class:`Deployment` handle and :func:`deploy_coordinator`.

Owns starting Serve (proxies bound to 127.0.0.1 unless asked otherwise), deploying the
application built by :mod:`labkit.serve.app` after the checks of :mod:`labkit.serve.placement`,
waiting until it answers, the handle the notebooks use (``url``, ``complete()``,
``shutdown()``), :func:`post_json`, and the gating coordinator added in front of a running
deployment.
"""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from labkit.contracts import COORDINATOR_RESOURCE, HEADER_SENT_AT, LLM_DEPLOYMENT
from labkit.errors import ConfigError, DeploymentError
from labkit.serve.app import build_app
from labkit.serve.config import ServeConfig
from labkit.serve.metrics import list_replicas, serve_details
from labkit.serve.placement import PlacementPlan, check_memory, plan_placement

__all__ = ["Deployment", "deploy", "deploy_coordinator", "post_json"]


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
            f"{self.url}/v1/completions", body, timeout_s=timeout_s, headers={HEADER_SENT_AT: f"{time.time():.6f}"}
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
    return int(serve_details()["http_options"]["port"])


def _serve_running_proxy_location() -> str | None:
    import ray

    try:
        ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve")
    except ValueError:
        return None
    try:
        return str(serve_details().get("proxy_location", "")) or None
    except Exception:  # noqa: BLE001 - older/newer Serve: fall back to "unknown"
        return "unknown"


def _quiet_serve_driver_log() -> None:
    """Keep Serve's warnings and errors in this process, drop its INFO lines.

    ``import ray.serve`` logs INFO to stderr, which Jupyter draws in red: "Started Serve", and on every
    deploy "Connecting to existing Serve app ... New http_options/controller_options will not be applied",
    which reads as "your settings were ignored" but only means Serve was already running with them. The
    controller's, proxies' and replicas' own logs (in the session's log folder) keep their levels.
    """
    import logging

    logging.getLogger("ray.serve").setLevel(logging.WARNING)


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
    # Serve reports "EveryNode", "every_node" or "ProxyLocation.EveryNode" depending on the path
    if running is not None and running.rsplit(".", 1)[-1].replace("_", "").lower() not in (want.lower(), "unknown"):
        serve.shutdown()
        running = None
    _quiet_serve_driver_log()
    if running is None:
        serve.start(proxy_location=want, http_options={"host": config.host, "port": config.port or _free_port()})
    app = build_app(config, plan, spec)
    try:
        # Ray private: serve.run blocks until RUNNING with no deadline; _run returns at once, and the
        # kit waits below with its own time-out and a message that names the replica that failed.
        serve._run(app, name=config.app_name, route_prefix=config.route_prefix, _blocking=False)
    except Exception as err:  # noqa: BLE001 - Serve raises many types; wrap with context
        msg = f"Deploying '{config.app_name}' failed: {err}"
        raise DeploymentError(msg) from err
    url = f"http://{'127.0.0.1' if config.host in ('0.0.0.0', '::') else config.host}:{_serve_http_port()}"
    url += config.route_prefix.rstrip("/")
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
        if status is not None and ("DEPLOY_FAILED" in state or "UNHEALTHY" in state):
            why = [status.message or state] + [
                f"{name}: {dep.message}" for name, dep in status.deployments.items() if getattr(dep, "message", "")
            ]
            msg = f"Application '{deployment.config.app_name}' failed to deploy: {' | '.join(why)}"
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

    from labkit.serve import _replica

    handle = serve.get_deployment_handle(LLM_DEPLOYMENT, app_name=deployment.config.app_name)
    app = (
        serve.deployment(_replica.Coordinator)  # type: ignore[attr-defined]  # Ray types deployment(cls) as a decorator
        .options(
            name="Coordinator",
            num_replicas=1,
            max_ongoing_requests=100_000,
            ray_actor_options={"num_cpus": 0, "resources": {COORDINATOR_RESOURCE: 0.001}},
        )
        .bind(handle, max_concurrency, deployment.config.telemetry)
    )
    serve.run(app, name=name, route_prefix=route_prefix)
    prefix = deployment.config.route_prefix.rstrip("/")
    base = deployment.url[: -len(prefix)] if prefix and deployment.url.endswith(prefix) else deployment.url
    return base + route_prefix
