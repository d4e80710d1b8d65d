"""vLLM's CPU build across Ray nodes: the platform plugin that lets one replica span raylets.

vLLM runs a replica's tensor / pipeline ranks as Ray actors (its Ray executor) only on platforms
that name a Ray *device resource*: the CUDA platform names ``"GPU"``, the CPU platform names
none and refuses ("current platform cpu does not support ray"). This module is the kit's answer,
loaded by vLLM itself through its ``vllm.platform_plugins`` entry point (``pyproject.toml``):

* :func:`platform_plugin` activates only where :data:`ENABLE_ENV` is set (the kit sets it in the
  runtime env of a CPU replica with TP x PP > 1, and Ray passes it on to the rank actors); then
  vLLM uses :class:`CpuRayPlatform`, the CPU platform with ``ray_device_key`` set to
  :data:`DEVICE_RESOURCE`, a custom resource each embedded worker node advertises (Ray refuses
  ``"CPU"`` as a custom resource name). Placement-group bundles reserve one such *device slot*
  per rank, exactly as a GPU replica reserves one GPU per rank.
* vLLM asks each rank actor for its device ids through Ray's ``get_accelerator_ids()``, which
  only knows accelerators; :func:`_report_device_slots` makes it also report the rank's
  :data:`DEVICE_RESOURCE` slot (id ``0``: a slot is a share of the node's CPUs, not a device).
* vLLM checks that every node has its own IP address. The embedded cluster's nodes share one
  host, so the kit gives each worker node its own loopback address (``127.0.0.<n>``) in
  ``VLLM_HOST_IP``; on a real cluster the nodes' addresses differ already and nothing is set.

Nothing here runs at ``import labkit``; vLLM imports this module in its own processes.
"""

from __future__ import annotations

import os

from labkit.contracts import CPU_DEVICE_RESOURCE as DEVICE_RESOURCE
from labkit.contracts import CPU_RAY_ENV as ENABLE_ENV

__all__ = ["DEVICE_RESOURCE", "ENABLE_ENV", "enabled", "platform_plugin"]  # and CpuRayPlatform, built on access


def enabled() -> bool:
    """Return whether this process runs vLLM's CPU build with the Ray executor."""
    return os.environ.get(ENABLE_ENV, "") not in ("", "0")


def platform_plugin() -> str | None:
    """VLLM platform plugin: the CPU platform with a Ray device resource, where the kit asked for it.

    Returns
    -------
    str or None
        ``"labkit.serve.cpu_ray.CpuRayPlatform"`` when :data:`ENABLE_ENV` is set and vLLM is its
        CPU build; None otherwise, so vLLM picks its own platform as usual.
    """
    if not enabled():
        return None
    from vllm.platforms import cpu_platform_plugin

    if cpu_platform_plugin() is None:  # a CUDA build: its own platform names "GPU" already
        return None
    _report_device_slots()
    return "labkit.serve.cpu_ray.CpuRayPlatform"


def _report_device_slots() -> None:
    """Make Ray's ``get_accelerator_ids()`` report a rank's :data:`DEVICE_RESOURCE` slot."""
    from ray.runtime_context import RuntimeContext

    original = RuntimeContext.get_accelerator_ids
    if getattr(original, "_labkit_cpu_slots", False):
        return

    def get_accelerator_ids(self: RuntimeContext) -> dict[str, list[str]]:
        ids = dict(original(self))
        if DEVICE_RESOURCE not in ids:
            held = self.get_assigned_resources().get(DEVICE_RESOURCE, 0)
            ids[DEVICE_RESOURCE] = ["0"] * max(1, int(held)) if held else []
        return ids

    get_accelerator_ids._labkit_cpu_slots = True  # type: ignore[attr-defined]
    RuntimeContext.get_accelerator_ids = get_accelerator_ids  # type: ignore[method-assign]


def _platform_class() -> type:
    from vllm.platforms.cpu import CpuPlatform

    class CpuRayPlatform(CpuPlatform):
        """vLLM's CPU platform whose ranks Ray places on :data:`DEVICE_RESOURCE` slots."""

        ray_device_key: str = DEVICE_RESOURCE

    CpuRayPlatform.__module__ = __name__
    CpuRayPlatform.__qualname__ = "CpuRayPlatform"
    return CpuRayPlatform


def __getattr__(name: str) -> type:
    # vLLM resolves "labkit.serve.cpu_ray.CpuRayPlatform" by attribute; the class subclasses vLLM's
    # CPU platform, so it is built on first access and this module imports without vLLM.
    if name == "CpuRayPlatform":
        cls = _platform_class()
        globals()[name] = cls
        return cls
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
