"""Ray clusters: an embedded multi-node cluster on one machine, or an existing cluster.

Owns starting, describing and stopping the cluster. The embedded cluster is a real Ray
cluster: one head and N worker *raylets*, each a separate node with its own node id, CPUs,
memory, object store, custom resources and labels (``labkit.io/node``), and optionally a
number of GPUs: *logical* GPUs on a CPU box (Ray only counts them, so placement can be taught
without hardware) or *physical* ones split between the nodes through ``CUDA_VISIBLE_DEVICES``
(several simulated nodes on one GPU host).

Teardown is complete: :meth:`ClusterHandle.stop` disconnects the driver and kills every raylet,
GCS and worker process the cluster started; it also runs on an exception inside ``with`` and on a
Jupyter interrupt (``KeyboardInterrupt`` is an exception). When the process itself ends (interpreter
exit, or SIGTERM: a Jupyter kernel shut down or restarted) the cluster is killed at once instead,
within the seconds Jupyter allows, and its session folder and Ray's address file go with it.

Layout (import every name from ``labkit.cluster``; the submodules are its implementation, each
importing only those above it): :mod:`~labkit.cluster.config` (:class:`ClusterConfig`, its
validation, :func:`count_physical_gpus`, ``NODE_LABEL``), :mod:`~labkit.cluster.processes`
(:func:`find_ray_processes`, :func:`kill_leftovers`, :func:`list_session_dirs`, the session
folder root), :mod:`~labkit.cluster.handle` (:class:`ClusterHandle` with its teardown,
:class:`NodeInfo`, the one ``_ACTIVE`` set and its ``atexit`` hook) and
:mod:`~labkit.cluster.start` (:func:`start_cluster`, :func:`connect_cluster`). Patch a name where it is looked up
(``labkit.cluster.config.count_physical_gpus``, ``labkit.cluster.start._whole``), not here.
Nothing here imports ray or psutil at import time.
"""

from __future__ import annotations

from labkit.cluster.config import NODE_LABEL as NODE_LABEL
from labkit.cluster.config import ClusterConfig
from labkit.cluster.config import count_physical_gpus as count_physical_gpus
from labkit.cluster.handle import ClusterHandle, NodeInfo
from labkit.cluster.processes import find_ray_processes, kill_leftovers, list_session_dirs
from labkit.cluster.start import connect_cluster, start_cluster

__all__ = [
    "ClusterConfig",
    "ClusterHandle",
    "NodeInfo",
    "connect_cluster",
    "find_ray_processes",
    "kill_leftovers",
    "list_session_dirs",
    "start_cluster",
]
