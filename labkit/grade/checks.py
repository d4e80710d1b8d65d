"""Check one loaded log on its own and score its three categories.

Owns: :func:`assess_log`, which runs the schema and integrity-hash checks, the consistency
checks of :mod:`labkit.grade.consistency`, the plausibility checks against the recorded
hardware (``_check_plausibility``) and the completeness checks (``_check_completeness``),
then turns the findings into scores.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

from labkit.grade.consistency import _check_summaries, _check_times, _iter_summaries, _normalize_metric
from labkit.grade.loader import LoadedLog, _dict, _get, _list, _num, _Table
from labkit.grade.rubric import _CATEGORIES, Finding, Rubric, load_rubric
from labkit.record import compute_log_hash, validate_log

__all__ = ["assess_log"]


# --------------------------------------------------------------------------------------------
# Checks of one log
# --------------------------------------------------------------------------------------------


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
