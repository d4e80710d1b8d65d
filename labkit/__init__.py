"""labkit: a hands-on kit for multi-node LLM inference with Ray Serve and vLLM.

Nothing happens at import time: the names below load their module on first use (PEP 562), and the
modules import heavy dependencies (ray, vllm, matplotlib) inside the functions that need them.
Everything else is reached as ``labkit.<module>.<name>``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it (what the notebooks call).
_EXPORTS = {
    "ClusterConfig": "labkit.cluster",
    "LabkitError": "labkit.errors",
    "LoadConfig": "labkit.load",
    "ServeConfig": "labkit.serve",
    "TelemetryRecorder": "labkit.telemetry",
    "VerificationLog": "labkit.record",
    "checkpoint": "labkit.record",
    "compare_decode": "labkit.experiment",
    "compare_topologies": "labkit.experiment",
    "connect_cluster": "labkit.cluster",
    "deploy": "labkit.serve",
    "describe_placement": "labkit.serve",
    "grade_directory": "labkit.grade",
    "hop_breakdown": "labkit.stats",
    "load_panel": "labkit.experiment",
    "make_tiny_model": "labkit.models",
    "measure_clock_offsets": "labkit.serve",
    "measure_decode": "labkit.experiment",
    "notebook_parameters": "labkit.record",
    "plan_placement": "labkit.serve",
    "plot_hops": "labkit.plots",
    "plot_latency_cdf": "labkit.plots",
    "plot_latency_histogram": "labkit.plots",
    "plot_percentiles_vs_load": "labkit.plots",
    "plot_request_share": "labkit.plots",
    "plot_timeline": "labkit.plots",
    "record_environment": "labkit.record",
    "resolve_model": "labkit.models",
    "run_lab": "labkit.run",
    "run_load": "labkit.load",
    "run_regimes": "labkit.experiment",
    "run_topology": "labkit.experiment",
    "save_figure": "labkit.plots",
    "start_cluster": "labkit.cluster",
    "summarize_latencies": "labkit.stats",
    "summarize_run": "labkit.stats",
    "sweep_topologies": "labkit.experiment",
    "topology_preset": "labkit.serve",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        # Submodules (labkit.serve, labkit.stats...) stay reachable as attributes.
        try:
            return importlib.import_module(f"labkit.{name}")
        except ModuleNotFoundError:
            msg = f"module 'labkit' has no attribute '{name}'"
            raise AttributeError(msg) from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(
        [
            *__all__,
            "cluster",
            "diagnose",
            "errors",
            "experiment",
            "grade",
            "load",
            "models",
            "plots",
            "record",
            "run",
            "serve",
            "stats",
            "telemetry",
        ]
    )
