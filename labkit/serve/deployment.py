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

from labkit.contracts import HEADER_SENT_AT, LLM_DEPLOYMENT
from labkit.errors import ConfigError, DeploymentError
from labkit.serve.app import build_app, coordinator_actor_options
from labkit.serve.config import ServeConfig
from labkit.serve.hops import serve_env
from labkit.serve.metrics import list_replicas, serve_details
from labkit.serve.placement import PlacementPlan, check_memory, plan_placement

__all__ = ["Deployment", "deploy", "deploy_coordinator", "direct_ingress_url", "measure_clock_offsets", "post_json"]


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


def measure_clock_offsets(url: str, *, probes: int = 16, timeout_s: float = 5.0) -> dict[str, Any]:
    """Measure how far the servers' wall clocks are ahead of this one (for :func:`labkit.stats.hop_times`).

    Sends ``probes`` GETs to the proxy's clock route (:data:`labkit.serve.hops.CLOCK_PATH`) and to the
    replicas' ``/healthz`` (each answers its wall clock and node); per server, the probe with the
    shortest round trip gives ``offset = server_now - (sent + received) / 2``, good to half that
    round trip.

    Parameters
    ----------
    url : str
        The deployment's base URL.
    probes : int
        Probes per route.
    timeout_s : float
        Per probe.

    Returns
    -------
    dict
        ``{"offsets": {"proxy" | node_id: seconds}, "uncertainty_s": {same keys: half the round trip}}``;
        a route that does not answer is left out.
    """
    from labkit.serve.hops import CLOCK_PATH

    base = url.rstrip("/")
    scheme_host = "/".join(base.split("/", 3)[:3])
    best: dict[str, tuple[float, float]] = {}
    for route, key in ((scheme_host + CLOCK_PATH, "proxy"), (base + "/healthz", None)):
        for _ in range(probes):
            sent = time.time()
            try:
                with urllib.request.urlopen(route, timeout=timeout_s) as resp:  # noqa: S310 - the lab's own endpoint
                    data = json.loads(resp.read())
            except (OSError, ValueError):
                break
            received = time.time()
            if not isinstance(data, dict) or not isinstance(data.get("now"), (int, float)):
                break
            name = key or str(data.get("node_id") or "replica")
            rtt = received - sent
            if name not in best or rtt < best[name][1]:
                best[name] = (float(data["now"]) - (sent + received) / 2, rtt)
    return {
        "offsets": {k: v[0] for k, v in best.items()},
        "uncertainty_s": {k: v[1] / 2 for k, v in best.items()},
    }


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


def _proxy_url(host: str, port: int, route_prefix: str) -> str:
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}{route_prefix.rstrip('/')}"


def direct_ingress_url(app_name: str, config: ServeConfig) -> str | None:
    """Return where an application's direct-ingress replica answers (Serve's throughput-optimized mode).

    Parameters
    ----------
    app_name : str
        Serve application name.
    config : ServeConfig
        For the host the replicas listen on and the route prefix.

    Returns
    -------
    str or None
        ``http://host:port/prefix`` of the first running ingress replica; None while none has a port
        (Serve lists the proxies in its target groups until then).
    """
    for group in serve_details().get("target_groups") or []:
        protocol = str(group.get("protocol", ""))
        if group.get("app_name") != app_name or not protocol.endswith("HTTP"):
            continue
        for target in group.get("targets") or []:
            if str(target.get("name", "")).startswith("SERVE_PROXY_ACTOR"):
                continue
            host = target["ip"] if config.host in ("0.0.0.0", "::") else config.host
            return _proxy_url(host, int(target["port"]), str(group.get("route_prefix") or "/"))
    return None


#: The mode the kit started Serve in, per Ray cluster (GCS address): (proxy location, throughput-optimized).
_SERVE_MODES: dict[str, tuple[str, bool]] = {}


def _ensure_serve(config: ServeConfig) -> None:
    """Start Serve in the config's mode; restart it when it runs in another one."""
    import ray
    from ray import serve

    cluster = str(ray.get_runtime_context().gcs_address)
    want = (config.proxy_location, config.throughput_optimized)
    running = _serve_running_proxy_location()
    if running is not None:
        # Serve reports "EveryNode", "every_node" or "ProxyLocation.EveryNode" depending on the path
        location = running.rsplit(".", 1)[-1].replace("_", "").lower()
        known = _SERVE_MODES.get(cluster)
        # A Serve the kit did not start runs without the throughput mode and without the proxy stamp
        same = (known == want) if known is not None else (not config.throughput_optimized)
        if location not in (config.proxy_location.lower(), "unknown") or not same:
            serve.shutdown()
            running = None
    _quiet_serve_driver_log()
    if running is None:
        env = serve_env(throughput_optimized=config.throughput_optimized)
        serve.start(
            proxy_location=config.proxy_location,
            http_options={"host": config.host, "port": config.port or _free_port()},
            controller_options={"runtime_env": {"env_vars": env}},
        )
        _SERVE_MODES[cluster] = want


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
    _ensure_serve(config)
    app = build_app(config, plan, spec)
    try:
        # Ray private: serve.run blocks until RUNNING with no deadline; _run returns at once, and the
        # kit waits below with its own time-out and a message that names the replica that failed.
        serve._run(app, name=config.app_name, route_prefix=config.route_prefix, _blocking=False)
    except Exception as err:  # noqa: BLE001 - Serve raises many types; wrap with context
        msg = f"Deploying '{config.app_name}' failed: {err}"
        raise DeploymentError(msg) from err
    url = "" if config.throughput_optimized else _proxy_url(config.host, _serve_http_port(), config.route_prefix)
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
        if "RUNNING" in state and deployment.config.throughput_optimized:
            deployment.url = direct_ingress_url(deployment.config.app_name, deployment.config) or ""
        if "RUNNING" in state and deployment.url:
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
            ray_actor_options=coordinator_actor_options(deployment.config.throughput_optimized),
        )
        .bind(handle, max_concurrency, deployment.config.telemetry)
    )
    serve.run(app, name=name, route_prefix=route_prefix)
    if deployment.config.throughput_optimized:
        deadline = time.monotonic() + 60.0  # Serve lists the new replica's port once it has one
        while (url := direct_ingress_url(name, deployment.config)) is None and time.monotonic() < deadline:
            time.sleep(0.5)
        if url is None:
            msg = f"The gated door '{name}' runs but Serve listed no direct-ingress port for it within 60 s."
            raise DeploymentError(msg)
        return url
    prefix = deployment.config.route_prefix.rstrip("/")
    base = deployment.url[: -len(prefix)] if prefix and deployment.url.endswith(prefix) else deployment.url
    return base + route_prefix
