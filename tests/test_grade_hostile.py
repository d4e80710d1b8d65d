"""A hostile corpus for the grader: files written to crash it, hang it or fill its memory.

Every case must give findings, never an exception, and finish: the ``timeout`` marks are hang
guards (about ten times what each case takes on a slow 2-core machine), not timing assertions.
The cases are built by :func:`hostile_cases` so ``benchmarks/bench_grade.py`` grades the same
corpus.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from _grade_fixtures import ALICE, GEN, rehash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labkit.cli import main
from labkit.grade import grade_directory, load_rubric, verify_logs

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "verification" / "reference"
NOW = dt.datetime(2025, 6, 1, tzinfo=dt.timezone.utc)


def _set(data: dict, dotted: str, value: object) -> dict:
    data = copy.deepcopy(data)
    parts = dotted.split(".")
    cur = data
    for part in parts[:-1]:
        cur = cur[int(part)] if isinstance(cur, list) else cur[part]
    if isinstance(cur, list):
        cur[int(parts[-1])] = value
    else:
        cur[parts[-1]] = value
    return rehash(data)


def _many_runs(n: int) -> dict:
    """n requests, each its own run: the runs x rows case (30,000 x 30,000 took 417 s)."""
    data = GEN.make("runs", "load-exercise", GEN.records(40, n, ttft_s=0.03, tpot_s=0.008))
    data["samples"]["requests"]["columns"]["run"] = list(range(n))
    data["samples"]["requests"]["runs"] = [f"r{i}" for i in range(n)]
    return rehash(data)


def _many_blocks(n: int) -> dict:
    """One flat list of n requests with a gap after every one, and summaries of sub-blocks."""
    recs = GEN.records(41, n, ttft_s=0.03, tpot_s=0.008)
    for k, r in enumerate(recs):  # a long pause before every request: each one may start a run
        shift = 2.0 * k
        r.scheduled_s += shift
        r.sent_s += shift
        r.done_s += shift
        if r.first_token_s is not None:
            r.first_token_s += shift
            r.last_token_s += shift
        r.warmup = k % 2 == 0
    data = GEN.make("blocks", "load-exercise", recs, minutes=24 * 60)
    summary = data["outputs"]["summaries"]["e2e"]
    for k in range(150):
        part = {**summary, "requests": n // 3 + k, "metric": "e2e", "percentiles": {"p50": 1234.5}}
        data["outputs"]["summaries"][f"part{k}"] = part  # fits no block: every block is tried
    return rehash(data)


def _many_summaries(n: int) -> dict:
    summary = ALICE["outputs"]["summaries"]["e2e"]
    summaries = {f"s{k}": {**summary, "percentiles": {"p50": k * 1e-3}} for k in range(n)}
    return _set(ALICE, "outputs.summaries", summaries)


def _wide_percentiles(n: int) -> dict:
    summary = copy.deepcopy(ALICE["outputs"]["summaries"]["e2e"])
    summary["percentiles"] = {f"p{k / 1000:.3f}": 0.1 for k in range(n)}
    return _set(ALICE, "outputs.summaries.e2e", summary)


def _wide_outputs(n: int) -> dict:
    return _set(ALICE, "outputs.junk", {f"k{k}": {"p50": 1, "metric": "e2e", "x": {}} for k in range(n)})


def hostile_cases() -> Iterator[tuple[str, bytes]]:
    """(file name, bytes) of each hostile file; every one a valid, re-hashed log unless named."""
    text = json.dumps(ALICE)
    yield "sample_1e303.json", json.dumps(_set(ALICE, "samples.requests.columns.done_s.5", 1e303)).encode()
    yield "sample_minus_1e308.json", json.dumps(_set(ALICE, "samples.requests.columns.sent_s.7", -1e308)).encode()
    yield "sample_int_10e400.json", json.dumps(_set(ALICE, "samples.requests.columns.done_s.5", 10**400)).encode()
    yield "duration_10e400.json", json.dumps(_set(ALICE, "timing.duration_s", 10**400)).encode()
    yield "count_10e400.json", json.dumps(_set(ALICE, "outputs.summaries.e2e.count", 10**400)).encode()
    yield "gpu_1e308.json", json.dumps(_set(ALICE, "cluster.nodes.0.resources.GPU", 1e308)).encode()
    yield "node_count_huge.json", json.dumps(_set(ALICE, "cluster.node_count", 10**300)).encode()
    yield "percentile_1e308.json", json.dumps(_set(ALICE, "outputs.summaries.e2e.percentiles.p50", 1e308)).encode()
    yield "timeout_huge.json", json.dumps(_set(ALICE, "samples.requests.columns.timeout_s.3", 10**300)).encode()
    yield "model_size_huge.json", json.dumps(_set(ALICE, "model.size_bytes", 10**300)).encode()
    yield "tokens_huge.json", json.dumps(_set(ALICE, "samples.requests.columns.output_tokens.4", 10**300)).encode()
    yield "time_year_1.json", json.dumps(_set(ALICE, "timing.started_at", "0001-01-01T00:00:00Z")).encode()
    yield "time_year_9999.json", json.dumps(_set(ALICE, "timing.finished_at", "9999-12-31T23:59:59.999999Z")).encode()
    yield "t0_odd.json", json.dumps(_set(ALICE, "samples.requests.t0_wall", "9999-12-31T23:59:59Z")).encode()
    yield "runs_30000.json", json.dumps(_many_runs(30_000)).encode()
    yield "blocks_8000.json", json.dumps(_many_blocks(8_000)).encode()
    yield "summaries_5000.json", json.dumps(_many_summaries(5_000)).encode()
    yield "percentile_keys_20000.json", json.dumps(_wide_percentiles(20_000)).encode()
    yield "outputs_100000_dicts.json", json.dumps(_wide_outputs(100_000)).encode()
    yield "series_300000.json", json.dumps(_set(ALICE, "samples.series", {"x": [0.1] * 300_000})).encode()
    nodes = [ALICE["cluster"]["nodes"][0]] * 100_000
    yield "nodes_100000.json", json.dumps(_set(ALICE, "cluster.nodes", nodes)).encode()
    yield "learner_10mb.json", json.dumps(_set(ALICE, "learner_id", "x" * 10_000_000)).encode()
    yield "keys_odd.json", json.dumps(_set(ALICE, "outputs.\udcff\u202e", {"p50": 1})).encode("utf-8", "surrogatepass")
    yield "depth_63.json", json.dumps(_set(ALICE, "outputs.deep", json.loads("[" * 60 + "]" * 60))).encode()
    yield "columns_ragged.json", json.dumps(_set(ALICE, "samples.requests.columns.done_s", [0.1] * 5)).encode()
    yield (
        "columns_wrong_types.json",
        json.dumps(
            _set(ALICE, "samples.requests.columns", {k: "x" for k in ALICE["samples"]["requests"]["columns"]})
        ).encode(),
    )
    yield "run_index_huge.json", json.dumps(_set(ALICE, "samples.requests.columns.run", [10**300] * 200)).encode()
    yield "empty_object.json", b"{}"
    yield "only_version.json", b'{"schema_version": 1}'
    yield (
        "wrong_root_types.json",
        json.dumps(
            {k: ([] if isinstance(v, dict) else {}) for k, v in ALICE.items() if k != "schema_version"}
            | {"schema_version": 1}
        ).encode(),
    )
    yield "int_4000_digits.json", text.replace('"duration_s": 300.0', '"duration_s": ' + "9" * 4000).encode()
    yield "int_5000_digits.json", text.replace('"duration_s": 300.0', '"duration_s": ' + "9" * 5000).encode()
    yield "float_1e400.json", text.replace('"duration_s": 300.0', '"duration_s": 1e400').encode()
    yield "deep_array.json", b"[" * 200_000 + b"]" * 200_000
    yield "deep_object.json", b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    yield "bom.json", b"\xef\xbb\xbf" + text.encode()
    yield "nul.json", b"\x00" * 1000
    yield "surrogates.json", b'{"schema_version": 1, "learner_id": "\\ud800\\udc00\\udfff"}'


# ------------------------------------------------------------------------------------------ the corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hostile")
    for name, payload in hostile_cases():
        (folder / name).write_bytes(payload)
    return folder


@pytest.mark.timeout(600)  # hang guard: grading the whole corpus takes well under a minute
def test_the_hostile_corpus_grades_without_a_crash(corpus: Path, tmp_path: Path) -> None:
    names = sorted(p.name for p in corpus.iterdir())
    (corpus / "alice.json").write_text(json.dumps(ALICE))  # the genuine log graded beside its edits
    try:
        book = grade_directory(corpus, now=NOW)
        book.write(tmp_path / "out")
    finally:
        (corpus / "alice.json").unlink()
    by_file: dict[str, set[str]] = {}
    for f in book.findings:
        by_file.setdefault(f.file, set()).add(f.code)
    assert not [f for f in book.findings if f.code in ("grader_error", "check_budget_exceeded")], [
        (f.file, f.message) for f in book.findings if f.code in ("grader_error", "check_budget_exceeded")
    ]
    assert [n for n in names if not by_file.get(n)] == []  # every hostile file has a finding
    assert "alice" in {r.learner_id for r in book.rows}  # the genuine log (most hostile ones are its edits)
    assert "too_many_summaries" in by_file["summaries_5000.json"]
    assert "int_5000_digits.json" in by_file and "invalid_json" in by_file["int_5000_digits.json"]


@pytest.mark.timeout(300)  # hang guard: each file takes a few seconds at most
@pytest.mark.parametrize(
    "name",
    [
        "sample_1e303.json",
        "sample_int_10e400.json",
        "duration_10e400.json",
        "empty_object.json",
        "runs_30000.json",
        "blocks_8000.json",
    ],
)
def test_verify_never_crashes_on_a_hostile_file(corpus: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["verify", str(corpus / name)])
    out = capsys.readouterr().out
    assert code == 1 and "FAIL" in out and "Traceback" not in out


@pytest.mark.timeout(120)
def test_a_budget_turns_slowness_into_a_finding(corpus: Path, tmp_path: Path) -> None:
    rubric = tmp_path / "r.json"
    rubric.write_text(json.dumps({"limits": {"max_work_per_file": 100_000}}))
    found = verify_logs([corpus / "runs_30000.json"], rubric=load_rubric(rubric), now=NOW)
    codes = {f.code for fs in found.values() for f in fs}
    assert "check_budget_exceeded" in codes and "grader_error" not in codes
    message = next(f.message for fs in found.values() for f in fs if f.code == "check_budget_exceeded")
    assert "max_work_per_file" in message and "rubric" in message


def test_a_failing_check_across_logs_is_a_finding_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from labkit.grade import copies

    def broken(*_args: object) -> dict:
        raise OverflowError("a value no check expected")

    monkeypatch.setattr(copies, "_shape_pairs", broken)
    for k in range(3):
        data = GEN.make(f"u{k}", "load-exercise", GEN.records(60 + k, 100, ttft_s=0.03, tpot_s=0.008))
        (tmp_path / f"u{k}.json").write_text(json.dumps(data))
    book = grade_directory(tmp_path, now=NOW)
    errors = [f for f in book.findings if f.code == "grader_error"]
    assert len(errors) == 3 and all("OverflowError" in f.message for f in errors)
    assert [r.score for r in book.rows] == [100.0, 100.0, 100.0]  # their own checks ran and passed


# ------------------------------------------------------------------------------------------ folders


def _make_deep(root: Path, depth: int, payload: bytes) -> None:
    """depth nested folders named 'd' (with dir_fd: the path may pass PATH_MAX), a log at the bottom."""
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            nxt = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        log = os.open("deep.json", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(log, payload)
        os.close(log)
    finally:
        os.close(fd)


def _remove_deep(root: Path) -> None:
    """Remove a tree made by _make_deep without recursion (shutil.rmtree recurses)."""
    fds = [os.open(root, os.O_RDONLY)]
    while True:
        try:
            fds.append(os.open("d", os.O_RDONLY, dir_fd=fds[-1]))
        except FileNotFoundError:
            break
    while len(fds) > 1:
        fd = fds.pop()
        for name in os.listdir(fd):
            os.unlink(name, dir_fd=fd)
        os.close(fd)
        os.rmdir("d", dir_fd=fds[-1])
    os.close(fds[0])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("depth", [1_100, 2_500])
def test_deeply_nested_folders_are_walked_without_recursion(depth: int, tmp_path: Path) -> None:
    root = tmp_path / "logs"
    root.mkdir()
    (root / "alice.json").write_text(json.dumps(ALICE))
    _make_deep(root, depth, json.dumps(ALICE).encode())
    try:
        book = grade_directory(root, now=NOW)
    finally:
        _remove_deep(root)
    assert [r.learner_id for r in book.rows if r.file == "alice.json"] == ["alice"]
    if depth == 1_100:  # the path fits the OS limit: the deep log is graded (alice's own second copy)
        assert len([r for r in book.rows if r.learner_id == "alice"]) == 1 and book.rows[0].attempts == 2
    else:  # past PATH_MAX: the folder that cannot be listed is a finding
        assert "unreadable_file" in {f.code for f in book.findings}


@pytest.mark.timeout(120)
def test_folders_with_too_many_entries_stop_at_the_limit(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    root.mkdir()
    for k in range(3_000):
        (root / f"note{k:05d}.txt").write_text("x")
    (root / "fifo.json").parent.mkdir(exist_ok=True)
    os.mkfifo(root / "fifo.json")  # reading it would block forever
    rubric = tmp_path / "r.json"
    rubric.write_text(json.dumps({"limits": {"max_dir_entries": 5_000}}))
    book = grade_directory(root, rubric=rubric, now=NOW)
    ignored = [f for f in book.findings if f.code == "ignored_file"]
    assert len(ignored) <= 1_001 and "more files" in ignored[-1].message
    assert {f.code for f in book.findings if f.file == "fifo.json"} == {"not_regular_file"}
    rubric.write_text(json.dumps({"limits": {"max_dir_entries": 100}}))
    book = grade_directory(root, rubric=rubric, now=NOW)
    assert "too_many_files" in {f.code for f in book.findings}


@pytest.mark.timeout(300)
def test_memory_is_bounded_by_one_log_not_by_the_class(tmp_path: Path) -> None:
    """The grader keeps a fingerprint of a few kB per log, not the logs: 3x the logs, same peak."""
    import tracemalloc

    peaks = []
    for count in (3, 9):
        root = tmp_path / f"logs{count}"
        root.mkdir()
        for k in range(count):
            data = GEN.make(f"l{k}", "load-exercise", GEN.records(500 + k, 3_000, ttft_s=0.03, tpot_s=0.008))
            (root / f"l{k}.json").write_text(json.dumps(data))
        grade_directory(root, now=NOW)  # imports and caches outside the measurement
        tracemalloc.start()
        try:
            grade_directory(root, now=NOW)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    one_log = (tmp_path / "logs3" / "l0.json").stat().st_size
    assert peaks[1] < peaks[0] + 2 * one_log, peaks  # six more logs held would add ~6 x 15 x one_log


# ------------------------------------------------------------------------------------------ hypothesis

_HOSTILE = st.sampled_from(
    [10**400, -(10**400), 10**300, 1e308, -1e308, 1e-308, 5e-324, 0, -1, 2**63, 2**64 + 1, "", "x" * 5000, None,
     True, False, [], {}, [None], {"p50": 1e308}, "2025-03-14T09:00:00Z", "\udcff", "NaN"]
)  # fmt: skip
_ANY = st.recursive(
    _HOSTILE | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=5),
    max_leaves=10,
)
_COLUMNS = sorted(ALICE["samples"]["requests"]["columns"])


def _leaf_paths(data: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(data, dict):
        for k, v in data.items():
            out += _leaf_paths(v, (*prefix, k))
    elif isinstance(data, list) and data and not isinstance(data[0], (int, float, str, type(None))):
        out += _leaf_paths(data[0], (*prefix, 0))
    return out


_PATHS = _leaf_paths(ALICE)


def _apply(data: dict, path: tuple, value: object) -> None:
    cur = data
    for key in path[:-1]:
        cur = cur[key]
    cur[path[-1]] = value


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    st.lists(st.tuples(st.sampled_from(_PATHS), _ANY), min_size=1, max_size=5),
    st.lists(
        st.tuples(
            st.sampled_from(_COLUMNS),
            st.sampled_from([0, 1, 199, 200, 201, 3000]),
            _HOSTILE | st.floats(allow_nan=False, allow_infinity=False) | st.integers(),
            st.integers(min_value=0, max_value=199),
        ),
        max_size=4,
    ),
    st.booleans(),
)
def test_fuzz_hostile_values_anywhere(fields: list, columns: list, fix_hash: bool) -> None:
    data = copy.deepcopy(ALICE)
    for path, value in fields:
        try:
            _apply(data, path, value)
        except (KeyError, IndexError, TypeError):
            continue
    cols = data
    for key in ("samples", "requests", "columns"):
        cols = cols.get(key) if isinstance(cols, dict) else None
    for name, length, value, where in columns:
        if isinstance(cols, dict) and isinstance(cols.get(name), list):
            column = (cols[name] * 16)[:length] if length > 200 else cols[name][:length]
            if column:
                column[where % len(column)] = value
            cols[name] = column
    if fix_hash:
        rehash(data)
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "h.json").write_text(json.dumps(data))
        Path(folder, "alice.json").write_text(json.dumps(ALICE))
        book = grade_directory(folder, now=NOW)
        assert "grader_error" not in {f.code for f in book.findings}, [
            f.message for f in book.findings if f.code == "grader_error"
        ]
        assert all(0 <= r.score <= 100 for r in book.rows)
        book.to_html()
        verify_logs([Path(folder, "h.json")], now=NOW)
