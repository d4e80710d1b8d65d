"""Check one loaded log on its own and score its three categories.

Owns: :func:`assess_log`, which runs the schema and integrity-hash checks, the consistency
checks of :mod:`labkit.grade.consistency`, the plausibility checks against the recorded
hardware (``_check_plausibility``) and the completeness checks (``_check_completeness``),
then turns the findings into scores.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from labkit.grade.budget import BudgetExceeded, active_budget, budget, tick
from labkit.grade.consistency import _check_summaries, _check_times, _iter_summaries, _normalize_metric
from labkit.grade.evidence import (
    _check_claim,
    _check_cluster,
    _check_derived,
    _check_hardware,
    _check_placement,
    _check_sample_fields,
    _int,
)
from labkit.grade.loader import LoadedLog, _dict, _get, _list, _num, _Table
from labkit.grade.rubric import _CATEGORIES, Finding, Rubric, load_rubric
from labkit.record import compute_log_hash, load_schema, validate_log

__all__ = ["assess_log"]


# --------------------------------------------------------------------------------------------
# Checks of one log
# --------------------------------------------------------------------------------------------


def _hardware_gpus(data: Mapping[str, Any]) -> tuple[list[str], int]:
    names = [str(g.get("name", "")) for g in _list(_get(data, "environment.hardware.gpus")) if isinstance(g, dict)]
    nodes = _list(_get(data, "cluster.nodes"))
    tick(len(nodes))
    cluster = sum(min(_num(_get(n, "resources.GPU")) or 0, 1e6) for n in nodes)
    return names, max(len(names), int(min(cluster, 1e9)))


def _weight_bytes(data: Mapping[str, Any]) -> float:
    """The most the recorded model can weigh by its size fields, or by parameters x bytes each."""
    config = _dict(_get(data, "model.config"))
    dtype = str(config.get("torch_dtype", config.get("dtype", "")))[:20].lower()
    per_param = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0}.get(dtype, 0.5)  # unknown: as if 4-bit
    if "quantization_config" in config:
        per_param = 0.5
    params = [_num(_get(data, "model.parameters_estimate")), _num(_get(data, "constraints.model_parameters"))]
    sizes = [_num(_get(data, "model.size_bytes")), _num(_get(data, "constraints.model_size_bytes"))]
    sizes += [p * per_param for p in params if p is not None]
    return max([min(v, 1e15) for v in sizes if v is not None and v > 0] or [0.0])


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
    # Latency floor from the recorded hardware: one request is served by one replica, whose
    # tensor-parallel ranks read the weights in parallel and whose pipeline stages read them in turn.
    backend = str(_get(data, "constraints.backend", ""))[:10].lower()
    device = "gpu" if gpu_count and backend != "cpu" else "cpu"  # a CPU run is held to CPU floors, GPUs or not
    bandwidth = rules["memory_bandwidth_bytes_per_s"]
    tp = _int(_get(data, "parameters.tensor_parallel_size")) or _int(
        _get(data, "outputs.placement.tensor_parallel_size")
    )
    if device == "gpu":
        per_gpu = bandwidth["gpu_default"]
        for pattern, value in bandwidth["gpu_by_name"].items():
            if gpu_names and pattern.lower() in gpu_names[0].lower():
                per_gpu = value
                break
        total_bw = per_gpu * (min(tp, gpu_count) if tp else gpu_count)
    else:
        total_bw = bandwidth["cpu_per_node"] * (tp or 1)
    weights = _weight_bytes(data)
    token_floor = max(rules["min_token_s"][device], weights / total_bw if total_bw else 0.0)
    c, fast, ok = table.cols, 0, 0
    floor_min = math.inf
    tick(table.n)
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
    anonymous = _get(data, "learner_id") == "anonymous"
    if anonymous:
        findings.append(
            Finding(
                "anonymous_learner",
                "learner_id is 'anonymous', the notebooks' default: set the learner_id parameter in the "
                "notebook's first cell (or papermill -p learner_id YOUR_ID), or export LABKIT_LEARNER_ID=YOUR_ID "
                "before starting Jupyter, then run the notebook again.",
                file,
            )
        )
    if missing:
        findings.append(
            Finding("missing_fields", f"Empty or absent: {', '.join(missing)[:400]}.", file, {"fields": missing})
        )
    exercise = _get(data, "exercise")
    rule = rubric.exercise_rule(exercise if isinstance(exercise, str) else "")
    checks = len(rubric["required_fields"]) + 2
    passed = checks - 2 - len(set(missing) | ({"learner_id"} if anonymous else set()))
    n = table.n + sum(len(_list(v)) for v in _dict(_get(data, "samples.series")).values())
    if n >= rule.get("min_samples", 0):
        passed += 1
    else:
        findings.append(
            Finding("too_few_samples", f"{n} raw samples; the exercise needs {rule.get('min_samples')}.", file)
        )
    have = set()
    found = _iter_summaries(_dict(_get(data, "outputs")), "outputs.")
    for name, summary in itertools.islice(found, int(rubric["limits"]["max_summaries"])):
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


_FIX_INCOMPLETE = (
    "A complete log is written by labkit.checkpoint(...) in the notebook's last cell: run the notebook "
    "again (Run All, or make run) and hand in the file it writes, unedited."
)


def missing_log_fields(data: Mapping[str, Any]) -> list[str]:
    """The dotted names of the fields the schema requires that a log lacks (top level first)."""
    schema = load_schema()
    missing: list[str] = []
    stack: list[tuple[Mapping[str, Any], Any, str]] = [(schema, data, "")]
    while stack and len(missing) < 60:
        spec, value, prefix = stack.pop(0)
        if "$ref" in spec:
            spec = schema["$defs"].get(str(spec["$ref"]).rsplit("/", 1)[-1], {})
        if not isinstance(value, dict):
            continue
        properties = spec.get("properties", {})
        for key in spec.get("required", []):
            if key not in value:
                missing.append(prefix + key)
            elif isinstance(properties.get(key), dict):
                stack.append((properties[key], value[key], f"{prefix}{key}."))
    return missing


def _incomplete(missing: Sequence[str], file: str) -> Finding:
    shown = ", ".join(missing[:30]) + (f" and {len(missing) - 30} more" if len(missing) > 30 else "")
    return Finding(
        "incomplete_log",
        f"Not a complete verification log: {len(missing)} required field(s) absent: {shown}. {_FIX_INCOMPLETE}",
        file,
        {"missing": list(missing[:60])},
    )


def _check_schema(data: Mapping[str, Any], file: str) -> list[Finding]:
    problems = validate_log(data, max_errors=10)
    if not problems:
        return []
    found = [Finding("schema_invalid", "; ".join(problems[:3])[:600], file, {"errors": problems})]
    missing = missing_log_fields(data)
    if missing:
        found.append(_incomplete(missing, file))
    return found


def _check_hash(data: Mapping[str, Any], file: str) -> list[Finding]:
    integrity = _get(data, "integrity.sha256")
    if not isinstance(integrity, str):
        return [Finding("hash_missing", "integrity.sha256 is absent.", file)]
    if compute_log_hash(data) != integrity:
        return [
            Finding(
                "hash_mismatch",
                "The canonical sha256 of the content differs from "
                "integrity.sha256: the file was changed after it was recorded.",
                file,
            )
        ]
    return []


def _check_columns(table: _Table, file: str) -> list[Finding]:
    if not table.ragged:
        return []
    return [
        Finding(
            "columns_ragged",
            f"samples.requests.columns have different lengths; only the first {table.n} rows were checked.",
            file,
        )
    ]


def _check_nodes_used(data: Mapping[str, Any], table: _Table, file: str) -> list[Finding]:
    tick(table.n)
    used_nodes = {x for x in table.cols["node"] if isinstance(x, int) and not isinstance(x, bool)}
    node_count = _num(_get(data, "cluster.node_count"))
    if node_count and len(used_nodes) > node_count:
        return [
            Finding(
                "nodes_exceed_topology",
                f"Requests were served by {len(used_nodes)} nodes; the cluster had {node_count:g}.",
                file,
            )
        ]
    return []


def _guarded(steps: Sequence[tuple[str, Callable[[], list[Finding]]]], file: str) -> list[Finding]:
    """Run checks one by one; an exception becomes a finding on the file, never a crash.

    A check that runs out of the file's budget stops the remaining ones (they would run out
    too); any other exception is a ``grader_error`` naming the check, and the next check runs.
    """
    findings: list[Finding] = []
    for name, step in steps:
        try:
            findings += step()
        except BudgetExceeded as err:
            findings.append(
                Finding(
                    "check_budget_exceeded",
                    f"Checking stopped in the {name} check: {err}. A log written by the kit needs a fraction "
                    "of this; to check this file anyway, raise the limit in a rubric copy (--rubric).",
                    file,
                    {"check": name},
                )
            )
            break
        except Exception as err:  # noqa: BLE001 - untrusted input: any failure is a finding on this file
            findings.append(
                Finding(
                    "grader_error",
                    f"The {name} check failed on this file: {type(err).__name__}: {str(err)[:200]}",
                    file,
                    {"check": name},
                )
            )
    return findings


def assess_log(
    loaded: LoadedLog, rubric: Rubric | None = None, *, now: dt.datetime | None = None
) -> tuple[list[Finding], dict[str, float]]:
    """Check one loaded log on its own and score its three categories.

    Every check runs on its own: an exception in one becomes a ``grader_error`` finding and
    the others still run; running out of the per-file budget (``limits.max_seconds_per_file``,
    ``limits.max_work_per_file``) becomes ``check_budget_exceeded``. Never raises for any log.

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
    if active_budget() is None:
        limits = rubric["limits"]
        with budget(limits["max_seconds_per_file"], limits["max_work_per_file"]):
            return _assess(loaded, rubric, now)
    return _assess(loaded, rubric, now)


def _assess(loaded: LoadedLog, rubric: Rubric, now: dt.datetime) -> tuple[list[Finding], dict[str, float]]:
    findings = list(loaded.findings)
    data, file = loaded.data, loaded.file
    if data is None or data.get("_unusable"):
        return findings, dict.fromkeys(_CATEGORIES, 0.0)
    completeness: dict[str, int] = {}

    def table() -> _Table:
        return loaded.table

    def complete() -> list[Finding]:
        found, passed, checks = _check_completeness(data, table(), rubric, file)
        completeness.update(passed=passed, checks=checks)
        return found

    findings += _guarded(
        [
            ("schema", lambda: _check_schema(data, file)),
            ("integrity hash", lambda: _check_hash(data, file)),
            ("sample columns", lambda: _check_columns(table(), file)),
            ("summaries", lambda: _check_summaries(data, table(), rubric, file)),
            ("timestamps", lambda: _check_times(data, table(), rubric, file, now)),
            ("nodes", lambda: _check_nodes_used(data, table(), file)),
            ("derived values", lambda: _check_derived(data, table(), rubric, file)),
            ("claim", lambda: _check_claim(data, table(), rubric, file)),
            ("request fields", lambda: _check_sample_fields(data, table(), rubric, file)),
            ("hardware", lambda: _check_hardware(data, table(), rubric, file)),
            ("cluster", lambda: _check_cluster(data, table(), rubric, file)),
            ("placement", lambda: _check_placement(data, table(), rubric, file)),
            ("plausibility", lambda: _check_plausibility(data, table(), rubric, file)),
            ("completeness", complete),
        ],
        file,
    )
    checks = completeness.get("checks", 1)
    scores = {"completeness": completeness.get("passed", 0) / checks if checks else 1.0}
    for category in ("consistency", "plausibility"):
        penalty = sum(rubric["penalties"].get(f.code, 0.0) for f in findings if f.category == category)
        scores[category] = max(0.0, 1.0 - penalty)
    return findings, scores
