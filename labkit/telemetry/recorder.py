"""The recorder: the notebook's context manager around a load run, :class:`TelemetryRecorder`.

It starts the local samplers (:mod:`labkit.telemetry.samplers`), drains the collector
(:mod:`labkit.telemetry.collector`) on exit and maps every sample on to the load generator's
clock.
"""

from __future__ import annotations

import html
import math
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

from labkit.errors import ConfigError, TelemetryError
from labkit.telemetry.collector import _require_ray, get_collector
from labkit.telemetry.samplers import GpuSampler, ProcessSampler, ProcessTarget, find_serve_processes
from labkit.telemetry.samples import _SUMMARY_FIELDS, TelemetrySample, summarize_samples

__all__ = [
    "TelemetryRecorder",
]


# ---------------------------------------------------------------------------------------------
# Recorder: the notebook's context manager around a load run
# ---------------------------------------------------------------------------------------------


class TelemetryRecorder:
    """Record telemetry around a load run and map it on to the load generator's clock.

    Use it as a context manager in the process that runs the load::

        with TelemetryRecorder(processes="serve") as tel:
            result = run_load(...)
        tel.summary()

    On enter it notes the offset between ``time.time()`` and ``time.perf_counter()`` and
    starts the local GPU and process samplers; on exit it stops them, waits ``settle_s`` for
    reporters to push their last batch, drains the collector and maps every sample's
    ``wall_s`` to ``t_s`` on the load clock.

    Parameters
    ----------
    use_collector : bool, optional
        Drain the Ray collector on exit. None (default): when Ray is initialized.
    gpu : bool
        Sample this machine's GPUs through NVML (a note explains when there are none).
    gpu_interval_s : float
        GPU sampling period in seconds.
    processes : sequence of ProcessTarget or "serve", optional
        Processes whose CPU to sample here; "serve" finds the Serve proxies, controller,
        replicas and coordinators on this machine when the recorder starts.
    process_interval_s : float
        Process sampling period in seconds.
    settle_s : float
        Wait on exit before draining, so reporters flush (their flush interval plus margin).
    name : str
        Configuration name, for display.
    """

    def __init__(
        self,
        *,
        use_collector: bool | None = None,
        gpu: bool = True,
        gpu_interval_s: float = 0.1,
        processes: Sequence[ProcessTarget] | str | None = None,
        process_interval_s: float = 0.5,
        settle_s: float = 0.6,
        name: str = "",
    ) -> None:
        if isinstance(processes, str) and processes != "serve":
            msg = f"processes={processes!r} is not understood. Allowed: 'serve' or a list of ProcessTarget."
            raise ConfigError(msg, field="processes", value=processes)
        self.use_collector = use_collector
        self.gpu = gpu
        self.gpu_interval_s = gpu_interval_s
        self.processes = processes
        self.process_interval_s = process_interval_s
        self.settle_s = settle_s
        self.name = name
        self.samples: list[TelemetrySample] = []
        self.notes: list[str] = []
        self.clock_offset_s: float | None = None  # time.time() - time.perf_counter()
        self.start_s: float | None = None
        self.end_s: float | None = None
        self._gpu: GpuSampler | None = None
        self._proc: ProcessSampler | None = None
        self._start_wall_s: float | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> TelemetryRecorder:
        """Note the clock offset and start the local samplers.

        Returns
        -------
        TelemetryRecorder
            self, so that ``rec = TelemetryRecorder().start()`` works.
        """
        self.samples, self.notes = [], []
        self.clock_offset_s = _clock_offset()
        self.start_s = time.perf_counter()
        self._start_wall_s = self.start_s + self.clock_offset_s
        if self.use_collector is None:
            self.use_collector = _ray_running()
            if not self.use_collector:
                self.notes.append("Ray is not initialized: no replica/coordinator telemetry collected.")
        if self.gpu:
            self._gpu = GpuSampler(self.gpu_interval_s)
            if self._gpu.available:
                self._gpu.start()
            else:
                self.notes.append(f"No GPU samples: {self._gpu.reason}.")
        targets = self.processes
        if targets == "serve":
            try:
                targets = find_serve_processes()
            except TelemetryError as err:  # telemetry must not stop the load run it watches
                targets = []
                self.notes.append(f"Serve processes not sampled: {err}")
            if not targets:
                self.notes.append("No Serve processes found on this machine to sample.")
        if targets:
            # __init__ allows no string but "serve", which was just replaced by the processes found
            self._proc = ProcessSampler(list(cast(Sequence[ProcessTarget], targets)), self.process_interval_s)
            self._proc.start()
        return self

    def stop(self) -> list[TelemetrySample]:
        """Stop sampling, drain the collector and return the samples on the load clock.

        Returns
        -------
        list of TelemetrySample
            Sorted by ``t_s``; also kept in :attr:`samples`.

        Raises
        ------
        TelemetryError
            The recorder was not started. (A collector that cannot be drained only adds a
            note: the load run that the recorder watched must not be lost to telemetry.)
        """
        if self.clock_offset_s is None or self._start_wall_s is None:
            msg = "TelemetryRecorder.stop() called before start(); use it as `with TelemetryRecorder():`."
            raise TelemetryError(msg)
        self.end_s = time.perf_counter()
        local: list[TelemetrySample] = []
        if self._gpu is not None and self._gpu.available:
            local += self._gpu.stop()
        if self._proc is not None:
            local += self._proc.stop()
            self.notes += self._proc.notes
        remote: list[TelemetrySample] = []
        if self.use_collector:
            try:
                remote = self._drain()
            except TelemetryError as err:  # keep the local samples and say what is missing
                self.notes.append(str(err))
        offset = (self.clock_offset_s + _clock_offset()) / 2
        for s in remote:
            s.t_s = s.wall_s - offset
        self.samples = sorted(local + remote, key=lambda s: s.t_s)
        return self.samples

    def _drain(self) -> list[TelemetrySample]:
        ray = _require_ray()
        if self.settle_s > 0:
            time.sleep(self.settle_s)
        handle = get_collector(create=False)
        if handle is None:
            self.notes.append("No telemetry collector exists: no component called start_reporter().")
            return []
        try:
            raw = ray.get(handle.drain.remote(self._start_wall_s), timeout=30)
            info = ray.get(handle.stats.remote(), timeout=30)
        except (ray.exceptions.RayError, TimeoutError) as err:
            msg = f"Could not drain the telemetry collector: {err!r}. Is the cluster still up?"
            raise TelemetryError(msg) from err
        if info.get("dropped"):
            self.notes.append(f"The collector dropped {info['dropped']} samples (buffer full).")
        return [TelemetrySample.from_dict(d) for d in raw]

    def __enter__(self) -> TelemetryRecorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- views -------------------------------------------------------------------------------

    def summary(
        self, *, start_s: float | None = None, end_s: float | None = None, role: str | None = None
    ) -> dict[str, dict[str, Any]]:
        """Summarize per component over a window of the load clock (see :func:`summarize_samples`).

        Parameters
        ----------
        start_s, end_s : float, optional
            Window on the load clock; the whole recording when omitted.
        role : str, optional
            Keep only this role.

        Returns
        -------
        dict
            Per component: mean and max of running, waiting, active, inflight, CPU, GPU.
        """
        return summarize_samples(self.samples, start_s=start_s, end_s=end_s, role=role)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict: clock facts, notes and every sample."""
        return {
            "name": self.name,
            "clock_offset_s": self.clock_offset_s,
            "start_s": self.start_s,
            "end_s": self.end_s,
            "notes": list(self.notes),
            "samples": [s.to_dict() for s in self.samples],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TelemetryRecorder:
        """Rebuild a finished recording from :meth:`to_dict` output.

        Parameters
        ----------
        data : mapping
            Output of :meth:`to_dict`.

        Returns
        -------
        TelemetryRecorder
            A stopped recorder holding the samples and notes.
        """
        rec = cls(use_collector=False, gpu=False, name=str(data.get("name", "")))
        rec.clock_offset_s = data.get("clock_offset_s")
        rec.start_s, rec.end_s = data.get("start_s"), data.get("end_s")
        rec.notes = list(data.get("notes", []))
        rec.samples = [TelemetrySample.from_dict(d) for d in data.get("samples", [])]
        return rec

    def __repr__(self) -> str:
        comps = sorted({(s.role, s.component_id) for s in self.samples})
        dur = (self.end_s - self.start_s) if self.start_s is not None and self.end_s is not None else None
        dur_txt = f"{dur:.1f} s" if dur is not None else "not finished"
        lines = [f"TelemetryRecorder({self.name!r}: {len(self.samples)} samples, {len(comps)} components, {dur_txt})"]
        for comp, row in self.summary().items():
            lines.append("  " + _summary_line(comp, row))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = []
        for comp, row in self.summary().items():
            cells = [row["role"], comp, str(row["n"])] + [
                _fmt(row.get(f"{f}_mean")) + " / " + _fmt(row.get(f"{f}_max")) for f in _SUMMARY_FIELDS
            ]
            rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
        head = "".join(
            f"<th>{html.escape(h)}</th>"
            for h in ["role", "component", "n"] + [f"{f} mean / max" for f in _SUMMARY_FIELDS]
        )
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        return (
            f"<div><b>Telemetry {html.escape(self.name)}</b>: {len(self.samples)} samples"
            f"<table><tr>{head}</tr>{''.join(rows)}</table>" + (f"<ul>{notes}</ul>" if notes else "") + "</div>"
        )


def _summary_line(comp: str, row: Mapping[str, Any]) -> str:
    parts = [f"{row['role']:<11} {comp:<20} n={row['n']:<5}"]
    for name in _SUMMARY_FIELDS:
        if f"{name}_mean" in row:
            parts.append(f"{name} {_fmt(row[name + '_mean'])}/{_fmt(row[name + '_max'])}")
    return "  ".join(parts)


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def _clock_offset() -> float:
    """Return ``time.time() - time.perf_counter()``, the tightest of five paired reads."""
    best = None
    for _ in range(5):
        a = time.perf_counter()
        w = time.time()
        b = time.perf_counter()
        if best is None or b - a < best[0]:
            best = (b - a, w - (a + b) / 2)
    assert best is not None
    return best[1]


def _ray_running() -> bool:
    ray = sys.modules.get("ray")  # a process that never imported Ray cannot have initialized it
    return ray is not None and bool(ray.is_initialized())
