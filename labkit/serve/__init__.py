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
  ``direct-ingress`` none: the client   no            one replica
                  reaches the replica
  ============== ==================== ============= ============

- :func:`plan_placement` turns TP x PP into placement-group bundles (TP inside a node, PP
  across nodes) and checks them against the cluster's nodes; it raises
  :class:`~labkit.errors.PlacementError` with the numbers when they cannot fit. The chapter's
  snippet (``ray_actor_options={"num_gpus": 2}`` with TP 2 x PP 2) reserves 2 devices for a
  replica that needs 4; the kit reserves one bundle per device instead.
- :func:`deploy` validates, starts Serve (proxies bound to 127.0.0.1 unless asked otherwise),
  deploys and waits until the application answers; :class:`Deployment` is the handle the
  notebooks use (``url``, ``complete()``, ``shutdown()``).

Layout (import every name from ``labkit.serve``; the submodules are its implementation, each
importing only those above it): :mod:`~labkit.serve.config` (:class:`ServeConfig`,
:data:`PRESETS`, :data:`ROUTERS`, :func:`topology_preset`), :mod:`~labkit.serve.placement`
(:class:`PlacementPlan`, :func:`plan_placement`, :func:`check_memory`, :func:`reserve_placement`),
:mod:`~labkit.serve.app` (:func:`build_app`),
:mod:`~labkit.serve.metrics` (:func:`list_replicas`, :func:`serve_details`, :func:`fetch_metrics`)
and :mod:`~labkit.serve.deployment` (:func:`deploy`, :class:`Deployment`, :func:`post_json`,
:func:`deploy_coordinator`, :func:`direct_ingress_url`, :func:`measure_clock_offsets`);
:mod:`~labkit.serve.hops` runs in Serve's proxies (the arrival stamp of every request).
Patch a name where it is looked up (``labkit.serve.deployment.plan_placement``), not here. Nothing
here imports ray or vllm at import time; :mod:`labkit.serve._replica` loads only when an
application is built.
"""

from __future__ import annotations

from labkit.serve.app import build_app as build_app
from labkit.serve.config import PRESETS, ROUTERS, ServeConfig, topology_preset
from labkit.serve.deployment import Deployment, deploy, deploy_coordinator, direct_ingress_url, measure_clock_offsets
from labkit.serve.deployment import post_json as post_json
from labkit.serve.metrics import fetch_metrics, list_replicas
from labkit.serve.placement import PlacementPlan, check_memory, plan_placement, reserve_placement
from labkit.serve.ranks import Placement, check_placement, describe_placement

__all__ = [
    "PRESETS",
    "ROUTERS",
    "Deployment",
    "Placement",
    "PlacementPlan",
    "ServeConfig",
    "check_memory",
    "check_placement",
    "deploy",
    "deploy_coordinator",
    "describe_placement",
    "direct_ingress_url",
    "fetch_metrics",
    "list_replicas",
    "measure_clock_offsets",
    "plan_placement",
    "reserve_placement",
    "topology_preset",
]
