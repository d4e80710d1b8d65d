"""Grade a folder of logs: find the files, check them, score them, pick one attempt each.

Owns: :func:`grade_directory` (discovery without following symlinks, the checks of each log
and across logs, the rubric's weights, caps and attempt policy) and :func:`verify_logs`
(the checks of single files, for ``labkit verify``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from labkit.errors import GradingError
from labkit.grade.budget import BudgetExceeded, budget
from labkit.grade.checks import _incomplete, assess_log
from labkit.grade.copies import Fingerprint, _cross_checks, fingerprint
from labkit.grade.gradebook import Gradebook, GradeRow, _hardware_text, _text
from labkit.grade.loader import LoadedLog, _get, load_log_safely
from labkit.grade.rubric import _CATEGORIES, Finding, Rubric, load_rubric
from labkit.record import load_schema

__all__ = ["grade_directory", "verify_logs"]


_OUTPUTS = frozenset({"gradebook.csv", "findings.csv", "report.html"})  # what Gradebook.write makes
_MAX_LISTED = 1000  # ignored files listed one by one; the rest are counted in one finding


def _discover(root: Path, rubric: Rubric) -> tuple[list[Path], list[Finding]]:
    """Find the candidate logs under root: depth-first, sorted, no symlinks followed, no recursion.

    Visits at most ``limits.max_dir_entries`` entries (files and folders) and keeps at most
    ``limits.max_files`` logs; a folder that cannot be listed (permissions, a path too long)
    is a finding.
    """
    candidates: list[Path] = []
    notes: list[Finding] = []
    limits = rubric["limits"]
    max_files, max_entries = int(limits["max_files"]), int(limits["max_dir_entries"])
    seen, unlisted = 0, 0
    stack = [root]

    def rel(path: Path) -> str:
        return path.relative_to(root).as_posix()

    def note(finding: Finding) -> None:
        nonlocal unlisted
        if finding.code == "ignored_file" and sum(1 for n in notes if n.code == "ignored_file") >= _MAX_LISTED:
            unlisted += 1
        else:
            notes.append(finding)

    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = list(itertools.islice(listing, max_entries - seen + 1))
        except OSError as err:
            notes.append(Finding("unreadable_file", f"Cannot list the folder: {err.strerror}.", rel(folder) or "."))
            continue
        seen += len(entries)
        if seen > max_entries:
            notes.append(
                Finding(
                    "too_many_files",
                    f"Stopped after limits.max_dir_entries={max_entries} files and folders; the rest were not "
                    "read. Grade a folder holding only the learners' logs, or raise the limit in a rubric copy.",
                    rel(folder) or ".",
                )
            )
            break
        files, links, folders = [], [], []
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.name)
                elif entry.is_symlink() and entry.is_dir():
                    links.append(entry.name)
                else:
                    files.append(entry.name)
            except OSError:
                files.append(entry.name)  # the loader reports what it cannot read
        for name in sorted(files) + sorted(links):
            path = folder / name
            if name in _OUTPUTS:
                continue  # a gradebook written here earlier is output, not a submission
            if not name.lower().endswith(".json") or name.startswith("."):
                note(Finding("ignored_file", "Not a verification log (.json); not graded.", rel(path)))
            elif len(candidates) >= max_files:
                notes.append(Finding("too_many_files", f"Skipped: more than max_files={max_files} logs.", rel(path)))
            else:
                candidates.append(path)
        stack.extend(folder / name for name in sorted(folders, reverse=True))
    if unlisted:
        notes.append(Finding("ignored_file", f"{unlisted} more files that are not .json logs; not graded.", "."))
    return candidates, notes


@dataclass
class _Graded:
    """One file after its checks: all the gradebook needs, without the log itself."""

    file: str
    usable: bool
    identity: tuple[str, str]
    when: str
    backend: str
    hardware: str
    findings: list[Finding]
    scores: dict[str, float]
    score: float = 0.0


class _Description(TypedDict):
    """The text fields of :class:`_Graded` that describe the run."""

    when: str
    backend: str
    hardware: str


def _budget_finding(err: BaseException, file: str, stage: str) -> Finding:
    return Finding(
        "check_budget_exceeded",
        f"Checking stopped while {stage}: {err}. A log written by the kit needs a fraction of this; "
        "to check this file anyway, raise the limit in a rubric copy (--rubric).",
        file,
        {"check": stage},
    )


def _error_finding(err: BaseException, file: str, stage: str) -> Finding:
    return Finding(
        "grader_error", f"{stage} failed on this file: {type(err).__name__}: {str(err)[:200]}", file, {"check": stage}
    )


def _check_file(path: Path, rubric: Rubric, now: dt.datetime, root: Path | None) -> tuple[_Graded, Fingerprint | None]:
    """Load, check and fingerprint one file inside its own budget; never raises for its content."""
    limits = rubric["limits"]
    name = path.as_posix()
    with contextlib.suppress(ValueError):
        name = path.relative_to(root).as_posix() if root is not None else name
    fp = None
    with budget(limits["max_seconds_per_file"], limits["max_work_per_file"]):
        try:
            loaded = load_log_safely(path, rubric=rubric, root=root)
        except BudgetExceeded as err:
            loaded = LoadedLog(name, None, [_budget_finding(err, name, "reading the file")])
        except Exception as err:  # noqa: BLE001 - untrusted input: a finding, never a crash
            loaded = LoadedLog(name, None, [_error_finding(err, name, "Reading the file")])
        findings, scores = assess_log(loaded, rubric, now=now)
        stopped = any(f.code in _UNFINISHED for f in findings)
        if not stopped:
            try:
                fp = fingerprint(loaded)
            except BudgetExceeded as err:
                findings.append(_budget_finding(err, loaded.file, "summarizing it for the checks across logs"))
            except Exception as err:  # noqa: BLE001
                findings.append(_error_finding(err, loaded.file, "Summarizing it for the checks across logs"))
    data = loaded.data
    usable = data is not None and not data.get("_unusable")
    info: _Description = {"when": "", "backend": "", "hardware": ""}
    if data is not None:
        try:
            info["when"] = _text(_get(data, "timing.finished_at"), 40)
            info["backend"] = _text(_get(data, "constraints.backend"), 20)
            info["hardware"] = _hardware_text(data) if usable else ""
        except Exception as err:  # noqa: BLE001
            findings.append(_error_finding(err, loaded.file, "Describing its hardware"))
    graded = _Graded(loaded.file, data is not None, loaded.identity, findings=findings, scores=scores, **info)
    return graded, fp


_UNFINISHED = frozenset({"grader_error", "check_budget_exceeded"})


def _score(graded: _Graded, rubric: Rubric) -> None:
    weights = {k: float(rubric["weights"].get(k, 0.0)) for k in _CATEGORIES}
    unfinished = any(f.code in _UNFINISHED and not f.detail.get("across") for f in graded.findings)
    unusable = not graded.usable or unfinished
    if unusable:
        graded.score = 0.0
        return
    score = 100 * sum(weights[k] * graded.scores[k] for k in _CATEGORIES) / sum(weights.values())
    for f in graded.findings:
        if f.code in rubric["caps"]:
            score = min(score, float(rubric["caps"][f.code]))
    graded.score = score


def _grade_files(
    paths: Iterable[Path], rubric: Rubric, now: dt.datetime, root: Path
) -> tuple[list[GradeRow], list[Finding]]:
    """Check each file in turn (one log in memory at a time), then compare the fingerprints."""
    graded: list[_Graded] = []
    fps: list[Fingerprint | None] = []
    for path in paths:
        one, fp = _check_file(path, rubric, now, root)
        graded.append(one)
        fps.append(fp if one.usable else None)

    def guard(indices: Sequence[int], step: Callable[[], None]) -> None:
        # A step over the whole class gets ten files' budget; its failure is a finding on every file
        # it covers but does not zero them: their own checks ran (see _score).
        scale = 10 if len(indices) > 2 else 1
        limits = rubric["limits"]
        try:
            with budget(limits["max_seconds_per_file"] * scale, limits["max_work_per_file"] * scale):
                step()
        except BudgetExceeded as err:
            for i in indices:
                found = _budget_finding(err, graded[i].file, "comparing it with other logs")
                graded[i].findings.append(Finding(found.code, found.message, found.file, {"across": True}))
        except Exception as err:  # noqa: BLE001 - a finding on the files involved, never a crash
            for i in indices:
                found = _error_finding(err, graded[i].file, "Comparing it with other logs")
                graded[i].findings.append(Finding(found.code, found.message, found.file, {"across": True}))

    cross: dict[int, list[Finding]] = {}
    try:
        cross = _cross_checks(fps, rubric, guard)
    except Exception as err:  # noqa: BLE001 - the class still gets its gradebook
        for i, fp in enumerate(fps):
            if fp is not None:
                found = _error_finding(err, graded[i].file, "Comparing the logs")
                graded[i].findings.append(Finding(found.code, found.message, found.file, {"across": True}))
    for i, one in enumerate(graded):
        for f in cross.get(i, []):
            one.findings.append(f)
            if f.category in one.scores:
                one.scores[f.category] = max(0.0, one.scores[f.category] - rubric["penalties"].get(f.code, 0.0))
        _score(one, rubric)
    return _rows(graded, rubric)


def _rows(graded: list[_Graded], rubric: Rubric) -> tuple[list[GradeRow], list[Finding]]:
    by_key: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, one in enumerate(graded):
        if one.usable:
            by_key[one.identity].append(i)
    rows, all_findings = [], []
    for (learner, exercise), members in sorted(by_key.items()):
        if rubric["attempt_policy"] == "latest":
            pick = max(members, key=lambda i: (graded[i].when, graded[i].score))
        else:
            pick = max(members, key=lambda i: (graded[i].score, graded[i].when))
        one = graded[pick]
        if len(members) > 1:
            others = [graded[i].file for i in members if i != pick]
            one.findings.append(
                Finding(
                    "other_attempt",
                    f"{len(members)} attempts; graded this one, not {', '.join(others)[:300]}.",
                    one.file,
                )
            )
        rows.append(
            GradeRow(
                learner_id=learner,
                exercise=exercise,
                when=one.when,
                backend=one.backend,
                hardware=one.hardware,
                completeness=one.scores["completeness"],
                consistency=one.scores["consistency"],
                plausibility=one.scores["plausibility"],
                flags=tuple(sorted({f.code for f in one.findings if f.severity != "info"})),
                score=round(one.score, 2),
                attempts=len(members),
                file=one.file,
            )
        )
    for one in graded:
        all_findings += one.findings
        if not one.usable:
            flags = tuple(sorted({f.code for f in one.findings if f.severity != "info"}))
            if flags and not all(f.code == "not_regular_file" for f in one.findings):
                rows.append(GradeRow("(unreadable)", "", "", "", "", 0.0, 0.0, 0.0, flags, 0.0, 1, one.file))
    return rows, all_findings


def grade_directory(
    path: str | os.PathLike[str],
    *,
    rubric: Rubric | str | os.PathLike[str] | None = None,
    now: dt.datetime | None = None,
) -> Gradebook:
    """Grade every verification log under a folder.

    Parameters
    ----------
    path : str or path
        Folder of logs (searched recursively; symlinks are not followed).
    rubric : Rubric, str or path, optional
        A rubric or an instructor's rubric file; ``verification/rubric.json`` when omitted.
    now : datetime, optional
        The grading time; now when omitted.

    Returns
    -------
    Gradebook
        Rows (one per learner and exercise, plus unreadable files) and every finding.

    Raises
    ------
    GradingError
        If path is not a folder.
    """
    root = Path(path)
    if not root.is_dir():
        msg = f"'{root}' is not a folder of verification logs. Pass the folder that holds the .json logs."
        raise GradingError(msg)
    rubric = rubric if isinstance(rubric, Rubric) else load_rubric(rubric)
    now = now or dt.datetime.now(dt.timezone.utc)
    files, notes = _discover(root, rubric)
    rows, findings = _grade_files(files, rubric, now, root)
    graded_at = now.astimezone(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    return Gradebook(rows, notes + findings, rubric, root.as_posix(), graded_at)


def verify_logs(
    paths: Iterable[str | os.PathLike[str]], *, rubric: Rubric | None = None, now: dt.datetime | None = None
) -> dict[str, list[Finding]]:
    """Check log files one by one (schema, hash, percentiles, timestamps, plausibility).

    A file named here must be a complete log: a JSON file that is not one (``{}``, a config)
    gets an ``incomplete_log`` finding naming the fields it lacks, where ``labkit grade``
    would list it as another file and move on.

    Parameters
    ----------
    paths : iterable of str or path
        Log files.
    rubric : Rubric, optional
        The default rubric when omitted.
    now : datetime, optional
        The checking time; now when omitted.

    Returns
    -------
    dict
        File name to its findings (empty list: the log is fine).
    """
    rubric = rubric or load_rubric()
    now = now or dt.datetime.now(dt.timezone.utc)
    required = [str(k) for k in load_schema().get("required", [])]
    results = {}
    for path in paths:
        graded, _fp = _check_file(Path(path), rubric, now, None)
        findings = []
        for f in graded.findings:
            if f.code == "ignored_file":  # named on the command line: it must be a log
                present = set(f.detail.get("keys", []))
                f = _incomplete([k for k in required if k not in present], f.file)  # noqa: PLW2901
            findings.append(f)
        results[graded.file] = findings
    return results
