"""Names that two processes or two stages of the kit must agree on, defined once.

Imports nothing heavy. The cluster advertises what the serve stage reserves; the serve stage sets
what vLLM's processes read back. (The target layout in ``docs/LAYOUT.md`` moves the other shared
names here too: request records, telemetry samples, ``x-labkit-*`` headers.)
"""

from __future__ import annotations

__all__ = ["CPU_DEVICE_RESOURCE", "CPU_RAY_ENV", "worker_host_ip"]

#: Custom resource of one CPU "device slot": a TP x PP rank of a CPU replica takes one, as a GPU
#: rank takes one GPU. Each embedded worker node advertises ``cpu_devices_per_node`` of them.
CPU_DEVICE_RESOURCE = "labkit_cpu_device"

#: Set to ``1`` in a CPU replica's runtime env to run its vLLM ranks as Ray actors
#: (the platform plugin in :mod:`labkit.serve.cpu_ray` activates on it).
CPU_RAY_ENV = "LABKIT_VLLM_CPU_RAY"


def worker_host_ip(index: int) -> str:
    """Return the loopback address the embedded cluster's worker ``index`` (1-based) gives vLLM.

    Parameters
    ----------
    index : int
        Worker number (``worker-1`` is 1).

    Returns
    -------
    str
        ``127.0.0.<index + 1>``; the head keeps the host's address.
    """
    return f"127.0.0.{index + 1}"
