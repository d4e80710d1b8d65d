"""Grade a folder of logs: find the files, check them, score them, pick one attempt each.

Owns: :func:`grade_directory` (discovery without following symlinks, the checks of each log
and across logs, the rubric's weights, caps and attempt policy) and :func:`verify_logs`
(the checks of single files, for ``labkit verify``).
"""

from __future__ import annotations

import datetime as dt
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from labkit.errors import GradingError
from labkit.grade.checks import assess_log
from labkit.grade.copies import _cross_checks
from labkit.grade.gradebook import Gradebook, GradeRow, _hardware_text, _text
from labkit.grade.loader import LoadedLog, _get, load_log_safely
from labkit.grade.rubric import _CATEGORIES, Finding, Rubric, load_rubric

__all__ = ["grade_directory", "verify_logs"]


_OUTPUTS = frozenset({"gradebook.csv", "findings.csv", "report.html"})  # what Gradebook.write makes


def _discover(root: Path, rubric: Rubric) -> tuple[list[Path], list[Finding]]:
    candidates, notes = [], []
    limit = int(rubric["limits"]["max_files"])
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        for name in sorted(files) + sorted(d for d in dirs if os.path.islink(os.path.join(folder, d))):
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            if name in _OUTPUTS:
                continue  # a gradebook written here earlier is output, not a submission
            if not name.lower().endswith(".json") or name.startswith("."):
                notes.append(Finding("ignored_file", "Not a verification log (.json); not graded.", rel))
            elif len(candidates) >= limit:
                notes.append(Finding("too_many_files", f"Skipped: more than max_files={limit} logs.", rel))
            else:
                candidates.append(path)
    return candidates, notes


def _grade_loaded(logs: Sequence[LoadedLog], rubric: Rubric, now: dt.datetime) -> tuple[list[GradeRow], list[Finding]]:
    cross = _cross_checks(logs, rubric)
    weights = {k: float(rubric["weights"].get(k, 0.0)) for k in _CATEGORIES}
    graded = []
    for i, log in enumerate(logs):
        try:
            findings, scores = assess_log(log, rubric, now=now)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError, OverflowError) as err:
            # A hostile log must not stop the grading of a whole class; the fuzz tests keep this unused.
            findings = [
                *log.findings,
                Finding("grader_error", f"{type(err).__name__}: {str(err)[:200]}", log.file),
            ]
            scores = dict.fromkeys(_CATEGORIES, 0.0)
        findings += cross.get(i, [])
        for f in cross.get(i, []):
            scores["consistency"] = max(0.0, scores["consistency"] - rubric["penalties"].get(f.code, 0.0))
        unusable = log.data is None or log.data.get("_unusable") or any(f.code == "grader_error" for f in findings)
        score = 0.0 if unusable else 100 * sum(weights[k] * scores[k] for k in _CATEGORIES) / sum(weights.values())
        for f in findings:
            if f.code in rubric["caps"]:
                score = min(score, float(rubric["caps"][f.code]))
        graded.append((log, findings, scores, score))
    by_key: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, (log, *_rest) in enumerate(graded):
        if log.data is not None:
            by_key[log.identity].append(i)

    def when(i: int) -> str:
        return _text(_get(graded[i][0].data, "timing.finished_at"), 40)

    rows, all_findings = [], []
    for (learner, exercise), members in sorted(by_key.items()):
        if rubric["attempt_policy"] == "latest":
            pick = max(members, key=lambda i: (when(i), graded[i][3]))
        else:
            pick = max(members, key=lambda i: (graded[i][3], when(i)))
        log, findings, scores, score = graded[pick]
        if len(members) > 1:
            others = [graded[i][0].file for i in members if i != pick]
            findings = [
                *findings,
                Finding(
                    "other_attempt",
                    f"{len(members)} attempts; graded this one, not {', '.join(others)[:300]}.",
                    log.file,
                ),
            ]
            graded[pick] = (log, findings, scores, score)
        data = log.data or {}
        flags = tuple(sorted({f.code for f in findings if f.severity != "info"}))
        rows.append(
            GradeRow(
                learner_id=learner,
                exercise=exercise,
                when=when(pick),
                backend=_text(_get(data, "constraints.backend"), 20),
                hardware=_hardware_text(data) if not data.get("_unusable") else "",
                completeness=scores["completeness"],
                consistency=scores["consistency"],
                plausibility=scores["plausibility"],
                flags=flags,
                score=round(score, 2),
                attempts=len(members),
                file=log.file,
            )
        )
    for log, findings, _scores, _score in graded:
        all_findings += findings
        if log.data is None:
            flags = tuple(sorted({f.code for f in findings if f.severity != "info"}))
            if flags and not all(f.code == "not_regular_file" for f in findings):
                rows.append(GradeRow("(unreadable)", "", "", "", "", 0.0, 0.0, 0.0, flags, 0.0, 1, log.file))
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
    logs = [load_log_safely(f, rubric=rubric, root=root) for f in files]
    rows, findings = _grade_loaded(logs, rubric, now)
    graded_at = now.astimezone(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    return Gradebook(rows, notes + findings, rubric, root.as_posix(), graded_at)


def verify_logs(
    paths: Iterable[str | os.PathLike[str]], *, rubric: Rubric | None = None, now: dt.datetime | None = None
) -> dict[str, list[Finding]]:
    """Check log files one by one (schema, hash, percentiles, timestamps, plausibility).

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
    results = {}
    for path in paths:
        loaded = load_log_safely(path, rubric=rubric)
        results[loaded.file] = assess_log(loaded, rubric, now=now)[0]
    return results
