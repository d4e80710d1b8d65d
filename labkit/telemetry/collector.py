"""The telemetry collector: a Ray actor that holds pushed samples until the recorder drains them.

Owns the actor's buffer class (``_Collector``, which :func:`get_collector` wraps with
``ray.remote``; Ray pickles it by reference to this module's path, so it stays here), the
actor's name and namespace, and the helpers through which the package reaches Ray from any
process (``_require_ray``, ``_current_node_id``). Ray is imported only inside them.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from typing import Any

from labkit.errors import ConfigError, MissingDependencyError, TelemetryError

__all__ = [
    "COLLECTOR_NAME",
    "COLLECTOR_NAMESPACE",
    "DEFAULT_MAX_SAMPLES",
    "get_collector",
    "kill_collector",
]

COLLECTOR_NAME = "labkit-telemetry"
COLLECTOR_NAMESPACE = "labkit"
DEFAULT_MAX_SAMPLES = 200_000  # ~10 components x 10 Hz x 30 min; about 60 MB of dicts at most


# ---------------------------------------------------------------------------------------------
# Collector: a Ray actor that holds pushed samples until the recorder drains them
# ---------------------------------------------------------------------------------------------


class _Collector:
    """Bounded buffer of sample dicts; wrapped by ``ray.remote`` in :func:`get_collector`."""

    def __init__(self, max_samples: int = DEFAULT_MAX_SAMPLES) -> None:
        self._buf: deque[dict[str, Any]] = deque(maxlen=max_samples)
        self._pushed = 0
        self._dropped = 0

    def push(self, samples: list[dict[str, Any]]) -> int:
        overflow = len(self._buf) + len(samples) - (self._buf.maxlen or 0)
        if overflow > 0:
            self._dropped += overflow
        self._buf.extend(samples)
        self._pushed += len(samples)
        return len(samples)

    def drain(self, since_wall_s: float | None = None) -> list[dict[str, Any]]:
        out = list(self._buf)
        self._buf.clear()
        if since_wall_s is not None:
            out = [s for s in out if s.get("wall_s", 0.0) >= since_wall_s]
        return out

    def stats(self) -> dict[str, Any]:
        return {
            "size": len(self._buf),
            "pushed": self._pushed,
            "dropped": self._dropped,
            "max_samples": self._buf.maxlen,
            "pid": os.getpid(),
        }


def _require_ray() -> Any:
    # ray is heavy (about a second to import): only the collector path needs it.
    try:
        import ray
    except ImportError as err:
        msg = "Telemetry collection needs Ray. Run: pip install 'ray[serve]'"
        raise MissingDependencyError(msg) from err
    if not ray.is_initialized():
        msg = (
            "Ray is not initialized, so there is no telemetry collector to reach. Start the "
            "cluster first (labkit.cluster or ray.init()), or record without the collector: "
            "TelemetryRecorder(use_collector=False)."
        )
        raise TelemetryError(msg)
    return ray


def get_collector(create: bool = True, *, max_samples: int = DEFAULT_MAX_SAMPLES) -> Any:
    """Return the handle of the telemetry collector actor, creating it when asked.

    The collector is a named, detached Ray actor (``num_cpus=0``) in namespace
    :data:`COLLECTOR_NAMESPACE`, so every process of the cluster finds the same one; it lives
    until the cluster stops or :func:`kill_collector` is called.

    Parameters
    ----------
    create : bool
        Create the actor when it does not exist (get-or-create, safe against races).
    max_samples : int
        Size of its ring buffer when it is created; the oldest samples go first.

    Returns
    -------
    ray.actor.ActorHandle or None
        The handle, or None when ``create`` is False and there is no collector.

    Raises
    ------
    TelemetryError
        Ray is not initialized in this process.
    MissingDependencyError
        Ray is not installed.
    ConfigError
        ``max_samples`` is not positive.
    """
    if max_samples < 1:
        msg = f"max_samples={max_samples!r} must be a positive integer, e.g. {DEFAULT_MAX_SAMPLES}."
        raise ConfigError(msg, field="max_samples", value=max_samples)
    ray = _require_ray()
    if not create:
        try:
            return ray.get_actor(COLLECTOR_NAME, namespace=COLLECTOR_NAMESPACE)
        except ValueError:
            return None
    actor_cls = ray.remote(num_cpus=0, max_restarts=0)(_Collector)
    return actor_cls.options(
        name=COLLECTOR_NAME, namespace=COLLECTOR_NAMESPACE, get_if_exists=True, lifetime="detached"
    ).remote(max_samples)


def kill_collector() -> bool:
    """Stop the collector actor if it exists.

    Returns
    -------
    bool
        True when a collector was found and killed.

    Raises
    ------
    TelemetryError
        Ray is not initialized in this process.
    """
    ray = _require_ray()
    handle = get_collector(create=False)
    if handle is None:
        return False
    ray.kill(handle)
    return True


def _current_node_id() -> str:
    """Return the Ray node id of this process, or "local" outside Ray."""
    ray = sys.modules.get("ray")  # only consulted when this process already uses Ray
    if ray is not None and ray.is_initialized():
        return str(ray.get_runtime_context().get_node_id())
    return "local"
