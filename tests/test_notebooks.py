"""Every chapter notebook, executed headless by papermill with small parameters (real stack)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

SMALL = {
    "02_load_exercise.ipynb": {
        "duration_s": 10.0,
        "engine_duration_s": 8.0,
        "sweep_rates": [1.0, 3.0],
        "sweep_duration_s": 5.0,
    },
    "01_chapter_walkthrough.ipynb": {"num_prompts": 6, "decode_requests": 3},
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


# -- 00 and 03: no cluster, seconds each ------------------------------------------------------------


def _outputs(path, kind):
    """Texts of the outputs of an executed notebook: ``kind`` 'stderr', 'stdout' or 'error'."""
    book = json.loads(path.read_text())
    found = []
    for cell in book["cells"]:
        for out in cell.get("outputs", []):
            if kind == "error" and out["output_type"] == "error":
                found.append(f"{out['ename']}: {out['evalue']}")
            elif out.get("name") == kind:
                found.append("".join(out["text"]))
    return found


def test_environment_check_then_grading_sets_the_learner_id_once_and_grades_100(tmp_path, monkeypatch):
    """00 given an id; 03 given none grades that learner's logs, flags and score first, and prints no stderr."""
    from labkit.run import run_lab

    monkeypatch.setenv("LABKIT_RUNS_DIR", str(tmp_path / "default-runs"))  # not the checkout's
    notebooks = ["00_environment_check.ipynb", "03_instructor_grading.ipynb"]
    run = run_lab(tmp_path / "run", notebooks=notebooks, per_notebook={notebooks[0]: {"learner_id": "s1234"}})
    assert run.ok, repr(run)
    for name in notebooks:
        assert _outputs(tmp_path / "run" / name, "stderr") == [], f"{name} wrote to stderr"
    env_text = "".join(_outputs(tmp_path / "run" / notebooks[0], "stdout"))
    assert "None cores" not in env_text and "cores usable" in env_text
    assert "631,424 parameters" in env_text and "learner id: s1234" in env_text
    grading = "".join(_outputs(tmp_path / "run" / notebooks[1], "stdout"))
    assert "Grading your 1 log(s), learner id 's1234'" in grading, grading
    import csv

    rows = list(csv.DictReader((tmp_path / "run" / "gradebook.csv").open()))
    assert [(r["learner_id"], r["exercise"]) for r in rows] == [("s1234", "environment-check")]
    assert rows[0]["flags"] == "" and float(rows[0]["score"]) == 100.0, rows[0]
    executed = (tmp_path / "run" / notebooks[1]).read_text()
    header = [line for line in executed.splitlines() if "col_heading level0 col0" in line]
    assert header and ">flags<" in header[0], "flags must be the table's first column"


def test_grading_without_own_logs_says_it_grades_the_reference_logs(tmp_path, monkeypatch):
    from labkit.run import run_lab

    monkeypatch.setenv("LABKIT_RUNS_DIR", str(tmp_path / "default-runs"))
    run = run_lab(tmp_path / "run", notebooks=["03_instructor_grading.ipynb"])
    assert run.ok, repr(run)
    text = "".join(_outputs(tmp_path / "run" / "03_instructor_grading.ipynb", "stdout"))
    assert "No logs of learner 'anonymous'" in text and "reference logs instead" in text
    assert _outputs(tmp_path / "run" / "03_instructor_grading.ipynb", "stderr") == []


def test_learner_id_resolution_order(tmp_path, monkeypatch):
    """Given > LABKIT_LEARNER_ID > remembered in the runs folder > the default runs folder > anonymous."""
    from labkit.record.log import remember_learner_id, resolve_learner_id

    monkeypatch.setenv("LABKIT_RUNS_DIR", str(tmp_path / "default"))
    run = tmp_path / "run"
    assert resolve_learner_id(None, run) == "anonymous"
    remember_learner_id("carol")  # the default runs folder
    assert resolve_learner_id(None, run) == "carol"
    remember_learner_id("bob", run)
    assert resolve_learner_id("", run) == "bob" and resolve_learner_id("anonymous", run) == "bob"
    monkeypatch.setenv("LABKIT_LEARNER_ID", "env-id")
    assert resolve_learner_id(None, run) == "env-id"
    assert resolve_learner_id(" alice ", run) == "alice"
