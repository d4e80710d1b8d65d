"""Grade many verification logs at once: findings, scores, a gradebook CSV and an HTML report.

Owns: the safe loader (size limit, UTF-8, JSON only), the rubric, the checks of one log
(schema, hash, percentiles recomputed from the raw samples, timestamps, plausibility against
the recorded hardware), the checks across logs (identical logs, raw samples shared between
learners) and the gradebook.

A log is untrusted input. The grader never executes, imports, evaluates or unpickles anything
from it; every problem with a file becomes a :class:`Finding`, never an exception, and every
string from a log is escaped in the HTML report and defused in the CSV.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import datetime as dt
import fnmatch
import hashlib
import html
import json
import math
import os
import re
import stat
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labkit.errors import ConfigError, GradingError
from labkit.record import SCHEMA_VERSION, canonical_json, compute_log_hash, validate_log

__all__ = [
    "FINDING_CODES",
    "Finding",
    "GradeRow",
    "Gradebook",
    "LoadedLog",
    "Rubric",
    "assess_log",
    "grade_directory",
    "load_log_safely",
    "load_rubric",
    "recompute_metric",
    "register_cli",
    "verify_logs",
]

# code -> (category, severity, what it means). Categories: "input" (the file cannot be graded),
# "completeness", "consistency", "plausibility"; penalties and caps come from the rubric.
FINDING_CODES: dict[str, tuple[str, str, str]] = {
    "unreadable_file": ("input", "error", "The file could not be read (permissions, vanished)."),
    "not_regular_file": ("input", "warning", "A symlink, folder or device named like a log; not followed."),
    "file_too_large": ("input", "error", "Larger than the rubric's max_log_bytes; not read."),
    "not_utf8": ("input", "error", "The bytes are not UTF-8 text."),
    "invalid_json": ("input", "error", "Not valid JSON (truncated, edited, or another format)."),
    "non_finite_number": ("input", "error", "NaN or Infinity in the JSON; logs hold finite numbers only."),
    "not_an_object": ("input", "error", "The JSON is not an object, so it is not a verification log."),
    "too_deep": ("input", "error", "Nested deeper than the rubric's max_depth."),
    "unsupported_schema_version": ("input", "error", "schema_version missing or not one this grader knows."),
    "ignored_file": ("input", "info", "Not a verification log (another file type or JSON); listed, not graded."),
    "too_many_files": ("input", "warning", "More files than the rubric's max_files; the rest were skipped."),
    "schema_invalid": ("consistency", "error", "Fields missing or of the wrong type for the schema."),
    "hash_missing": ("consistency", "error", "No integrity hash: the log was not written by labkit.record."),
    "hash_mismatch": ("consistency", "error", "The content does not match its hash: edited after recording."),
    "duplicate_key": ("consistency", "error", "A key appears twice in one object (hand-edited JSON)."),
    "percentile_mismatch": (
        "consistency",
        "error",
        "Reported percentiles do not follow from the log's raw samples.",
    ),
    "count_mismatch": ("consistency", "warning", "A summary's count differs from the number of raw samples."),
    "summary_unverifiable": ("consistency", "info", "A summary of a metric the grader cannot recompute."),
    "columns_ragged": ("consistency", "error", "Raw sample columns have different lengths."),
    "bad_timestamp": ("consistency", "error", "A timestamp that is not UTC ISO 8601."),
    "timestamps_out_of_order": ("consistency", "error", "The run finished before it started."),
    "duration_mismatch": ("consistency", "warning", "duration_s differs from finished_at - started_at."),
    "timestamp_in_future": ("consistency", "error", "The run finished after the grading time."),
    "sample_order": ("consistency", "error", "A request's times are out of order (e.g. done before sent)."),
    "samples_exceed_run": ("consistency", "error", "The raw samples span longer than the whole run."),
    "samples_outside_run": (
        "consistency",
        "warning",
        "The samples' start lies outside the run's time window.",
    ),
    "nodes_exceed_topology": (
        "consistency",
        "warning",
        "Requests served by more nodes than the cluster had.",
    ),
    "identical_log": ("consistency", "error", "Raw samples or summaries identical to another learner's log."),
    "copied_samples": ("consistency", "error", "Shares most raw latency samples with another learner's log."),
    "missing_fields": (
        "completeness",
        "warning",
        "Required fields (rubric required_fields) are empty or absent.",
    ),
    "anonymous_learner": ("completeness", "warning", "No learner id (set learner_id or LABKIT_LEARNER_ID)."),
    "too_few_samples": ("completeness", "warning", "Fewer raw samples than the exercise requires."),
    "missing_summaries": ("completeness", "warning", "Summaries the exercise requires are absent."),
    "gpu_claimed_without_gpu": ("plausibility", "error", "A GPU backend is claimed but no GPU is recorded."),
    "latency_below_hardware_floor": (
        "plausibility",
        "error",
        "Latencies faster than the recorded hardware can go.",
    ),
    "single_node_for_multinode": (
        "plausibility",
        "error",
        "A multi-node exercise run on fewer nodes than required.",
    ),
    "memory_claim_exceeds_hardware": (
        "plausibility",
        "warning",
        "Claimed available memory exceeds the recorded total.",
    ),
    "other_attempt": ("completeness", "info", "Another attempt of the same learner and exercise was graded."),
    "grader_error": ("input", "error", "The grader hit an unexpected case on this file (please report it)."),
}
_CATEGORIES = ("completeness", "consistency", "plausibility")


def _clean(text: str) -> str:
    """Make text from a log or a file name safe to encode (lone surrogates, odd bytes)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


# --------------------------------------------------------------------------------------------
# Findings and the rubric
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One problem (or note) about one file.

    Parameters
    ----------
    code : str
        A key of :data:`FINDING_CODES`.
    message : str
        What was found, with the values involved.
    file : str
        The file, relative to the graded folder.
    detail : dict
        Machine-readable facts (reported and recomputed values, other learners ...).
    """

    code: str
    message: str
    file: str = ""
    detail: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "message", _clean(self.message))
        object.__setattr__(self, "file", _clean(self.file))

    @property
    def category(self) -> str:
        """The rubric category the finding counts against."""
        return FINDING_CODES[self.code][0]

    @property
    def severity(self) -> str:
        """``error``, ``warning`` or ``info``."""
        return FINDING_CODES[self.code][1]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "code": self.code,
            "severity": self.severity,
            "category": self.category,
            "message": self.message,
            "file": self.file,
            "detail": dict(self.detail),
        }


@dataclass(frozen=True)
class Rubric:
    """Weights, thresholds and limits for grading; loaded from ``verification/rubric.json``.

    Parameters
    ----------
    data : dict
        The merged rubric (see :func:`load_rubric`).
    source : str
        Where it came from.
    """

    data: Mapping[str, Any]
    source: str = "verification/rubric.json"

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def exercise_rule(self, exercise: str) -> Mapping[str, Any]:
        """Return the first ``exercises`` entry whose ``match`` glob matches the exercise."""
        for rule in self.data["exercises"]:
            if fnmatch.fnmatchcase(exercise.lower(), str(rule["match"]).lower()):
                return rule
        return {"match": "*", "min_nodes": 1, "min_samples": 0, "required_summaries": []}

    def to_dict(self) -> dict[str, Any]:
        """Return the rubric as plain JSON data."""
        return copy.deepcopy(dict(self.data))


def _default_rubric_path() -> Path:
    return Path(__file__).resolve().parents[1] / "verification" / "rubric.json"


def _merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in override.items()}}
    return override


def _check_number(value: Any, path: str, default: Any = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        hint = f" (default {default})" if default is not None else ""
        msg = f"Rubric '{path}'={value!r} must be a finite number >= 0{hint}."
        raise ConfigError(msg, field=path, value=value)


_EXERCISE_TEMPLATE = {"match": "*", "about": "", "min_nodes": 1, "min_samples": 1, "required_summaries": [""]}


def _check_rubric(default: Any, given: Any, path: str) -> None:
    """Check an instructor's rubric against the default's keys and types."""
    name = path.rsplit(".", 1)[-1]
    if isinstance(default, dict):
        if not isinstance(given, dict):
            got = type(given).__name__
            msg = f"Rubric '{path}' must be an object, got {got}. See verification/rubric.json."
            raise ConfigError(msg, field=path, value=given)
        if name in ("penalties", "caps"):
            allowed: set[str] | None = set(FINDING_CODES) | {"about"}
        elif name == "gpu_by_name":
            allowed = None  # any GPU name
        else:
            allowed = set(default)
        for key, value in given.items():
            if allowed is not None and key not in allowed:
                msg = f"Unknown rubric key '{path}.{key}'. Allowed: {sorted(allowed)}. Fix the typo."
                raise ConfigError(msg, field=f"{path}.{key}", value=key)
            if key in default:
                _check_rubric(default[key], value, f"{path}.{key}")
            elif key != "about":
                _check_number(value, f"{path}.{key}")
    elif isinstance(default, (int, float)) and not isinstance(default, bool):
        _check_number(given, path, default)
    elif isinstance(default, str) and not isinstance(given, str):
        msg = f"Rubric '{path}'={given!r} must be a string (default {default!r})."
        raise ConfigError(msg, field=path, value=given)
    elif isinstance(default, list):
        if not isinstance(given, list):
            msg = f"Rubric '{path}' must be a list (default {default!r})."
            raise ConfigError(msg, field=path, value=given)
        template = _EXERCISE_TEMPLATE if name == "exercises" else None
        for i, item in enumerate(given):
            if template is not None:
                _check_rubric(template, item, f"{path}[{i}]")
                if "match" not in item:
                    msg = f"Rubric '{path}[{i}]' needs a 'match' glob such as '*multinode*'."
                    raise ConfigError(msg, field=f"{path}[{i}]", value=item)
            elif name.endswith(("required_fields", "required_summaries")) and not isinstance(item, str):
                msg = f"Rubric '{path}[{i}]'={item!r} must be a string (a dotted field or metric name)."
                raise ConfigError(msg, field=f"{path}[{i}]", value=item)


def load_rubric(path: str | os.PathLike[str] | None = None) -> Rubric:
    """Load the rubric: the committed default, overlaid with an instructor's file.

    Parameters
    ----------
    path : str or path, optional
        An instructor's rubric JSON; keys it leaves out keep the default values.

    Returns
    -------
    Rubric
        The merged, checked rubric.

    Raises
    ------
    GradingError
        If a rubric file cannot be read or is not JSON.
    ConfigError
        If a key is unknown or a value has the wrong type or range.
    """

    def read(file: Path) -> Any:
        try:
            return json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            msg = f"Cannot read rubric '{file}': {err}. Pass a JSON file like verification/rubric.json."
            raise GradingError(msg) from None

    default = read(_default_rubric_path())
    if path is None:
        return Rubric(default, str(_default_rubric_path().name))
    given = read(Path(path))
    _check_rubric(default, given, "rubric")
    merged = _merge(default, given)
    if merged["attempt_policy"] not in ("best", "latest"):
        msg = f"Rubric attempt_policy={merged['attempt_policy']!r} is unknown. Allowed: ['best', 'latest']."
        raise ConfigError(msg, field="attempt_policy", value=merged["attempt_policy"])
    if sum(v for k, v in merged["weights"].items() if k in _CATEGORIES) <= 0:
        msg = f"Rubric weights {merged['weights']} sum to 0. Give at least one category a positive weight."
        raise ConfigError(msg, field="weights", value=merged["weights"])
    return Rubric(merged, str(path))


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
        loaded.findings.append(Finding("ignored_file", "JSON, but not a verification log (no schema_version).", name))
        return loaded
    if isinstance(version, bool) or version != SCHEMA_VERSION:
        loaded.findings.append(
            Finding(
                "unsupported_schema_version",
                f"schema_version={str(version)[:40]!r}; this grader reads version {SCHEMA_VERSION}.",
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
# Checks of one log
# --------------------------------------------------------------------------------------------


def _get(data: Any, dotted: str, default: Any = None) -> Any:
    cur = data
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


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

    def rows_of_run(self, index: int) -> list[int]:
        """Row numbers of one run (records given as ``{run: records}``)."""
        return [i for i, run in enumerate(self.cols["run"]) if run == index and not isinstance(run, bool)]


def _table(data: Mapping[str, Any]) -> _Table:
    columns = _dict(_get(data, "samples.requests.columns"))
    names = (*_TIME_COLUMNS, "timeout_s", "status", "warmup", "output_tokens", "node", "run")
    lists = {name: _list(columns.get(name)) for name in names}
    lengths = {len(v) for k, v in lists.items() if k in columns}
    n = min(lengths) if lengths else 0
    cols = {k: [_num(x) for x in v[:n]] if k.endswith("_s") else v[:n] for k, v in lists.items()}
    for k in names:
        if len(cols[k]) < n or k not in columns:
            cols[k] = [None] * n
    runs = [r if isinstance(r, str) else "" for r in _list(_get(data, "samples.requests.runs"))]
    return _Table(cols, n, len(lengths) > 1, runs)


# The metrics of labkit.stats, recomputed here from a log's columns (seconds).
_SPANS = {
    "e2e": ("scheduled_s", "done_s"),
    "e2e_uncorrected": ("sent_s", "done_s"),
    "ttft": ("scheduled_s", "first_token_s"),
    "ttft_uncorrected": ("sent_s", "first_token_s"),
    "schedule_lag": ("scheduled_s", "sent_s"),
}
_ALIASES = {
    "e2e_s": "e2e",
    "latency": "e2e",
    "latency_s": "e2e",
    "e2e_uncorrected_s": "e2e_uncorrected",
    "ttft_s": "ttft",
    "ttft_uncorrected_s": "ttft_uncorrected",
    "tpot_s": "tpot",
    "schedule_lag_s": "schedule_lag",
    "itl_s": "itl",
}


def _normalize_metric(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    return _ALIASES.get(key, key)


def recompute_metric(
    table: _Table | Mapping[str, Any],
    metric: str,
    series: Mapping[str, Any] | None = None,
    rows: Sequence[int] | None = None,
) -> dict[str, list[float]] | None:
    """Return a metric's raw values under each request selection labkit.stats may have used.

    Definitions follow :mod:`labkit.stats`: ``e2e`` / ``ttft`` from the intended send,
    ``*_uncorrected`` from the actual send, ``tpot`` per request, ``schedule_lag``; a failed
    request counts as ``max(timeout_s or the slowest success, its measured time)``.

    Parameters
    ----------
    table : mapping
        A log (or its parsed sample table).
    metric : str
        A :data:`labkit.stats.METRICS` name (``_s`` suffixes accepted) or a ``samples.series`` name.
    series : mapping, optional
        The log's ``samples.series``; read from the log when table is a log.
    rows : sequence of int, optional
        Only these requests (one run of several); all when omitted.

    Returns
    -------
    dict or None
        Selection name (``ok``: successes; ``with_failures``: failures counted; ``+warmup``
        variants) to values; None when the metric cannot be recomputed (unknown, or ``itl``
        whose per-gap samples logs do not carry).
    """
    if not isinstance(table, _Table):
        series = _dict(_get(table, "samples.series")) if series is None else series
        table = _table(table)
    series = series or {}
    if metric in series:
        return {"series": [v for v in (_num(x) for x in _list(series[metric])) if v is not None]}
    key = _normalize_metric(metric)
    if key not in _SPANS and key != "tpot":
        return None
    c = table.cols
    ok = [s == "ok" for s in c["status"]]
    chosen = range(table.n) if rows is None else rows
    out: dict[str, list[float]] = {}
    for with_warmup in (False, True):
        picked = [i for i in chosen if with_warmup or c["warmup"][i] is not True]
        tag = "+warmup" if with_warmup else ""
        if key == "tpot":
            values = []
            for i in picked:
                first, last, tokens = c["first_token_s"][i], c["last_token_s"][i], _num(c["output_tokens"][i])
                if ok[i] and first is not None and last is not None and tokens is not None and tokens >= 2:
                    values.append((last - first) / (tokens - 1))
            out["ok" + tag] = values
            continue
        start, end = (c[k] for k in _SPANS[key])
        good = [end[i] - start[i] for i in picked if ok[i] and start[i] is not None and end[i] is not None]
        out["ok" + tag] = good
        if key == "schedule_lag":
            out["all" + tag] = [end[i] - start[i] for i in picked if start[i] is not None and end[i] is not None]
            continue
        if key.startswith("ttft") and not good:
            out["with_failures" + tag] = []
            continue
        worst = max(good) if good else None
        base = c[_SPANS[key][0]]
        values = list(good)
        for i in picked:
            if ok[i] or c["done_s"][i] is None or base[i] is None:
                continue
            measured = c["done_s"][i] - base[i]
            floor = _num(c["timeout_s"][i])
            floor = worst if floor is None else floor
            values.append(measured if floor is None else max(floor, measured))
        out["with_failures" + tag] = values
    return out


_PCT_KEY = re.compile(r"^[pP]?[0-9]+(?:[._][0-9]+)?(?:_s|_ms)?$", re.ASCII)
_DECIMAL = re.compile(r"^[0-9]+(?:\.[0-9]+)?$", re.ASCII)


def _percentile_key(key: str) -> float | None:
    if not _PCT_KEY.match(key):
        return None
    text = key.lower().removeprefix("p").removesuffix("_ms").removesuffix("_s").replace("_", ".")
    if "." not in text and len(text) >= 3 and text.startswith("99"):
        text = "99." + text[2:]  # p999 -> 99.9
    q = float(text)
    return q if 0 <= q <= 100 else None


def _read_percentiles(source: Any, scale: float) -> dict[float, float]:
    """``{"p50": v, "p99.9": v}`` (or ``{"50": v}``, fractions, ``[{"q", "value"}]``) -> {q: seconds}."""
    if isinstance(source, list):
        source = {
            str(item.get("q", item.get("percentile"))): item.get("value") for item in source if isinstance(item, dict)
        }
    if not isinstance(source, dict):
        return {}
    numeric = [k for k in source if _DECIMAL.match(k)]
    fractions = bool(numeric) and all(float(k) <= 1 for k in numeric) and any("." in k for k in numeric)
    out: dict[float, float] = {}
    for key, value in source.items():
        q = float(key) * 100 if fractions and key in numeric else _percentile_key(key)
        if isinstance(value, dict):
            value = value.get("value", value.get("estimate"))
        v = _num(value)
        if q is not None and v is not None:
            out[q] = v * scale * (1e-3 if key.lower().endswith("_ms") else 1.0)
    return out


def _iter_summaries(tree: Mapping[str, Any], prefix: str = "", depth: int = 0) -> Iterable[tuple[str, dict]]:
    """Yield (path, summary) for every latency summary anywhere under ``outputs``.

    A summary is an object with a string ``metric`` and percentiles (``LatencySummary.to_dict()``,
    also inside a ``RunSummary``), or an object of percentiles directly under a ``summaries`` key.
    """
    for name, value in tree.items():
        if not isinstance(value, dict):
            continue
        path = f"{prefix}{name}"
        has_percentiles = "percentiles" in value or "ok_percentiles" in value or bool(_read_percentiles(value, 1))
        if has_percentiles and (isinstance(value.get("metric"), str) or prefix.endswith("summaries.")):
            yield path, value
        elif depth < 6:
            yield from _iter_summaries(value, path + ".", depth + 1)


def _matches(reported: Mapping[float, float], values: Sequence[float], tol: Mapping[str, float]) -> dict:
    """Return the reported percentiles that the values do not reproduce."""
    import numpy as np  # lazy: only percentile checks need it; linear interpolation like labkit.stats

    qs = sorted(reported)
    again = np.percentile(np.asarray(values, dtype=float), qs).tolist() if values else [None] * len(qs)
    diffs = {}
    for q, recomputed in zip(qs, again, strict=True):
        value = reported[q]
        if recomputed is None or abs(value - recomputed) > tol["percentile_abs_s"] + tol["percentile_rel"] * abs(
            recomputed
        ):
            diffs[f"p{q:g}"] = {"reported": value, "recomputed": recomputed}
    return diffs


def _block_starts(table: _Table, order: list[int]) -> list[int]:
    """Positions in ``order`` (non-warm-up rows by scheduled time) where a run may begin."""
    c = table.cols
    starts, seen_warmup = {0}, False
    sched = [c["scheduled_s"][i] for i in order]
    gaps = sorted(b - a for a, b in zip(sched, sched[1:], strict=False))
    typical = gaps[len(gaps) // 2] if gaps else 0.0
    position = {row: k for k, row in enumerate(order)}
    for i in sorted(range(table.n), key=lambda i: c["scheduled_s"][i] or 0.0):
        if c["warmup"][i] is True:
            seen_warmup = True
        elif i in position:
            if seen_warmup:
                starts.add(position[i])
            seen_warmup = False
    for k in range(1, len(sched)):
        if sched[k] - sched[k - 1] > max(0.5, 20 * typical):
            starts.add(k)
    return sorted(starts)[:500]


def _candidate_rows(table: _Table, name: str, summary: Mapping[str, Any]) -> list[tuple[str, list[int] | None]]:
    """The request sets a summary may describe: all, its run, each run, or a block of one run."""
    parts = set(name.split("."))
    named = [k for k, run in enumerate(table.runs) if run and run in parts]
    if named:
        return [(f"run {table.runs[k]!r}", table.rows_of_run(named[0])) for k in named[:1]]
    out: list[tuple[str, list[int] | None]] = [("all requests", None)]
    out += [(f"run {run!r}", table.rows_of_run(k)) for k, run in enumerate(table.runs)]
    size = _num(summary.get("requests"))
    if not table.runs and size and 0 < size < table.n:
        order = sorted(
            (
                i
                for i in range(table.n)
                if table.cols["warmup"][i] is not True and table.cols["scheduled_s"][i] is not None
            ),
            key=lambda i: table.cols["scheduled_s"][i],
        )
        k = int(size)
        out += [
            (f"requests {s}..{s + k - 1}", order[s : s + k]) for s in _block_starts(table, order) if s + k <= len(order)
        ]
    return out


def _check_summaries(data: Mapping[str, Any], table: _Table, rubric: Rubric, file: str) -> list[Finding]:
    tol = rubric["tolerances"]
    series = _dict(_get(data, "samples.series"))
    findings = []
    for name, summary in _iter_summaries(_dict(_get(data, "outputs")), "outputs."):
        name = name.removeprefix("outputs.")
        unit = str(summary.get("unit", "s")).lower()
        scale = 1e-3 if unit in ("ms", "millisecond", "milliseconds") else 1.0
        top = {k: v for k, v in summary.items() if k not in ("percentiles", "ok_percentiles")}
        groups = {
            "percentiles": {
                **_read_percentiles(top, scale),
                **_read_percentiles(summary.get("percentiles"), scale),
            },
            "ok_percentiles": _read_percentiles(summary.get("ok_percentiles"), scale),
        }
        groups = {k: v for k, v in groups.items() if v}
        if not groups:
            continue
        metric = summary.get("metric") if isinstance(summary.get("metric"), str) else name.rsplit(".", 1)[-1]
        if recompute_metric(table, metric, series, rows=[]) is None:
            findings.append(
                Finding(
                    "summary_unverifiable",
                    f"Summary '{name[:80]}': metric {metric[:80]!r} cannot be recomputed from the raw samples.",
                    file,
                )
            )
            continue
        count = _num(summary.get("count"))
        first_miss: dict[str, Any] | None = None
        for label, rows in _candidate_rows(table, name, summary):
            candidates = recompute_metric(table, metric, series, rows=rows) or {}
            misses = {}
            for group, reported in groups.items():
                per_selection = {sel: _matches(reported, vals, tol) for sel, vals in candidates.items()}
                fits = [sel for sel, diffs in per_selection.items() if not diffs]
                if not fits:
                    sel = "ok" if group == "ok_percentiles" else "with_failures"
                    sel = sel if sel in per_selection else next(iter(per_selection))
                    misses[group] = (sel, len(candidates[sel]), per_selection[sel])
                elif group == "percentiles" and count is not None:
                    sizes = {len(candidates[sel]) for sel in fits}
                    if int(count) not in sizes:
                        misses["count"] = (fits[0], len(candidates[fits[0]]), {})
            if not misses:
                first_miss = None
                break
            if first_miss is None:
                first_miss = {"rows": label, "misses": misses}
        if first_miss is None:
            continue
        misses = first_miss["misses"]
        if set(misses) == {"count"}:
            findings.append(
                Finding(
                    "count_mismatch",
                    f"Summary '{name[:80]}' says count={count:g}; its percentiles fit "
                    f"{misses['count'][1]} raw samples.",
                    file,
                    {"count": count},
                )
            )
            continue
        group = "percentiles" if "percentiles" in misses else "ok_percentiles"
        sel, size, diffs = misses[group]
        label, diff = next(iter(diffs.items()))
        findings.append(
            Finding(
                "percentile_mismatch",
                f"Summary '{name[:80]}' ({metric[:40]}): {group} {label} reported {diff['reported']!r}; "
                f"the {size} raw samples ({first_miss['rows']}) give {diff['recomputed']!r}.",
                file,
                {"summary": name, "group": group, "rows": first_miss["rows"], "differences": diffs},
            )
        )
    return findings


def _check_times(data: Mapping[str, Any], table: _Table, rubric: Rubric, file: str, now: dt.datetime) -> list[Finding]:
    tol = rubric["tolerances"]
    findings = []
    started, finished = _time(_get(data, "timing.started_at")), _time(_get(data, "timing.finished_at"))
    if started is None or finished is None:
        return [Finding("bad_timestamp", "timing.started_at / finished_at are not UTC ISO 8601 times.", file)]
    run_s = (finished - started).total_seconds()
    if run_s < 0:
        findings.append(Finding("timestamps_out_of_order", f"finished_at is {-run_s:.3f} s before started_at.", file))
    duration = _num(_get(data, "timing.duration_s"))
    if duration is None or abs(duration - run_s) > tol["duration_abs_s"]:
        findings.append(
            Finding(
                "duration_mismatch",
                f"duration_s={duration!r} but the timestamps are {run_s:.3f} s apart.",
                file,
            )
        )
    if (finished - now).total_seconds() > tol["future_skew_s"]:
        findings.append(
            Finding(
                "timestamp_in_future",
                f"finished_at {finished.isoformat()} is after the grading time {now.isoformat()}.",
                file,
            )
        )
    c = table.cols
    bad = 0
    for row in zip(*(c[k] for k in _TIME_COLUMNS), strict=False):
        known = [v for v in row if v is not None]
        if any(b < a - 1e-6 for a, b in zip(known, known[1:], strict=False)):
            bad += 1
    if bad:
        findings.append(
            Finding(
                "sample_order",
                f"{bad} of {table.n} requests have times out of order "
                "(scheduled <= sent <= first token <= last token <= done).",
                file,
                {"requests": bad},
            )
        )
    times = [v for k in _TIME_COLUMNS for v in c[k] if v is not None]
    if times:
        span = max(times) - min(times)
        if span > max(run_s, 0) + tol["samples_slack_s"]:
            findings.append(
                Finding(
                    "samples_exceed_run",
                    f"The samples span {span:.1f} s but the run lasted {run_s:.1f} s.",
                    file,
                    {"span_s": span, "run_s": run_s},
                )
            )
        t0 = _time(_get(data, "samples.requests.t0_wall"))
        slack = tol["samples_slack_s"]  # seconds as floats: datetime arithmetic overflows on wild values
        offset = None if t0 is None else (t0 - started).total_seconds()
        if offset is not None and (offset < -slack or offset + span > run_s + slack):
            findings.append(
                Finding(
                    "samples_outside_run",
                    f"The samples start at {t0.isoformat()}, outside "
                    f"the run {started.isoformat()} .. {finished.isoformat()}.",
                    file,
                )
            )
    return findings


def _hardware_gpus(data: Mapping[str, Any]) -> tuple[list[str], int]:
    names = [str(g.get("name", "")) for g in _list(_get(data, "environment.hardware.gpus")) if isinstance(g, dict)]
    cluster = sum(_num(_get(n, "resources.GPU")) or 0 for n in _list(_get(data, "cluster.nodes")))
    return names, max(len(names), int(cluster))


def _check_plausibility(data: Mapping[str, Any], table: _Table, rubric: Rubric, file: str) -> list[Finding]:
    rules = rubric["plausibility"]
    findings = []
    gpu_names, gpu_count = _hardware_gpus(data)
    claims = {
        str(_get(data, "constraints.backend", "")).lower(),
        str(_get(data, "parameters.backend", "")).lower(),
        str(_get(data, "parameters.device", "")).lower(),
    }
    if claims & {"gpu", "cuda"} and gpu_count == 0:
        findings.append(
            Finding(
                "gpu_claimed_without_gpu",
                "A GPU backend is claimed, but the recorded hardware and cluster have no GPU.",
                file,
            )
        )
    exercise = _get(data, "exercise")
    rule = rubric.exercise_rule(exercise if isinstance(exercise, str) else "")
    nodes = _num(_get(data, "cluster.node_count")) or 0
    if nodes < rule.get("min_nodes", 1):
        findings.append(
            Finding(
                "single_node_for_multinode",
                f"Exercise needs {rule.get('min_nodes')} nodes; the recorded cluster has {nodes:g}.",
                file,
            )
        )
    claimed = _num(_get(data, "constraints.memory_available_bytes"))
    total = _num(_get(data, "environment.hardware.memory_total_bytes"))
    cluster_mem = sum(_num(_get(n, "resources.memory_bytes")) or 0 for n in _list(_get(data, "cluster.nodes")))
    if claimed is not None and total is not None and claimed > 1.01 * max(total, cluster_mem):
        findings.append(
            Finding(
                "memory_claim_exceeds_hardware",
                f"constraints.memory_available_bytes={claimed:g} "
                f"exceeds the recorded memory {max(total, cluster_mem):g}.",
                file,
            )
        )
    # Latency floor from the recorded hardware.
    device = "gpu" if gpu_count else "cpu"
    bandwidth = rules["memory_bandwidth_bytes_per_s"]
    if device == "gpu":
        per_gpu = bandwidth["gpu_default"]
        for pattern, value in bandwidth["gpu_by_name"].items():
            if gpu_names and pattern.lower() in gpu_names[0].lower():
                per_gpu = value
                break
        total_bw = per_gpu * gpu_count
    else:
        total_bw = bandwidth["cpu_per_node"] * max(1, nodes)
    weights = max(
        [
            v
            for v in (_num(_get(data, "model.size_bytes")), _num(_get(data, "constraints.model_size_bytes")))
            if v is not None
        ]
        or [0.0]
    )
    token_floor = max(rules["min_token_s"][device], weights / total_bw if total_bw else 0.0)
    c, fast, ok = table.cols, 0, 0
    floor_min = math.inf
    for status, warm, sent, done, out in zip(
        c["status"], c["warmup"], c["sent_s"], c["done_s"], c["output_tokens"], strict=False
    ):
        if status != "ok" or warm is True or sent is None or done is None:
            continue
        tokens = _num(out) or 0
        floor = rules["min_request_s"][device] + max(tokens, 0) * token_floor
        ok += 1
        if done - sent < floor:
            fast += 1
            floor_min = min(floor_min, floor)
    if ok and fast / ok > rules["max_fraction_too_fast"]:
        findings.append(
            Finding(
                "latency_below_hardware_floor",
                f"{fast} of {ok} requests finished faster than "
                f"the {device.upper()} hardware allows (floor {floor_min * 1e3:.3f} ms for their "
                "token counts).",
                file,
                {"too_fast": fast, "requests": ok, "token_floor_s": token_floor},
            )
        )
    return findings


def _check_completeness(
    data: Mapping[str, Any], table: _Table, rubric: Rubric, file: str
) -> tuple[list[Finding], int, int]:
    findings = []
    missing = [f for f in rubric["required_fields"] if _get(data, f) in (None, "", [], {})]
    if _get(data, "learner_id") == "anonymous":
        findings.append(Finding("anonymous_learner", "learner_id is 'anonymous'.", file))
        missing.append("learner_id")
    if missing:
        findings.append(
            Finding("missing_fields", f"Empty or absent: {', '.join(missing)[:400]}.", file, {"fields": missing})
        )
    exercise = _get(data, "exercise")
    rule = rubric.exercise_rule(exercise if isinstance(exercise, str) else "")
    checks = len(rubric["required_fields"]) + 2
    passed = checks - 2 - len(set(missing))
    n = table.n + sum(len(_list(v)) for v in _dict(_get(data, "samples.series")).values())
    if n >= rule.get("min_samples", 0):
        passed += 1
    else:
        findings.append(
            Finding("too_few_samples", f"{n} raw samples; the exercise needs {rule.get('min_samples')}.", file)
        )
    have = set()
    for name, summary in _iter_summaries(_dict(_get(data, "outputs")), "outputs."):
        have.add(_normalize_metric(name.rsplit(".", 1)[-1]))
        metric = _get(summary, "metric")
        if isinstance(metric, str):
            have.add(_normalize_metric(metric))
    absent = [s for s in rule.get("required_summaries", []) if _normalize_metric(s) not in have]
    if absent:
        findings.append(Finding("missing_summaries", f"Required summaries absent: {absent}.", file))
    else:
        passed += 1
    return findings, max(passed, 0), checks


def assess_log(
    loaded: LoadedLog, rubric: Rubric | None = None, *, now: dt.datetime | None = None
) -> tuple[list[Finding], dict[str, float]]:
    """Check one loaded log on its own and score its three categories.

    Parameters
    ----------
    loaded : LoadedLog
        Output of :func:`load_log_safely`.
    rubric : Rubric, optional
        The default rubric when omitted.
    now : datetime, optional
        The grading time (for timestamps in the future); now when omitted.

    Returns
    -------
    tuple
        All findings of the file (the loader's included) and the scores
        ``{"completeness", "consistency", "plausibility"}`` in 0..1 (zeros when unusable).
    """
    rubric = rubric or load_rubric()
    now = now or dt.datetime.now(dt.timezone.utc)
    findings = list(loaded.findings)
    data, file = loaded.data, loaded.file
    if data is None or data.get("_unusable"):
        return findings, dict.fromkeys(_CATEGORIES, 0.0)
    problems = validate_log(data, max_errors=10)
    if problems:
        findings.append(Finding("schema_invalid", "; ".join(problems[:3])[:600], file, {"errors": problems}))
    integrity = _get(data, "integrity.sha256")
    if not isinstance(integrity, str):
        findings.append(Finding("hash_missing", "integrity.sha256 is absent.", file))
    elif compute_log_hash(data) != integrity:
        findings.append(
            Finding(
                "hash_mismatch",
                "The canonical sha256 of the content differs from "
                "integrity.sha256: the file was changed after it was recorded.",
                file,
            )
        )
    table = loaded.table
    if table.ragged:
        findings.append(
            Finding(
                "columns_ragged",
                f"samples.requests.columns have different lengths; only the first {table.n} rows were checked.",
                file,
            )
        )
    findings += _check_summaries(data, table, rubric, file)
    findings += _check_times(data, table, rubric, file, now)
    used_nodes = {x for x in table.cols["node"] if isinstance(x, int) and not isinstance(x, bool)}
    node_count = _num(_get(data, "cluster.node_count"))
    if node_count and len(used_nodes) > node_count:
        findings.append(
            Finding(
                "nodes_exceed_topology",
                f"Requests were served by {len(used_nodes)} nodes; the cluster had {node_count:g}.",
                file,
            )
        )
    findings += _check_plausibility(data, table, rubric, file)
    complete, passed, checks = _check_completeness(data, table, rubric, file)
    findings += complete
    scores = {"completeness": passed / checks if checks else 1.0}
    for category in ("consistency", "plausibility"):
        penalty = sum(rubric["penalties"].get(f.code, 0.0) for f in findings if f.category == category)
        scores[category] = max(0.0, 1.0 - penalty)
    return findings, scores


# --------------------------------------------------------------------------------------------
# Checks across logs
# --------------------------------------------------------------------------------------------


def _sample_keys(data: Mapping[str, Any] | _Table) -> set[tuple[int, int]]:
    c = (data if isinstance(data, _Table) else _table(data)).cols
    keys = set()
    for status, sent, first, done in zip(c["status"], c["sent_s"], c["first_token_s"], c["done_s"], strict=False):
        if status == "ok" and sent is not None and done is not None:
            ttft = -1 if first is None else round((first - sent) * 1e6)
            keys.add((round((done - sent) * 1e6), ttft))
    return keys


def _cross_checks(logs: Sequence[LoadedLog], rubric: Rubric) -> dict[int, list[Finding]]:
    extra: dict[int, list[Finding]] = defaultdict(list)
    usable = [(i, log) for i, log in enumerate(logs) if log.data is not None and not log.data.get("_unusable")]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, log in usable:
        # Raw samples compared without their wall-clock anchor, which a copier can re-date.
        columns = _dict(_get(log.data, "samples.requests.columns"))
        series = _dict(_get(log.data, "samples.series"))
        parts = {
            "raw samples": [columns, series] if log.table.n or series else None,
            "summaries": _dict(_get(log.data, "outputs.summaries")) or None,
        }
        for part, value in parts.items():
            if value is not None:
                groups[part + ":" + hashlib.sha256(canonical_json(value)).hexdigest()].append(i)
    identical_pairs = set()
    for key, members in groups.items():
        learners = {logs[i].identity[0] for i in members}
        if len(learners) < 2:
            continue
        for i in members:
            others = sorted({logs[j].identity[0] for j in members if logs[j].identity[0] != logs[i].identity[0]})
            identical_pairs.update((i, j) for j in members)
            extra[i].append(
                Finding(
                    "identical_log",
                    f"{key.split(':')[0]} identical to the log(s) of {', '.join(others)[:200]}.",
                    logs[i].file,
                    {"others": others},
                )
            )
    rules = rubric["copy_detection"]
    keys = {i: _sample_keys(log.table) for i, log in usable}
    index: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, ks in keys.items():
        if len(ks) >= rules["min_shared_samples"]:
            for k in ks:
                index[k].append(i)
    shared: dict[tuple[int, int], int] = defaultdict(int)
    for members in index.values():
        if 1 < len(members) <= 50:
            for a in members:
                for b in members:
                    if a < b and logs[a].identity[0] != logs[b].identity[0]:
                        shared[(a, b)] += 1
    for (a, b), count in shared.items():
        fraction = count / min(len(keys[a]), len(keys[b]))
        if (
            count >= rules["min_shared_samples"]
            and fraction >= rules["min_shared_fraction"]
            and (a, b) not in identical_pairs
        ):
            for me, other in ((a, b), (b, a)):
                extra[me].append(
                    Finding(
                        "copied_samples",
                        f"{count} raw samples ({fraction:.0%}) also appear in "
                        f"{logs[other].identity[0]}'s log {logs[other].file}.",
                        logs[me].file,
                        {"other_learner": logs[other].identity[0], "shared": count},
                    )
                )
    return extra


# --------------------------------------------------------------------------------------------
# The gradebook
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GradeRow:
    """One learner and exercise in the gradebook (the attempt the rubric's policy picked)."""

    learner_id: str
    exercise: str
    when: str
    backend: str
    hardware: str
    completeness: float
    consistency: float
    plausibility: float
    flags: tuple[str, ...]
    score: float
    attempts: int
    file: str

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        out = dataclasses.asdict(self)
        out["flags"] = list(self.flags)
        return out


_CSV_COLUMNS = (
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
)


def _csv_safe(value: Any) -> Any:
    """Defuse spreadsheet formulas in strings that came from a log."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _hardware_text(data: Mapping[str, Any]) -> str:
    hw = _dict(_get(data, "environment.hardware"))
    cpus = _num(hw.get("cpu_count_usable")) or _num(hw.get("cpu_count_logical"))
    memory = _num(hw.get("memory_total_bytes"))
    gpu_names, gpu_count = _hardware_gpus(data)
    parts = [f"{cpus:g} CPU" if cpus else "? CPU", f"{memory / 2**30:.0f} GiB" if memory else "? GiB"]
    if gpu_count:
        parts.append(f"{gpu_count}x {gpu_names[0] if gpu_names else 'GPU'}")
    parts.append(f"{_num(_get(data, 'cluster.node_count')) or 0:g} node(s)")
    return ", ".join(parts)[:200]


def _text(value: Any, limit: int = 200) -> str:
    return _clean(value[:limit]) if isinstance(value, str) else ""


@dataclass
class Gradebook:
    """The graded folder: one row per learner and exercise, every finding, the rubric used."""

    rows: list[GradeRow]
    findings: list[Finding]
    rubric: Rubric
    source: str
    graded_at: str

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "source": self.source,
            "graded_at": self.graded_at,
            "rubric": self.rubric.to_dict(),
            "rows": [r.to_dict() for r in self.rows],
            "findings": [f.to_dict() for f in self.findings],
        }

    def __repr__(self) -> str:
        flagged = sum(1 for r in self.rows if r.flags)
        return (
            f"Gradebook(source={self.source!r}, rows={len(self.rows)}, flagged={flagged}, "
            f"findings={len(self.findings)})"
        )

    def _repr_html_(self) -> str:
        return self._rows_table()

    def _rows_table(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in _CSV_COLUMNS)
        body = []
        for r in self.rows:
            cells = []
            for name in _CSV_COLUMNS:
                value = getattr(r, name)
                if name == "flags":
                    cells.append(
                        "<td>"
                        + " ".join(
                            f"<abbr title='{html.escape(FINDING_CODES[c][2], quote=True)}'>{html.escape(c)}</abbr>"
                            for c in value
                        )
                        + "</td>"
                    )
                elif isinstance(value, float):
                    cells.append(f"<td class='num'>{value:.{1 if name == 'score' else 2}f}</td>")
                else:
                    cells.append(f"<td>{html.escape(str(value))}</td>")
            css = " class='flagged'" if r.flags else ""
            body.append(f"<tr{css}>{''.join(cells)}</tr>")
        return f"<table class='grades'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"

    def to_html(self) -> str:
        """Render the full report: gradebook, findings per file, flag glossary, rubric.

        Returns
        -------
        str
            A standalone HTML page; every string from a log is escaped.
        """
        esc = html.escape
        findings = "".join(
            f"<tr class='{esc(f.severity)}'><td>{esc(f.file)}</td><td>{esc(f.severity)}</td>"
            f"<td>{esc(f.code)}</td>"
            f"<td>{esc(f.message)}</td></tr>"
            for f in sorted(self.findings, key=lambda f: (f.file, _SEVERITY_ORDER[f.severity], f.code))
        )
        penalties, caps = self.rubric["penalties"], self.rubric["caps"]
        glossary = "".join(
            f"<tr><td>{esc(code)}</td><td>{esc(cat)}</td><td>{esc(sev)}</td><td>{penalties.get(code, 0)}</td>"
            f"<td>{caps.get(code, '')}</td><td>{esc(text)}</td></tr>"
            for code, (cat, sev, text) in FINDING_CODES.items()
        )
        scores = [r.score for r in self.rows]
        mean = f"{sum(scores) / len(scores):.1f}" if scores else "n/a"
        weights = ", ".join(f"{k} {v}" for k, v in self.rubric["weights"].items() if k in _CATEGORIES)
        return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>labkit gradebook</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }} table {{ border-collapse: collapse; margin-bottom: 2em; }}
td, th {{ border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }}
td.num {{ text-align: right; }} tr.flagged td {{ background: #fff4e5; }} tr.error td {{ color: #a40000; }}
tr.info td {{ color: #666; }} abbr {{ text-decoration: underline dotted; }}
</style></head><body>
<h1>Gradebook</h1>
<p>Folder: {esc(self.source)} &middot; graded {esc(self.graded_at)} &middot; {len(self.rows)} rows &middot;
mean score {mean} &middot; {sum(1 for r in self.rows if r.flags)} flagged &middot;
rubric {esc(self.rubric.source)} (weights: {esc(weights)}).</p>
<p>Each row is one learner and exercise; scores are 0..1 per category and 0..100 overall. Hover a flag for
its meaning; the glossary below lists penalties and caps.</p>
{self._rows_table()}
<h2>Findings by file</h2>
<table><thead><tr><th>file</th><th>severity</th><th>code</th><th>message</th></tr></thead>
<tbody>{findings}</tbody></table>
<h2>What the flags mean</h2>
<table><thead><tr><th>code</th><th>category</th><th>severity</th><th>penalty</th><th>score cap</th>
<th>meaning</th></tr></thead><tbody>{glossary}</tbody></table>
<h2>Rubric</h2><pre>{esc(json.dumps(self.rubric.to_dict(), indent=2))}</pre>
</body></html>
"""

    def write(self, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
        """Write ``gradebook.csv``, ``findings.csv`` and ``report.html`` into a folder.

        Grading a folder later skips these three files.

        Parameters
        ----------
        out_dir : str or path
            Created if missing.

        Returns
        -------
        dict
            ``{"gradebook": path, "findings": path, "report": path}``.

        Raises
        ------
        GradingError
            If the folder cannot be written.
        """
        out = Path(out_dir)
        paths = {
            "gradebook": out / "gradebook.csv",
            "findings": out / "findings.csv",
            "report": out / "report.html",
        }
        try:
            out.mkdir(parents=True, exist_ok=True)
            with paths["gradebook"].open("w", newline="", encoding="utf-8", errors="backslashreplace") as handle:
                writer = csv.writer(handle)
                writer.writerow(_CSV_COLUMNS)
                for r in self.rows:
                    d = r.to_dict()
                    d["flags"] = ";".join(r.flags)
                    for k in ("completeness", "consistency", "plausibility"):
                        d[k] = round(d[k], 3)
                    d["score"] = round(d["score"], 1)
                    writer.writerow([_csv_safe(d[c]) for c in _CSV_COLUMNS])
            with paths["findings"].open("w", newline="", encoding="utf-8", errors="backslashreplace") as handle:
                writer = csv.writer(handle)
                writer.writerow(("file", "severity", "category", "code", "message"))
                for f in self.findings:
                    writer.writerow([_csv_safe(x) for x in (f.file, f.severity, f.category, f.code, f.message)])
            paths["report"].write_text(self.to_html(), encoding="utf-8", errors="backslashreplace")
        except OSError as err:
            msg = f"Cannot write the gradebook to '{out}': {err}. Pick a writable --out folder."
            raise GradingError(msg) from None
        return paths


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


def _cmd_grade(args: Any) -> int:
    book = grade_directory(args.directory, rubric=args.rubric)
    paths = book.write(args.out if args.out else Path(args.directory) / "gradebook")
    flagged = sum(1 for r in book.rows if r.flags)
    print(f"Graded {len(book.rows)} learner/exercise rows from {book.source}: {flagged} flagged.")
    for kind, p in paths.items():
        print(f"  {kind:<9} {p}")
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``grade`` to the labkit command line.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The top-level parser's subparsers.
    """
    grade = subparsers.add_parser("grade", help="grade a folder of verification logs (CSV + HTML report)")
    grade.add_argument("directory", metavar="DIR", help="folder of verification logs")
    grade.add_argument("--out", default=None, help="output folder (default: DIR/gradebook)")
    grade.add_argument("--rubric", default=None, help="rubric JSON (default: verification/rubric.json)")
    grade.set_defaults(func=_cmd_grade)
