"""A connected cluster: :class:`ClusterHandle` (topology and teardown) and :class:`NodeInfo`.

Owns the one set of running embedded clusters (``_ACTIVE``), the ``atexit`` hook and the SIGTERM
handler that kill them when the process ends (a Jupyter kernel shut down or restarted while its
cluster runs: at once, quietly, leaving no process, session folder or stale Ray address file), and
the filter that keeps Ray's expected teardown message out of a notebook's output.
:mod:`labkit.cluster.start` adds each cluster it starts to that set.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from labkit.cluster.config import _GIB, NODE_LABEL, ClusterConfig
from labkit.cluster.processes import (
    _kill_session_now,
    _kill_survivors,
    _read_ray_address_file,
    _restore_ray_address_file,
    _session_descendants,
    _temp_root,
    _wait_for_no_processes,
)

__all__ = ["ClusterHandle", "NodeInfo"]


@dataclass(frozen=True)
class NodeInfo:
    """One node of the cluster as Ray reports it."""

    node_id: str
    name: str
    is_head: bool
    alive: bool
    cpus: float
    gpus: float
    memory_bytes: int
    object_store_bytes: int
    labels: dict[str, str] = field(default_factory=dict)
    resources: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the node as a JSON-ready dict."""
        return asdict(self)


class ClusterHandle:
    """A connected Ray cluster: its topology, and (when the kit started it) its teardown.

    Use it as a context manager, or call :meth:`stop`.
    """

    start_s: float  # seconds the embedded cluster took to start; set by start_cluster only

    def __init__(
        self,
        *,
        address: str,
        embedded: bool,
        config: ClusterConfig | None,
        cluster: Any = None,
        temp_dir: str | None = None,
    ) -> None:
        self.address = address
        self.temp_dir = temp_dir
        self.embedded = embedded
        self.config = config
        self._cluster = cluster
        self._stopped = False
        self.started_at = time.time()
        # What Ray's address file held before this cluster started, when a cluster answered there.
        self.previous_address: str | None = None

    # -- topology --------------------------------------------------------------------------
    def nodes(self) -> list[NodeInfo]:
        """Return the alive nodes, head first, then by name.

        Returns
        -------
        list of NodeInfo
            One entry per node.
        """
        import ray  # heavy: only when a cluster exists

        result = []
        for node in ray.nodes():
            if not node.get("Alive", False):
                continue
            res = dict(node.get("Resources", {}))
            labels = dict(node.get("Labels", {}) or {})
            is_head = "node:__internal_head__" in res
            name = labels.get(NODE_LABEL) or ("head" if is_head else node["NodeID"][:8])
            result.append(
                NodeInfo(
                    node_id=node["NodeID"],
                    name=name,
                    is_head=is_head,
                    alive=True,
                    cpus=res.get("CPU", 0.0),
                    gpus=res.get("GPU", 0.0),
                    memory_bytes=int(res.get("memory", 0)),
                    object_store_bytes=int(res.get("object_store_memory", 0)),
                    labels={k: v for k, v in labels.items() if not k.startswith("ray.io/")},
                    resources={k: v for k, v in res.items() if not k.startswith("node:")},
                )
            )
        result.sort(key=lambda n: (not n.is_head, n.name))
        return result

    def describe(self) -> dict[str, Any]:
        """Return the topology as a JSON-ready dict (what a verification log records).

        Returns
        -------
        dict
            ``address`` kind, ``embedded``, ``config``, ``nodes`` and totals.
        """
        nodes = self.nodes()
        return {
            "embedded": self.embedded,
            "address": "embedded" if self.embedded else _redact_address(self.address),
            "config": self.config.to_dict() if self.config else None,
            "num_nodes": len(nodes),
            "total_cpus": sum(n.cpus for n in nodes),
            "total_gpus": sum(n.gpus for n in nodes),
            "nodes": [n.to_dict() for n in nodes],
        }

    def node_names(self) -> dict[str, str]:
        """Return ``{node_id: name}`` for display (``head``, ``worker-1``...)."""
        return {n.node_id: n.name for n in self.nodes()}

    def __repr__(self) -> str:
        try:
            nodes = self.nodes()
        except Exception:  # noqa: BLE001 - repr must never raise
            return f"ClusterHandle(stopped={self._stopped})"
        lines = [f"ClusterHandle({'embedded' if self.embedded else 'external'}, {len(nodes)} nodes)"]
        lines += [
            f"  {n.name:<10} {n.node_id[:12]}  CPU {n.cpus:g}  GPU {n.gpus:g}  "
            f"mem {n.memory_bytes / _GIB:.1f} GiB  store {n.object_store_bytes / _GIB:.2f} GiB"
            + ("  (head)" if n.is_head else "")
            for n in nodes
        ]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import html

        rows = "".join(
            f"<tr><td>{html.escape(n.name)}</td><td><code>{n.node_id[:12]}</code></td>"
            f"<td>{'yes' if n.is_head else ''}</td><td>{n.cpus:g}</td><td>{n.gpus:g}</td>"
            f"<td>{n.memory_bytes / _GIB:.1f}</td><td>{n.object_store_bytes / _GIB:.2f}</td></tr>"
            for n in self.nodes()
        )
        return (
            "<table><tr><th>node</th><th>id</th><th>head</th><th>CPU</th><th>GPU</th><th>memory GiB</th>"
            f"<th>object store GiB</th></tr>{rows}</table>"
        )

    def to_dict(self) -> dict[str, Any]:
        """Return :meth:`describe`."""
        return self.describe()

    # -- teardown --------------------------------------------------------------------------
    def stop(self) -> None:
        """Disconnect and, for an embedded cluster, kill every process it started. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        import ray

        # Processes the session's workers started themselves (vLLM's EngineCore and its workers) are
        # not Ray processes and can outlive a killed replica: note them now, kill survivors below.
        descendants = _session_descendants(self._session_marker()) if self._cluster is not None else []
        with _drop_expected_teardown_lines():
            try:
                if self.embedded and ray.is_initialized() and _serve_is_running():
                    import logging

                    from ray import serve

                    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # its INFO is not an error
                    serve.shutdown()
            except Exception:  # noqa: BLE001 - best effort: the processes are killed below anyway
                pass
            ray.shutdown()
        if self._cluster is not None:
            before = _read_ray_address_file()
            self._cluster.shutdown()
            _wait_for_no_processes(self._session_marker(), timeout_s=15.0)
            _kill_survivors(descendants)
            _restore_ray_address_file(self.address, self.previous_address, before)
        if self.temp_dir:
            import shutil

            shutil.rmtree(self.temp_dir, ignore_errors=True)
        _ACTIVE.discard(self)  # last: a SIGTERM until here still finds the cluster to kill

    def _kill_now(self) -> None:
        """Stop at once, for a process that is ending: no graceful Serve shutdown, every process killed.

        A kernel being shut down gets a few seconds before SIGTERM (then SIGKILL); the graceful
        :meth:`stop` can take longer, and an interrupted one leaves the session folder and Ray's
        address file behind. Nothing is printed. Also finishes a :meth:`stop` that was interrupted.
        """
        self._stopped = True
        if self not in _ACTIVE:  # never started here, or already fully stopped
            return
        if self._cluster is not None:
            before = _read_ray_address_file()
            _kill_session_now(self._session_marker())
            _restore_ray_address_file(self.address, self.previous_address, before)
        if self.temp_dir:
            import shutil

            shutil.rmtree(self.temp_dir, ignore_errors=True)
        _ACTIVE.discard(self)

    def _session_marker(self) -> str:
        # Each embedded cluster has its own folder under the kit's root, so stopping one cluster
        # never touches another one running on the same machine.
        return self.temp_dir or _temp_root(self.config)

    def __enter__(self) -> ClusterHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_ACTIVE: set[ClusterHandle] = set()


def _serve_is_running() -> bool:
    """Whether Serve's controller runs on the connected cluster (else there is nothing to shut down)."""
    import ray

    try:
        ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve")
    except ValueError:
        return False
    return True


def _stop_all_at_exit() -> None:
    for handle in list(_ACTIVE):
        with contextlib.suppress(Exception):  # interpreter exit: nothing to report to
            handle._kill_now()


atexit.register(_stop_all_at_exit)


def _on_sigterm(signum: int, frame: Any) -> None:
    _stop_all_at_exit()
    previous = _SIGTERM_PREVIOUS.get("handler")
    if callable(previous):  # a Python handler was there before ours: let it decide
        previous(signum, frame)
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


_SIGTERM_PREVIOUS: dict[str, Any] = {}


def _install_sigterm_handler() -> None:
    """On SIGTERM, kill this process's embedded clusters, then end as SIGTERM would have.

    Without it, a kernel shut down while its cluster runs ends inside the handler Ray's driver
    installs (at every ``ray.init``), which prints a stack dump to stderr and leaves the session
    folder and Ray's address file behind. Called after each ``ray.init``; from the main thread only
    (Python's rule for signal handlers).
    """
    if threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGTERM)
    if current is _on_sigterm:
        return
    if "handler" not in _SIGTERM_PREVIOUS:
        _SIGTERM_PREVIOUS["handler"] = current  # None: Ray's (not a Python handler), or the default
    signal.signal(signal.SIGTERM, _on_sigterm)


# Ray prints this when Serve's controller ends its own graceful shutdown with ray.kill: expected, not an error.
_EXPECTED_TEARDOWN = re.compile(r"ServeController\.graceful_shutdown failed.*killed by `ray\.kill`")


class _LineFilter(io.TextIOBase):
    """A text stream that passes every line on to ``target`` except the expected teardown message."""

    def __init__(self, target: Any) -> None:
        self._target = target
        self._partial = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self._partial += text
            *lines, self._partial = self._partial.split("\n")
            for line in lines:
                if not _EXPECTED_TEARDOWN.search(line):
                    self._target.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._partial and not _EXPECTED_TEARDOWN.search(self._partial):
                self._target.write(self._partial)
            self._partial = ""
            self._target.flush()


@contextlib.contextmanager
def _drop_expected_teardown_lines() -> Iterator[None]:
    """Drop Ray's expected Serve-teardown message from this process's stdout while the block runs.

    Ray's driver prints messages the cluster publishes (here, the Serve controller's shutdown task
    that "failed" because the controller ended itself) from a background thread to ``sys.stdout``;
    every other line still goes through.
    """
    original = sys.stdout
    sys.stdout = _LineFilter(original)
    try:
        yield
    finally:
        filtered, sys.stdout = sys.stdout, original
        with contextlib.suppress(Exception):
            filtered.flush()


def _redact_address(address: str) -> str:
    # Keep the scheme and port, never credentials that a ray:// URL may carry.
    if "@" in address:
        address = address.split("://", 1)[0] + "://<redacted>@" + address.rsplit("@", 1)[1]
    return address
