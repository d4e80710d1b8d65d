"""Tests of labkit.grade: the safe loader, the rubric, the checks, the gradebook and the CLI."""

from __future__ import annotations

import copy
import csv
import datetime as dt
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from _grade_fixtures import ALICE, GEN, cpu_log, rehash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labkit import grade
from labkit.cli import main
from labkit.errors import ConfigError, GradingError
from labkit.grade import grade_directory, load_log_safely, load_rubric
from labkit.record import compute_log_hash

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "verification" / "reference"
NOW = dt.datetime(2025, 6, 1, tzinfo=dt.timezone.utc)


def write(folder: Path, name: str, data: dict | bytes | str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, dict):
        data = json.dumps(data)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def codes_of(book: grade.Gradebook, file: str) -> set[str]:
    return {f.code for f in book.findings if f.file == file}


# ------------------------------------------------------------------------------------------ references


def test_reference_logs_are_reproducible(tmp_path: Path) -> None:
    GEN.main([str(tmp_path)])
    made = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert made == sorted(GEN.EXPECTED)
    for name in made:
        committed = REFERENCE / name
        assert committed.read_bytes() == (tmp_path / name).read_bytes(), (
            f"{name} changed: run python verification/make_reference_logs.py and commit the result"
        )


def test_good_reference_logs_grade_clean() -> None:
    book = grade_directory(REFERENCE / "good", now=NOW)
    assert [f for f in book.findings if f.severity != "info"] == []
    assert [(r.learner_id, r.score) for r in book.rows] == [
        ("alice", 100.0),
        ("bob", 100.0),
        ("carol", 100.0),
    ]


@pytest.mark.parametrize("name", sorted(n for n in GEN.EXPECTED if n.startswith("bad/")))
def test_each_bad_reference_log_is_flagged(name: str, tmp_path: Path) -> None:
    shutil.copytree(REFERENCE / "good", tmp_path / "good")
    shutil.copy(REFERENCE / name, tmp_path / Path(name).name)
    book = grade_directory(tmp_path, now=NOW)
    found = codes_of(book, Path(name).name)
    assert set(GEN.EXPECTED[name]) <= found, found
    assert "grader_error" not in {f.code for f in book.findings}
    row = [r for r in book.rows if r.file == Path(name).name]
    if row and GEN.EXPECTED[name][0] != "ignored_file":
        assert row[0].score < 100 and row[0].flags


def test_copies_flag_both_learners_and_nobody_else() -> None:
    book = grade_directory(REFERENCE, now=NOW)
    flagged = {r.learner_id for r in book.rows if {"identical_log", "copied_samples"} & set(r.flags)}
    assert flagged == {"alice", "mallory", "trudy"}


# ------------------------------------------------------------------------------------------ gradebook


def test_gradebook_files_one_row_per_learner_and_exercise(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    shutil.copytree(REFERENCE / "good", logs)
    second = copy.deepcopy(ALICE)  # a second, later attempt by alice with a wrong p99
    second["timing"]["finished_at"] = "2025-03-14T14:06:00.000000Z"
    second["timing"]["duration_s"] = 360.0
    second["outputs"]["summaries"]["e2e"]["percentiles"]["p99"] = 0.001
    second["log_id"] = "f" * 32
    write(logs, "alice-retry.json", rehash(second))
    write(logs, "README.txt", "not a log")
    out = tmp_path / "out"
    paths = grade_directory(logs, now=NOW).write(out)
    assert {k: p.name for k, p in paths.items()} == {
        "gradebook": "gradebook.csv",
        "findings": "findings.csv",
        "report": "report.html",
    }
    rows = list(csv.DictReader(paths["gradebook"].open(encoding="utf-8")))
    assert list(rows[0]) == [
        "learner_id",
        "exercise",
        "when",
        "backend",
        "hardware",
        "completeness",
        "consistency",
        "plausibility",
        "flags",
        "score",
        "attempts",
        "file",
    ]
    assert [(r["learner_id"], r["exercise"], r["attempts"]) for r in rows] == [
        ("alice", "02_multinode_serving", "2"),
        ("bob", "02_multinode_serving_gpu", "1"),
        ("carol", "01_local_smoke", "1"),
    ]
    alice = rows[0]
    assert alice["file"] == "alice--02_multinode_serving.json" and alice["score"] == "100.0"  # best attempt
    assert rows[1]["backend"] == "gpu" and "2x NVIDIA H100" in rows[1]["hardware"]
    findings = list(csv.DictReader(paths["findings"].open(encoding="utf-8")))
    assert {"ignored_file", "percentile_mismatch", "other_attempt"} <= {f["code"] for f in findings}
    report = paths["report"].read_text(encoding="utf-8")
    assert "<table" in report and "What the flags mean" in report and "percentile_mismatch" in report

    latest = tmp_path / "latest.json"
    latest.write_text(json.dumps({"attempt_policy": "latest"}))
    book = grade_directory(logs, rubric=latest, now=NOW)
    assert book.rows[0].file == "alice-retry.json" and "percentile_mismatch" in book.rows[0].flags


def test_log_strings_are_escaped_in_html_and_defused_in_csv(tmp_path: Path) -> None:
    evil = copy.deepcopy(ALICE)
    evil["learner_id"] = '=HYPERLINK("http://x.invalid")<script>alert(1)</script>'
    evil["exercise"] = "<img src=x onerror=alert(2)>"
    evil["outputs"]["summaries"]["<b>bold</b>"] = {"metric": "<i>m</i>", "p50": 1.0}
    write(tmp_path / "logs", "evil.json", rehash(evil))
    book = grade_directory(tmp_path / "logs", now=NOW)
    paths = book.write(tmp_path / "out")
    report = paths["report"].read_text(encoding="utf-8")
    for raw in ("<script>", "<img src=x", "<b>bold</b>", "<i>m</i>"):
        assert raw not in report and raw not in book._repr_html_()
    assert "&lt;script&gt;" in report
    rows = list(csv.reader(paths["gradebook"].open(encoding="utf-8")))
    assert rows[1][0].startswith("'=")


def test_the_grader_never_executes_anything_from_a_log(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    payload = f"__import__('os').system('touch {sentinel}')"
    hostile = copy.deepcopy(ALICE)
    hostile["parameters"]["code"] = payload
    hostile["outputs"]["summaries"]["x"] = {"metric": payload, "p50": 0.1}
    hostile["papermill"]["injected_parameters"] = {"x": payload}
    hostile["outputs"]["pickle"] = "gASVJQAAAAAAAACMBXBvc2l4lIwGc3lzdGVtlJOUjAR0cnVllIWUUpQu"
    write(tmp_path / "logs", "hostile.json", rehash(hostile))
    write(tmp_path / "logs", "payload.pkl", b"\x80\x04\x95cos\nsystem\n(S'touch pwned'\ntR.")
    write(tmp_path / "logs", "module.py", f"import os\nos.system('touch {sentinel}')\n")
    book = grade_directory(tmp_path / "logs", now=NOW)
    assert not sentinel.exists()
    assert {"unknown_summary_metric"} <= codes_of(book, "hostile.json")
    assert codes_of(book, "payload.pkl") == codes_of(book, "module.py") == {"ignored_file"}


# ------------------------------------------------------------------------------------------ loader


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"", "invalid_json"),
        (b'{"schema_version": 1, ', "invalid_json"),
        (b"[1, 2, 3]", "not_an_object"),
        (b"\xff\xfe{}", "not_utf8"),
        (b'{"a": Infinity}', "non_finite_number"),
        (b'{"a": 1e999}', "non_finite_number"),
        (b'{"a": ' + b"1" * 5000 + b"}", "invalid_json"),
        (b"[" * 100_000 + b"]" * 100_000, "too_deep"),
        (b'{"a":' * 70 + b"1" + b"}" * 70, "too_deep"),
        (b'{"schema_version": 2}', "unsupported_schema_version"),
        (b'{"schema_version": true}', "unsupported_schema_version"),
        (b'{"learner_id": "x"}', "unsupported_schema_version"),
        (b'{"out_dir": "runs/1", "ok": true}', "ignored_file"),  # labkit run's run.json: not a log
    ],
)
def test_bad_input_is_a_finding(payload: bytes, code: str, tmp_path: Path) -> None:
    path = write(tmp_path, "x.json", payload)
    loaded = load_log_safely(path, root=tmp_path)
    assert [f.code for f in loaded.findings] == [code]
    assert loaded.file == "x.json"


def test_duplicate_keys_are_noticed(tmp_path: Path) -> None:
    text = json.dumps(ALICE)
    text = text.replace('"learner_id": "alice"', '"learner_id": "alice", "learner_id": "alice"', 1)
    assert {f.code for f in load_log_safely(write(tmp_path, "d.json", text)).findings} == {"duplicate_key"}


def test_huge_files_are_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rubric_file = write(tmp_path, "rubric.json", json.dumps({"limits": {"max_log_bytes": 1000}}))
    big = write(tmp_path / "logs", "big.json", b" " * 5000 + b"{}")
    opened = []
    real_open = open

    def spy(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    loaded = load_log_safely(big, rubric=load_rubric(rubric_file))
    assert [f.code for f in loaded.findings] == ["file_too_large"]
    assert str(big) not in opened


def test_symlinks_and_odd_names_are_not_followed(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    shutil.copytree(REFERENCE / "good", logs)
    (logs / "link.json").symlink_to(logs / "alice--02_multinode_serving.json")
    (logs / "linked_dir").symlink_to(tmp_path)
    (logs / "b\udcffad.json").write_bytes(b"{")
    book = grade_directory(logs, now=NOW)
    assert codes_of(book, "link.json") == {"not_regular_file"}
    assert codes_of(book, "linked_dir") == {"ignored_file"}
    assert codes_of(book, "b\\udcffad.json") == {"invalid_json"}
    book.write(tmp_path / "out")  # odd names survive the CSV and HTML


def test_too_many_files(tmp_path: Path) -> None:
    rubric_file = write(tmp_path, "rubric.json", json.dumps({"limits": {"max_files": 2}}))
    logs = tmp_path / "logs"
    shutil.copytree(REFERENCE / "good", logs)
    book = grade_directory(logs, rubric=rubric_file, now=NOW)
    assert len(book.rows) == 2 and codes_of(book, "carol--01_local_smoke.json") == {"too_many_files"}


def test_grade_directory_needs_a_folder(tmp_path: Path) -> None:
    with pytest.raises(GradingError, match="not a folder"):
        grade_directory(tmp_path / "missing")


# ------------------------------------------------------------------------------------------ checks


def test_timestamps_in_the_future_and_outside_the_run(tmp_path: Path) -> None:
    book = grade_directory(REFERENCE / "good", now=dt.datetime(2025, 3, 14, tzinfo=dt.timezone.utc))
    assert all("timestamp_in_future" in r.flags for r in book.rows)
    moved = copy.deepcopy(ALICE)
    moved["samples"]["requests"]["t0_wall"] = "2024-01-01T00:00:00.000000Z"
    write(tmp_path, "moved.json", rehash(moved))
    assert "samples_outside_run" in codes_of(grade_directory(tmp_path, now=NOW), "moved.json")


def test_independent_runs_are_not_copies_and_retries_are_not_copies(tmp_path: Path) -> None:
    for i, learner in enumerate(("u1", "u2", "u3")):
        write(
            tmp_path,
            f"{learner}.json",
            GEN.make(learner, "02_multinode_serving", GEN.records(100 + i, 200, ttft_s=0.03, tpot_s=0.008)),
        )
    retry = GEN.make("u1", "03_other_exercise", GEN.records(100, 200, ttft_s=0.03, tpot_s=0.008))
    write(tmp_path, "u1-again.json", retry)  # same learner reuses a run: not a copy
    book = grade_directory(tmp_path, now=NOW)
    assert [r.flags for r in book.rows] == [(), (), (), ()]


def test_a_partial_copy_is_flagged(tmp_path: Path) -> None:
    base = GEN.records(7, 200, ttft_s=0.03, tpot_s=0.008)
    write(tmp_path, "a.json", GEN.make("a", "02_multinode_serving", base))
    write(
        tmp_path,
        "b.json",
        GEN.make("b", "02_multinode_serving", base[:120] + GEN.records(8, 200, ttft_s=0.03, tpot_s=0.008)[120:]),
    )
    book = grade_directory(tmp_path, now=NOW)
    assert all(r.flags == ("copied_samples",) and r.score == 0 for r in book.rows)


def test_run_summary_and_stats_summaries_are_checked(tmp_path: Path) -> None:
    from labkit.stats import summarize_latencies, summarize_run

    recs = GEN.records(21, 300, ttft_s=0.02, tpot_s=0.005)
    for r in recs:
        r.itl_s = [0.005, 0.006] if r.status == "ok" else []
    outputs = {
        "summaries": {
            "run": summarize_run(recs).to_dict(),
            "itl": summarize_latencies(recs, "itl", ci=False).to_dict(),
        }
    }
    data = cpu_log("02_multinode_serving", "zoe", outputs, recs, minutes=2, last_done_s=max(r.done_s for r in recs))
    write(tmp_path, "zoe.json", data)
    book = grade_directory(tmp_path, now=NOW)
    assert book.rows[0].flags == () and book.rows[0].score == 100
    unverifiable = [f.message for f in book.findings if f.code == "summary_unverifiable"]
    assert len(unverifiable) == 2 and all("'itl'" in m for m in unverifiable)  # per-gap samples not kept
    data["outputs"]["summaries"]["run"]["metrics"]["e2e"]["percentiles"]["p50"] *= 0.5
    write(tmp_path, "zoe.json", rehash(data))
    assert "percentile_mismatch" in grade_directory(tmp_path, now=NOW).rows[0].flags


# ------------------------------------------------------------------------------------------ rubric


def test_instructor_rubric_overrides_merge_and_typos_fail(tmp_path: Path) -> None:
    rubric = load_rubric(write(tmp_path, "r.json", json.dumps({"weights": {"consistency": 0}})))
    assert rubric["weights"]["consistency"] == 0 and rubric["weights"]["completeness"] == 0.3
    assert rubric["penalties"]["hash_mismatch"] == 1.0
    for bad, words in [
        ({"weigths": {}}, "weigths"),
        ({"weights": {"completeness": "high"}}, "finite number"),
        ({"penalties": {"no_such_code": 1}}, "no_such_code"),
        ({"attempt_policy": "first"}, "first"),
        ({"exercises": [{"min_nodes": 2}]}, "match"),
        ({"weights": {"completeness": 0, "consistency": 0, "plausibility": 0}}, "sum to 0"),
    ]:
        with pytest.raises(ConfigError, match=None) as info:
            load_rubric(write(tmp_path, "bad.json", json.dumps(bad)))
        assert words in str(info.value)
    with pytest.raises(GradingError):
        load_rubric(write(tmp_path, "broken.json", "{"))


def test_rubric_exercise_rules_decide_min_nodes(tmp_path: Path) -> None:
    rules = {
        "exercises": [
            {"match": "02_*", "min_nodes": 3, "min_samples": 1, "required_summaries": []},
            {"match": "*", "min_nodes": 1, "min_samples": 1, "required_summaries": []},
        ]
    }
    book = grade_directory(REFERENCE / "good", rubric=write(tmp_path, "r.json", json.dumps(rules)), now=NOW)
    assert {r.learner_id: "single_node_for_multinode" in r.flags for r in book.rows} == {
        "alice": True,
        "bob": True,
        "carol": False,
    }


# ------------------------------------------------------------------------------------------ CLI


def test_cli_grade(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["grade", str(REFERENCE), "--out", str(tmp_path / "out")]) == 0
    assert "flagged" in capsys.readouterr().out
    assert (tmp_path / "out" / "gradebook.csv").exists() and (tmp_path / "out" / "report.html").exists()
    assert main(["grade", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")]) == 3


# ------------------------------------------------------------------------------------------ fuzzing

_RUBRIC = load_rubric()
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _paths(data: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(data, dict):
        for k, v in data.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(data, list) and data:
        out += _paths(data[0], (*prefix, 0))
    return out


_ALL_PATHS = [p for p in _paths(ALICE) if p]


def _mutate(data: dict, path: tuple, value: object, delete: bool) -> dict:
    data = copy.deepcopy(data)
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_loader_with_arbitrary_bytes(payload: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.json"
        path.write_bytes(payload)
        loaded = load_log_safely(path, rubric=_RUBRIC)
        findings, _scores = grade.assess_log(loaded, _RUBRIC, now=NOW)
        assert loaded.data is not None or findings


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.sampled_from(_ALL_PATHS), _json, st.booleans()), min_size=1, max_size=4),
    st.booleans(),
    st.integers(min_value=0, max_value=100),
)
def test_fuzz_grader_with_mutated_valid_logs(mutations: list, fix_hash: bool, cut_percent: int) -> None:
    data = ALICE
    for path, value, delete in mutations:
        try:
            data = _mutate(data, path, value, delete)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed the parent
    if fix_hash and isinstance(data.get("integrity"), dict):
        data["integrity"]["sha256"] = compute_log_hash(data)
    text = json.dumps(data)
    with tempfile.TemporaryDirectory() as folder:
        write(Path(folder), "m.json", text)
        write(Path(folder), "cut.json", text[: len(text) * cut_percent // 100])
        write(Path(folder), "alice.json", ALICE)
        book = grade_directory(folder, rubric=_RUBRIC, now=NOW)
        assert "grader_error" not in {f.code for f in book.findings}
        assert all(0 <= r.score <= 100 for r in book.rows)
        book.to_html()


# ------------------------------------------------------------------------------------------ several runs


def _two_runs() -> dict:
    first = GEN.records(31, 150, ttft_s=0.02, tpot_s=0.005)
    second = GEN.records(32, 150, ttft_s=0.08, tpot_s=0.02)
    for r in second:  # the second run starts 60 s later, after its own warm-up
        r.scheduled_s += 60
        r.sent_s += 60
        r.done_s += 60
        if r.first_token_s is not None:
            r.first_token_s += 60
            r.last_token_s += 60
    return {"distributed": first, "gated": second}


def _log_of_runs(runs: dict, records: object) -> dict:
    from labkit.record import build_log
    from labkit.stats import summarize_run

    outputs = {"runs": {name: {"summary": summarize_run(recs).to_dict()} for name, recs in runs.items()}}
    every = [r for recs in runs.values() for r in recs]
    return build_log(
        "load-exercise",
        environment=GEN.CPU_ENV,
        learner_id="yan",
        outputs=outputs,
        records=records,
        cluster=GEN.cluster(3),
        model="org/tiny",
        parameters={"rate_rps": 8},
        started_at=GEN.START,
        finished_at=GEN.START + dt.timedelta(minutes=3),
        papermill={"detected": False, "injected_parameters": {}},
        kit=GEN.KIT,
        environ={},
        clock=(GEN.START.timestamp() + 170, max(r.done_s for r in every)),
    )


@pytest.mark.parametrize("as_mapping", [True, False])
def test_each_run_summary_is_checked_against_its_own_requests(as_mapping: bool, tmp_path: Path) -> None:
    runs = _two_runs()
    records = runs if as_mapping else [r for recs in runs.values() for r in recs]  # notebook 02 passes a list
    data = _log_of_runs(runs, records)
    assert data["samples"]["requests"]["runs"] == (["distributed", "gated"] if as_mapping else [])
    write(tmp_path, "yan.json", data)
    book = grade_directory(tmp_path, now=NOW)
    assert book.rows[0].flags == (), [f.message for f in book.findings]
    data["outputs"]["runs"]["gated"]["summary"]["metrics"]["e2e"]["percentiles"]["p99"] *= 0.8
    write(tmp_path, "yan.json", rehash(data))
    found = [f for f in grade_directory(tmp_path, now=NOW).findings if f.code == "percentile_mismatch"]
    assert len(found) == 1 and "runs.gated.summary.metrics.e2e" in found[0].message


# ------------------------------------------------------------------------------------------ docs, notebook


def test_the_instructor_readme_explains_every_flag() -> None:
    text = (ROOT / "verification" / "README.md").read_text(encoding="utf-8")
    assert [code for code in grade.FINDING_CODES if f"`{code}`" not in text] == []


def test_gradebook_files_are_skipped_when_grading_again(tmp_path: Path) -> None:
    shutil.copytree(REFERENCE / "good", tmp_path / "logs")
    assert main(["grade", str(tmp_path / "logs")]) == 0
    assert (tmp_path / "logs" / "gradebook" / "gradebook.csv").exists()
    grade_directory(tmp_path / "logs", now=NOW).write(tmp_path / "logs")  # as in a labkit run folder
    write(tmp_path / "logs", "run.json", {"out_dir": "x", "ok": True, "results": []})
    book = grade_directory(tmp_path / "logs", now=NOW)
    assert [f.file for f in book.findings if f.code == "ignored_file"] == ["run.json"]
    assert [r.learner_id for r in book.rows] == ["alice", "bob", "carol"]


def test_grading_notebook_runs_headless(tmp_path: Path) -> None:
    papermill = pytest.importorskip("papermill")
    nbformat = pytest.importorskip("nbformat")
    source = ROOT / "notebooks" / "03_instructor_grading.ipynb"
    nb = nbformat.read(source, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "logs_dir" in tagged[0].source and "output_dir" in tagged[0].source
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # committed without outputs
    papermill.execute_notebook(
        str(source),
        str(tmp_path / "out.ipynb"),
        cwd=str(ROOT / "notebooks"),
        parameters={"logs_dir": str(REFERENCE), "output_dir": str(tmp_path)},
        progress_bar=False,
        kernel_name="python3",
    )
    rows = list(csv.DictReader((tmp_path / "gradebook.csv").open(encoding="utf-8")))  # where labkit run looks
    assert {"alice", "dave", "mallory"} <= {r["learner_id"] for r in rows}


def test_a_summary_needs_its_raw_samples_in_the_log(tmp_path: Path) -> None:
    """Notebook 02's layout: a first run plus two compared runs, each with a RunSummary."""
    runs = _two_runs()
    first = GEN.records(33, 120, ttft_s=0.03, tpot_s=0.01)
    for r in first:
        r.scheduled_s, r.sent_s, r.done_s = r.scheduled_s - 100, r.sent_s - 100, r.done_s - 100
        if r.first_token_s is not None:
            r.first_token_s, r.last_token_s = r.first_token_s - 100, r.last_token_s - 100
    all_runs = {"first_run": first, **runs}
    without_first = _log_of_runs(all_runs, [r for recs in runs.values() for r in recs])
    write(tmp_path, "a.json", without_first)
    found = grade_directory(tmp_path, now=NOW).findings
    assert {f.message.split("'")[1].split(".")[1] for f in found if f.code == "percentile_mismatch"} == {"first_run"}
    write(tmp_path, "a.json", _log_of_runs(all_runs, all_runs))  # records={run name: records}
    assert grade_directory(tmp_path, now=NOW).rows[0].flags == ()


# ------------------------------------------------------------------------------------------ outputs, learner id, verify


def test_csv_cells_that_start_a_formula_after_any_delimiter_are_defused(tmp_path: Path) -> None:
    evil = copy.deepcopy(ALICE)
    evil["learner_id"] = "bob;=cmd|' /C calc'!A0"
    evil["exercise"] = "x,+SUM(1)\t@A1|-2"
    write(tmp_path / "logs", "evil.json", rehash(evil))
    paths = grade_directory(tmp_path / "logs", now=NOW).write(tmp_path / "out")
    for name in ("gradebook", "findings"):
        for row in csv.reader(paths[name].open(encoding="utf-8")):
            for cell in row:
                for delimiter in (",", ";", "\t", "|", "\n"):
                    for part in cell.split(delimiter):
                        assert part.lstrip()[:1] not in ("=", "+", "-", "@"), (name, cell)
    learner = next(csv.DictReader(paths["gradebook"].open(encoding="utf-8")))["learner_id"]
    assert learner == "bob;'=cmd|' /C calc'!A0"


def test_secrets_in_a_log_never_reach_the_gradebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADER_API_TOKEN", "planted-grader-token-value")
    evil = copy.deepcopy(ALICE)
    evil["learner_id"] = "eve ghp_planted0123 planted-grader-token-value"
    evil["outputs"]["summaries"]["https://user:planted-url-pw@example.invalid"] = {"metric": "x", "p50": 1.0}
    write(tmp_path / "logs", "evil.json", rehash(evil))
    book = grade_directory(tmp_path / "logs", now=NOW)
    paths = book.write(tmp_path / "out")
    for path in paths.values():
        text = path.read_text(encoding="utf-8")
        for secret in ("ghp_planted0123", "planted-grader-token-value", "planted-url-pw"):
            assert secret not in text, (path.name, secret)
    assert "planted-url-pw" not in book._repr_html_()


def test_an_anonymous_run_gets_one_warning_that_says_how_to_set_the_id(tmp_path: Path) -> None:
    anonymous = copy.deepcopy(ALICE)
    anonymous["learner_id"] = "anonymous"
    write(tmp_path, "a.json", rehash(anonymous))
    found = [f for f in grade_directory(tmp_path, now=NOW).findings if f.severity != "info"]
    assert [f.code for f in found] == ["anonymous_learner"]
    assert "learner_id" in found[0].message and "LABKIT_LEARNER_ID" in found[0].message


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ("{}", ["schema_version", "learner_id", "samples", "integrity"]),
        ('{"schema_version": 1, "learner_id": "bob"}', ["log_id", "exercise", "timing", "samples"]),
        ('{"out_dir": "runs/1", "ok": true}', ["schema_version", "learner_id"]),
    ],
)
def test_verify_fails_a_file_that_is_not_a_complete_log(
    payload: str, words: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "x.json", payload)
    assert main(["verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "incomplete_log" in out and "labkit.checkpoint" in out
    assert all(w in out for w in words), out
    incomplete = copy.deepcopy(ALICE)
    del incomplete["timing"]["started_at"], incomplete["kit"]
    write(tmp_path, "y.json", rehash(incomplete))
    found = grade.verify_logs([tmp_path / "y.json"], now=NOW)[(tmp_path / "y.json").as_posix()]
    message = next(f.message for f in found if f.code == "incomplete_log")
    assert "kit" in message and "timing.started_at" in message
