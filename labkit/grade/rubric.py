"""Finding codes, the :class:`Finding` record and the grading rubric.

Owns: :data:`FINDING_CODES` (what each flag means, its category and severity), the
:class:`Finding` every check returns, and :func:`load_rubric`, which overlays an instructor's
rubric on the committed ``verification/rubric.json`` and checks its keys and types.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labkit.errors import ConfigError, GradingError

__all__ = ["FINDING_CODES", "Finding", "Rubric", "load_rubric"]


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
    "copied_shape": (
        "consistency",
        "error",
        "Its requests' latencies follow another learner's in order: one run with times scaled or jittered.",
    ),
    "shared_run_values": (
        "consistency",
        "error",
        "Shares run-unique values (replica ids, log id, precise timings) with another learner's log.",
    ),
    "copy_source": (
        "consistency",
        "info",
        "Another learner's log copies this one and names this learner: not held against this learner.",
    ),
    "incomplete_log": (
        "completeness",
        "error",
        "Fields every verification log has are absent (named in the message): not a labkit.checkpoint log, or cut.",
    ),
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
    "derived_value_mismatch": (
        "consistency",
        "error",
        "Counts, rates or percentiles under outputs (run summaries, diagnoses, tables) do not follow from the samples.",
    ),
    "claim_mismatch": (
        "consistency",
        "error",
        "outputs.claim (tail ratios, factor, verdicts, holds) does not follow from the log's runs and samples.",
    ),
    "sample_fields_missing": (
        "consistency",
        "error",
        "Successful requests without a first token or token count among ones that have them (a failure edited).",
    ),
    "latency_contradicts_telemetry": (
        "plausibility",
        "error",
        "The engines' recorded activity needs more requests in flight than the samples' latencies allow.",
    ),
    "hardware_inconsistent": (
        "plausibility",
        "error",
        "The recorded GPUs contradict the driver, the GPU source, the constraints or the run's own GPU readings.",
    ),
    "cluster_inconsistent": (
        "plausibility",
        "error",
        "The recorded cluster contradicts itself (repeated nodes, heads, counts, requests served elsewhere).",
    ),
    "placement_wrong": (
        "plausibility",
        "error",
        "outputs.placement breaks tensor/pipeline parallelism rules or names nodes outside the cluster.",
    ),
    "check_budget_exceeded": (
        "input",
        "error",
        "Checking the file took more than the rubric's per-file time or work limit; it was not fully checked.",
    ),
    "too_many_summaries": (
        "consistency",
        "error",
        "More summaries than the rubric's max_summaries; the rest were not checked.",
    ),
    "unknown_percentile_key": (
        "consistency",
        "error",
        "A summary's percentiles have keys the grader cannot read (e.g. q50 for p50), so they were not checked.",
    ),
    "unknown_summary_metric": (
        "consistency",
        "warning",
        "A summary of a metric that is not a labkit.stats metric; its numbers cannot be checked.",
    ),
}
_CATEGORIES = ("completeness", "consistency", "plausibility")


def _clean(text: str) -> str:
    """Make text from a log or a file name safe to encode (lone surrogates, odd bytes)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}
_MAX_MESSAGE = 1000  # characters of a finding's message (values from a log are quoted shorter)


def _bounded(value: Any, depth: int = 0) -> Any:
    """Return a finding's detail cut to 20 items per list or dict, 200 characters, 4 levels.

    A hostile log cannot make the gradebook large through its findings.
    """
    if isinstance(value, str):
        return _clean(value[:200])
    if isinstance(value, Mapping):
        if depth >= 4:
            return f"<{len(value)} keys>"
        return {str(k)[:80]: _bounded(v, depth + 1) for k, v in list(value.items())[:20]}
    if isinstance(value, (list, tuple, set, frozenset)):
        if depth >= 4:
            return f"<{len(value)} items>"
        return [_bounded(v, depth + 1) for v in list(value)[:20]]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _clean(repr(value)[:200])


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
        object.__setattr__(self, "message", _clean(self.message[:_MAX_MESSAGE]))
        object.__setattr__(self, "file", _clean(self.file[:_MAX_MESSAGE]))
        object.__setattr__(self, "detail", _bounded(self.detail))

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
    return Path(__file__).resolve().parents[2] / "verification" / "rubric.json"


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
