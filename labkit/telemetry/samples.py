"""The telemetry sample contract: :class:`TelemetrySample`, the roles it names, and summaries of it.

Every reporter and sampler of :mod:`labkit.telemetry` fills :class:`TelemetrySample`;
:func:`cpu_samples` and :func:`summarize_samples` reduce a list of samples on the load
generator's clock, for the recorder, the diagnosis and the plots. Standard library only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ROLES",
    "TelemetrySample",
    "cpu_samples",
    "summarize_samples",
]

ROLES = ("replica", "coordinator", "proxy", "controller", "gpu", "process")


@dataclass
class TelemetrySample:
    """One observation of one component at one moment.

    ``role`` is one of :data:`ROLES`. ``running`` / ``waiting`` are the engine's running and
    waiting requests (replicas); for a coordinator ``waiting`` is the requests queued for a
    slot. ``inflight`` is the requests the component holds; ``cpu_percent`` the process CPU
    (100 = one core). ``source`` says who took the sample: "reporter" (inside the component:
    its own process only), "process" (:class:`ProcessSampler`: the process and its children,
    e.g. a replica with its vLLM engine core) or "gpu" (:class:`GpuSampler`). ``extra`` keeps
    any other number a component reports.
    """

    t_s: float
    wall_s: float
    node_id: str
    role: str
    component_id: str
    running: int | None = None
    waiting: int | None = None
    inflight: int | None = None
    cpu_percent: float | None = None
    gpu_util_percent: float | None = None
    gpu_mem_used_bytes: int | None = None
    gpu_mem_total_bytes: int | None = None
    pid: int | None = None
    source: str | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def active(self) -> int | None:
        """Running plus waiting requests, or None when the component reports neither."""
        if self.running is None and self.waiting is None:
            return None
        return (self.running or 0) + (self.waiting or 0)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TelemetrySample:
        """Build a sample from :meth:`to_dict` output, ignoring unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


_SUMMARY_FIELDS = ("running", "waiting", "active", "inflight", "cpu_percent", "gpu_util_percent")


def cpu_samples(samples: Iterable[TelemetrySample]) -> list[TelemetrySample]:
    """Return the CPU samples of one component, preferring the process sampler's.

    A component may be sampled twice: by its own reporter (its process only) and by a
    :class:`ProcessSampler` (its process and children, e.g. the vLLM engine core). Mixing
    the two would zigzag; the process sampler's view is the complete one.

    Parameters
    ----------
    samples : iterable of TelemetrySample
        Samples of one component.

    Returns
    -------
    list of TelemetrySample
        Those with ``cpu_percent``, from the process sampler when it sampled this component.
    """
    with_cpu = [s for s in samples if s.cpu_percent is not None and s.role != "gpu"]
    process = [s for s in with_cpu if s.source == "process"]
    return process or with_cpu


def summarize_samples(
    samples: Iterable[TelemetrySample],
    *,
    start_s: float | None = None,
    end_s: float | None = None,
    role: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Summarize samples per component over a time window.

    Parameters
    ----------
    samples : iterable of TelemetrySample
        Samples on the load clock.
    start_s, end_s : float, optional
        Window on the load clock (inclusive); open when omitted.
    role : str, optional
        Keep only this role.

    Returns
    -------
    dict
        ``{component_id: {"role", "node_id", "n", "<field>_mean", "<field>_max", ...}}`` for
        running, waiting, active (running + waiting), inflight, cpu_percent and
        gpu_util_percent, where the component reports them. Where a component has CPU samples
        from a :class:`ProcessSampler` (children included) those are used for cpu_percent.
    """
    groups: dict[str, list[TelemetrySample]] = {}
    for s in samples:
        if role is not None and s.role != role:
            continue
        if (start_s is not None and s.t_s < start_s) or (end_s is not None and s.t_s > end_s):
            continue
        groups.setdefault(s.component_id, []).append(s)
    out: dict[str, dict[str, Any]] = {}
    for comp, group in sorted(groups.items()):
        row: dict[str, Any] = {"role": group[0].role, "node_id": group[0].node_id, "n": len(group)}
        for name in _SUMMARY_FIELDS:
            values = [v for v in (getattr(s, name) for s in group) if v is not None]
            if name == "cpu_percent":
                values = [s.cpu_percent for s in cpu_samples(group)]
            if values:
                row[f"{name}_mean"] = sum(values) / len(values)
                row[f"{name}_max"] = max(values)
        out[comp] = row
    return out
