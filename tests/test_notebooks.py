"""Every chapter notebook, executed headless by papermill with small parameters (real stack)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

SMALL = {
    "02_load_exercise.ipynb": {"duration_s": 10.0, "sweep_rates": [1.0, 3.0], "sweep_duration_s": 5.0},
    "01_chapter_walkthrough.ipynb": {"num_prompts": 6},
}


def test_labkit_run_executes_every_notebook(tmp_path):
    from labkit.cluster import find_ray_processes, list_session_dirs
    from labkit.record import VerificationLog
    from labkit.run import NOTEBOOKS, run_lab

    before = list_session_dirs()
    run = run_lab(tmp_path / "run", parameters={"learner_id": "ci"}, per_notebook=SMALL)
    assert run.ok, repr(run)
    assert [r["notebook"] for r in run.results] == list(NOTEBOOKS)
    for name in NOTEBOOKS:
        executed = json.loads((tmp_path / "run" / name).read_text())
        assert executed["metadata"]["papermill"]["exception"] in (None, False)
    logs = sorted((tmp_path / "run").glob("*.json"))
    names = {VerificationLog.load(p).to_dict()["exercise"] for p in logs if p.name != "run.json"}
    assert {"environment-check", "chapter-walkthrough", "load-exercise"} <= names
    figures = list((tmp_path / "run" / "figures").glob("*.png"))
    assert len(figures) >= 5 and all(f.stat().st_size > 1000 for f in figures)
    assert (tmp_path / "run" / "gradebook.csv").exists()
    for folder in list_session_dirs() - before:
        assert find_ray_processes(folder) == [], f"a notebook left Ray processes of {folder}"
