"""What the grader's test files share: the reference logs, their generator, and re-hashing an edited log."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from labkit.record import build_log, compute_log_hash

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "verification" / "reference"


def _generator():
    spec = importlib.util.spec_from_file_location("make_reference_logs", ROOT / "verification/make_reference_logs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()
ALICE = json.loads((REFERENCE / "good/alice--02_multinode_serving.json").read_text())


def rehash(data: dict) -> dict:
    """Recompute the integrity hash of an edited log (as a forger would); leave other shapes alone."""
    if isinstance(data.get("integrity"), dict):
        data["integrity"]["sha256"] = compute_log_hash(data)
    return data


def cpu_log(exercise: str, learner_id: str, outputs: dict, records, *, minutes: float, last_done_s: float) -> dict:
    """A genuine 2-node CPU log built with the kit's own build_log (fixed clock and environment)."""
    import datetime as dt

    return build_log(
        exercise,
        environment=GEN.CPU_ENV,
        learner_id=learner_id,
        outputs=outputs,
        records=records,
        cluster=GEN.cluster(2),
        model="org/tiny",
        parameters={"rate_rps": 8},
        started_at=GEN.START,
        finished_at=GEN.START + dt.timedelta(minutes=minutes),
        papermill={"detected": False, "injected_parameters": {}},
        kit=GEN.KIT,
        environ={},
        clock=(GEN.START.timestamp() + minutes * 60 - 10, last_done_s),
    )
