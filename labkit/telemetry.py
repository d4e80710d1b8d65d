"""Engine, process and GPU activity sampled during a load run (skeleton: the sample contract).

Clock: ``t_s`` is on the load generator's clock (``time.perf_counter()`` of the process that
runs the load); samples taken elsewhere carry ``wall_s`` (``time.time()``) and are mapped on
to that clock by the recorder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["TelemetrySample"]


@dataclass
class TelemetrySample:
    """One observation of one component at one moment.

    ``role`` is "replica", "proxy", "coordinator" or "gpu". ``running`` / ``waiting`` are the
    engine's running and waiting requests (replicas only); ``inflight`` the requests the
    component holds (replica or coordinator); ``cpu_percent`` the process CPU (100 = one core).
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

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TelemetrySample:
        """Build a sample from :meth:`to_dict` output, ignoring unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
