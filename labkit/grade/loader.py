"""Read one untrusted file as a verification log, and parse its raw samples.

Owns: :func:`load_log_safely` (size limit, strict UTF-8, JSON only, NaN/Infinity rejected,
duplicate keys noticed, bounded depth, schema version) and the :class:`LoadedLog` it returns;
the helpers that read a log's fields defensively (``_get``, ``_num``, ``_time`` ...) and the
``_Table`` of raw request samples that the checks share.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import math
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labkit.grade.budget import tick
from labkit.grade.rubric import Finding, Rubric, _clean, load_rubric
from labkit.record import SCHEMA_VERSION

__all__ = ["LoadedLog", "load_log_safely"]


# --------------------------------------------------------------------------------------------
# The safe loader
# --------------------------------------------------------------------------------------------


@dataclass
class LoadedLog:
    """A file read by :func:`load_log_safely`: the parsed log (None if unusable) and findings."""

    file: str
    data: dict[str, Any] | None
    findings: list[Finding]
    file_sha256: str | None = None
    _table_cache: Any = field(default=None, repr=False, compare=False)

    @property
    def table(self) -> _Table:
        """The raw request samples, parsed once."""
        if self._table_cache is None:
            self._table_cache = _table(self.data or {})
        return self._table_cache

    @property
    def identity(self) -> tuple[str, str]:
        """``(learner_id, exercise)`` as the log states them, or placeholders."""
        d = self.data if isinstance(self.data, dict) else {}
        learner, exercise = d.get("learner_id"), d.get("exercise")
        return (
            _clean(learner[:200]) if isinstance(learner, str) and learner.strip() else "(unknown)",
            _clean(exercise[:200]) if isinstance(exercise, str) and exercise.strip() else "(unknown)",
        )


class _NonFinite(ValueError):
    pass


def _reject_constant(name: str) -> float:
    raise _NonFinite(name)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFinite(text)
    return value


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        tick(len(children))
        stack.extend((v, depth + 1) for v in children if isinstance(v, (dict, list)))
    return False


def load_log_safely(
    path: str | os.PathLike[str], *, rubric: Rubric | None = None, root: str | os.PathLike[str] | None = None
) -> LoadedLog:
    """Read one file as a verification log; every problem becomes a finding.

    Reads at most the rubric's ``max_log_bytes``, decodes UTF-8 strictly, parses JSON with
    NaN/Infinity rejected and duplicate keys noticed, bounds the nesting depth and checks the
    schema version. Never raises for bad input and never executes anything.

    Parameters
    ----------
    path : str or path
        The file.
    rubric : Rubric, optional
        Limits; the default rubric when omitted.
    root : str or path, optional
        Folder the file name is shown relative to.

    Returns
    -------
    LoadedLog
        ``data`` is the parsed object (None when it cannot be graded) with its findings.
    """
    rubric = rubric or load_rubric()
    limits = rubric["limits"]
    file = Path(path)
    try:
        name = file.relative_to(root).as_posix() if root is not None else file.as_posix()
    except ValueError:
        name = file.as_posix()

    def fail(code: str, message: str, **detail: Any) -> LoadedLog:
        return LoadedLog(name, None, [Finding(code, message, name, detail)])

    try:
        info = os.lstat(file)
    except OSError as err:
        return fail("unreadable_file", f"Cannot stat the file: {err.strerror}.")
    if not stat.S_ISREG(info.st_mode):
        return fail("not_regular_file", "Not a regular file (symlink, folder or device); not read.")
    max_bytes = int(limits["max_log_bytes"])
    if info.st_size > max_bytes:
        return fail("file_too_large", f"{info.st_size} bytes > max_log_bytes={max_bytes}.", size=info.st_size)
    try:
        with open(file, "rb") as handle:
            raw = handle.read(max_bytes + 1)
    except OSError as err:
        return fail("unreadable_file", f"Cannot read the file: {err.strerror}.")
    if len(raw) > max_bytes:
        return fail("file_too_large", f"More than max_log_bytes={max_bytes} bytes.", size=len(raw))
    digest = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return fail("not_utf8", f"Byte {err.start} is not UTF-8 ({err.reason}).", offset=err.start)
    duplicates: list[str] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in pairs:
            if key in obj:
                duplicates.append(key[:80])
            obj[key] = value
        return obj

    try:
        data = json.loads(
            text.removeprefix("\ufeff"),
            object_pairs_hook=pairs_hook,
            parse_constant=_reject_constant,
            parse_float=_parse_float,
        )
    except _NonFinite as err:
        return fail("non_finite_number", f"Non-finite number {str(err)[:40]!r}.")
    except RecursionError:
        return fail("too_deep", "Nested too deeply for the JSON parser.")
    except ValueError as err:  # JSONDecodeError, and integers with too many digits
        return fail("invalid_json", f"Not valid JSON: {str(err)[:200]}.")
    if not isinstance(data, dict):
        return fail("not_an_object", f"The JSON is a {type(data).__name__}, not an object.")
    loaded = LoadedLog(name, data, [], digest)
    if _depth_exceeds(data, int(limits["max_depth"])):
        loaded.data = None
        loaded.findings.append(Finding("too_deep", f"Nested deeper than max_depth={limits['max_depth']}.", name))
        return loaded
    version = data.get("schema_version")
    if version is None and not {"learner_id", "exercise", "log_id", "integrity"} & data.keys():
        loaded.data = None  # another JSON file (run.json, a config): listed, not graded
        loaded.findings.append(
            Finding(
                "ignored_file",
                "JSON, but not a verification log (no schema_version).",
                name,
                {"keys": sorted(str(k)[:40] for k in itertools.islice(data, 100))},
            )
        )
        return loaded
    if isinstance(version, bool) or version != SCHEMA_VERSION:
        loaded.findings.append(
            Finding(
                "unsupported_schema_version",
                f"schema_version={str(version)[:40]!r}; this grader reads version {SCHEMA_VERSION}. "
                + (
                    "A log written by labkit.checkpoint(...) always has it: run the notebook again and hand in "
                    "the new file, unedited."
                    if version is None
                    else "Grade it with the labkit version that wrote it, or run the notebook again with this one."
                ),
                name,
            )
        )
        loaded.data = {k: data.get(k) for k in ("learner_id", "exercise")}  # identity only
        loaded.data["_unusable"] = True
        return loaded
    if duplicates:
        loaded.findings.append(
            Finding(
                "duplicate_key",
                f"Duplicate keys: {sorted(set(duplicates))[:5]}.",
                name,
                {"keys": sorted(set(duplicates))[:20]},
            )
        )
    return loaded


# --------------------------------------------------------------------------------------------
# Reading a log's fields and raw samples (shared by the checks)
# --------------------------------------------------------------------------------------------


def _get(data: Any, dotted: str, default: Any = None) -> Any:
    cur = data
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur


def _num(value: Any) -> float | None:
    """A finite float from a JSON number; None for anything else (huge integers included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)  # an integer like 10**400 does not fit a float
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value.endswith("Z") or len(value) > 40:
        return None
    try:
        moment = dt.datetime.fromisoformat(value[:-1] + "+00:00")
    except ValueError:
        return None
    return moment


_TIME_COLUMNS = ("scheduled_s", "sent_s", "first_token_s", "last_token_s", "done_s")


@dataclass
class _Table:
    """The raw request samples of one log, as plain lists of equal length."""

    cols: dict[str, list[Any]]
    n: int
    ragged: bool
    runs: list[str] = field(default_factory=list)
    _by_run: dict[int, list[int]] | None = field(default=None, repr=False)

    def rows_of_run(self, index: int) -> list[int]:
        """Row numbers of one run (records given as ``{run: records}``); one pass for all runs."""
        if self._by_run is None:
            tick(self.n)
            by_run: dict[int, list[int]] = {}
            for i, run in enumerate(self.cols["run"]):
                if isinstance(run, int) and not isinstance(run, bool):
                    by_run.setdefault(run, []).append(i)
            self._by_run = by_run
        return self._by_run.get(index, [])


def _table(data: Mapping[str, Any]) -> _Table:
    columns = _dict(_get(data, "samples.requests.columns"))
    names = (*_TIME_COLUMNS, "timeout_s", "status", "warmup", "output_tokens", "node", "run")
    lists = {name: _list(columns.get(name)) for name in names}
    lengths = {len(v) for k, v in lists.items() if k in columns}
    n = min(lengths) if lengths else 0
    tick(n * len(names))
    cols = {k: [_num(x) for x in v[:n]] if k.endswith("_s") else v[:n] for k, v in lists.items()}
    for k in names:
        if len(cols[k]) < n or k not in columns:
            cols[k] = [None] * n
    run_names = _list(_get(data, "samples.requests.runs"))
    tick(len(run_names))
    runs = [r if isinstance(r, str) else "" for r in run_names]
    return _Table(cols, n, len(lengths) > 1, runs)
