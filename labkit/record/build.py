"""Assembling a verification log: the compact raw samples and :func:`build_log`.

Owns: the compact column form of request records (:func:`compact_records`), time parsing and
UTC formatting, the derived constraints, and :func:`build_log`, which assembles, redacts,
hashes and validates a log without writing it (so reference logs are reproducible byte for byte).
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from labkit.errors import ConfigError, RecordError
from labkit.record.provenance import _kit_info, describe_cluster, describe_model, detect_papermill
from labkit.record.redaction import redact
from labkit.record.schema import (
    HASH_ALGORITHM,
    MAX_LOG_BYTES,
    SCHEMA_VERSION,
    _jsonable,
    _number,
    canonical_json,
    compute_log_hash,
    validate_log,
)

__all__ = [
    "build_log",
    "compact_records",
]

# --------------------------------------------------------------------------------------------
# Raw samples
# --------------------------------------------------------------------------------------------

_TIME_FIELDS = ("scheduled_s", "sent_s", "first_token_s", "last_token_s", "done_s")


def compact_records(
    records: Iterable[Any] | Mapping[str, Iterable[Any]],
    *,
    now_wall_s: float | None = None,
    now_clock_s: float | None = None,
) -> dict[str, Any]:
    """Turn request records into the log's compact column form.

    Times become seconds relative to the earliest scheduled time, rounded to microseconds, so
    thousands of requests take well under a megabyte; node and replica ids are stored once.

    Parameters
    ----------
    records : iterable of RequestRecord or dict, or mapping of run name to those
        :class:`labkit.load.RequestRecord` objects (or their ``to_dict()``). Records of several
        runs should come as ``{run_name: records}``: the run of each request is kept, so the
        grader checks each run's summary against that run's samples.
    now_wall_s, now_clock_s : float, optional
        A simultaneous reading of ``time.time()`` and ``time.perf_counter()``, to estimate the
        wall-clock time of the first request (``t0_wall``); read now when omitted.

    Returns
    -------
    dict
        ``count``, ``clock``, ``t0_wall``, ``columns``, ``nodes``, ``replicas``, ``runs``.
    """
    from labkit.contracts import RequestRecord

    groups: Iterable[tuple[str | None, Iterable[Any]]] = (
        records.items() if isinstance(records, Mapping) else [(None, records)]
    )
    runs: list[str] = []
    rows, run_of = [], []
    for name, group in groups:
        if name is not None:
            runs.append(str(name))
        for r in group:
            rows.append(r if isinstance(r, RequestRecord) else RequestRecord.from_dict(dict(r)))
            run_of.append(None if name is None else len(runs) - 1)
    columns: dict[str, list[Any]] = {
        name: []
        for name in (
            *_TIME_FIELDS,
            "timeout_s",
            "status",
            "warmup",
            "prompt_tokens",
            "output_tokens",
            "node",
            "replica",
            "run",
        )
    }
    nodes: dict[str, int] = {}
    replicas: dict[str, int] = {}
    starts = [r.scheduled_s for r in rows if _number(r.scheduled_s) is not None]
    t0 = min(starts) if starts else 0.0
    for r, run in zip(rows, run_of, strict=True):
        columns["run"].append(run)
        for name in _TIME_FIELDS:
            value = _number(getattr(r, name))
            columns[name].append(None if value is None else round(value - t0, 6))
        timeout = _number(getattr(r, "timeout_s", None))
        columns["timeout_s"].append(None if timeout is None else round(timeout, 6))
        columns["status"].append(str(r.status))
        columns["warmup"].append(bool(r.warmup))
        for name in ("prompt_tokens", "output_tokens"):
            value = getattr(r, name)
            columns[name].append(int(value) if isinstance(value, int) and value >= 0 else None)
        columns["node"].append(None if r.node_id is None else nodes.setdefault(str(r.node_id), len(nodes)))
        columns["replica"].append(
            None if r.replica_id is None else replicas.setdefault(str(r.replica_id), len(replicas))
        )
    t0_wall = None
    if starts:
        wall = time.time() if now_wall_s is None else now_wall_s
        clock = time.perf_counter() if now_clock_s is None else now_clock_s
        try:
            t0_wall = _utc_iso(wall - (clock - t0))
        except (OverflowError, OSError, ValueError):  # records from another clock: no wall anchor
            t0_wall = None
    return {
        "count": len(rows),
        "clock": "perf_counter",
        "t0_wall": t0_wall,
        "columns": columns,
        "nodes": list(nodes),
        "replicas": list(replicas),
        "runs": runs,
    }


# --------------------------------------------------------------------------------------------
# Building and validating a log
# --------------------------------------------------------------------------------------------


def _utc_iso(value: float | dt.datetime) -> str:
    moment = dt.datetime.fromtimestamp(value, dt.timezone.utc) if isinstance(value, (int, float)) else value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _parse_time(value: str | float | dt.datetime, field: str) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return dt.datetime.fromtimestamp(value, dt.timezone.utc)
    try:
        moment = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        msg = (
            f"{field}={value!r} is not a time. Pass a datetime, a POSIX timestamp or an ISO 8601 "
            "string such as '2025-01-31T12:00:00Z'."
        )
        raise ConfigError(msg, field=field, value=value) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def _process_start() -> float:
    try:
        import psutil  # lazy: optional; the kernel's start is the session's start
    except ImportError:
        return time.time()
    return psutil.Process().create_time()


def _check_name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        msg = f"{field}={value!r} is not usable. Pass a non-empty string of at most 200 characters."
        raise ConfigError(msg, field=field, value=value)
    return value.strip()


def _derive_constraints(
    given: Mapping[str, Any],
    environment: Mapping[str, Any],
    cluster: Mapping[str, Any],
    model: Mapping[str, Any],
) -> dict[str, Any]:
    hardware = environment.get("hardware", {})
    gpus = hardware.get("gpus") or []
    params = model.get("parameters_estimate")
    dtype = str(model.get("config", {}).get("torch_dtype", ""))
    weight_bytes = params * (4 if dtype == "float32" else 2) if params and dtype else model.get("size_bytes")
    derived = {
        "backend": "gpu" if gpus else "cpu",
        "model_size_bytes": weight_bytes,
        "model_parameters": params,
        "memory_total_bytes": hardware.get("memory_total_bytes"),
        "memory_available_bytes": hardware.get("memory_available_bytes"),
        "gpu_count": len(gpus),
        "cluster_nodes": cluster.get("node_count", 0),
    }
    out = {**derived, **given}
    backend = str(out["backend"]).lower()
    aliases = {"cpu": "cpu", "gpu": "gpu", "cuda": "gpu", "nvidia": "gpu"}
    if backend not in aliases:
        msg = f"constraints['backend']={out['backend']!r} is unknown. Allowed: {sorted(aliases)}."
        raise ConfigError(msg, field="constraints.backend", value=out["backend"])
    out["backend"] = aliases[backend]
    if "depends_on" not in given:
        gib = (out["memory_available_bytes"] or 0) / 2**30
        model_name = model.get("id") or "no model"
        out["depends_on"] = [
            f"{out['backend'].upper()} backend ({out['gpu_count']} GPU)",
            f"model {model_name} ({params or 'unknown'} parameters, {weight_bytes or 'unknown'} bytes)",
            f"{out['cluster_nodes']}-node Ray cluster",
            f"{gib:.1f} GiB memory available on this machine",
        ]
    return out


def build_log(
    name: str,
    *,
    environment: Mapping[str, Any],
    outputs: Mapping[str, Any] | None = None,
    constraints: Mapping[str, Any] | None = None,
    parameters: Mapping[str, Any] | None = None,
    learner_id: str | None = None,
    cluster: Any = None,
    model: str | os.PathLike[str] | None = None,
    records: Iterable[Any] | Mapping[str, Iterable[Any]] | None = None,
    samples: Mapping[str, Sequence[float]] | None = None,
    started_at: str | float | dt.datetime | None = None,
    finished_at: str | float | dt.datetime | None = None,
    papermill: Mapping[str, Any] | None = None,
    kit: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    clock: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Assemble, redact, hash and validate a log without writing it.

    Parameters are those of :func:`checkpoint`, plus the parts it gathers itself, so tests
    and reference logs can be built reproducibly.

    Parameters
    ----------
    name : str
        Exercise name.
    environment : mapping
        Output of :func:`record_environment`.
    outputs, constraints, parameters, learner_id, cluster, model, records, samples, started_at
        See :func:`checkpoint`.
    finished_at : str, float or datetime, optional
        End of the run; now when omitted.
    papermill : mapping, optional
        Output of :func:`detect_papermill`; detected when omitted.
    kit : mapping, optional
        Kit name, version and git state; read from the checkout when omitted.
    environ : mapping, optional
        Environment searched for secret values; ``os.environ`` when omitted.
    clock : tuple of float, optional
        A simultaneous ``(time.time(), time.perf_counter())`` reading that maps the records'
        clock to UTC; read now when omitted.

    Returns
    -------
    dict
        The log, with ``integrity`` set.

    Raises
    ------
    ConfigError
        If a parameter has an unusable value.
    RecordError
        If the result does not match the schema or exceeds ``MAX_LOG_BYTES``.
    """
    exercise = _check_name(name, "name")
    if learner_id is None:
        learner_id = os.environ.get("LABKIT_LEARNER_ID") or "anonymous"
    learner = _check_name(learner_id, "learner_id")
    finished = _parse_time(finished_at if finished_at is not None else time.time(), "finished_at")
    started = _parse_time(started_at if started_at is not None else _process_start(), "started_at")
    cluster_info = describe_cluster(cluster)
    model_info = describe_model(model)
    outputs_data = _jsonable(dict(outputs or {}), "outputs")
    outputs_data.setdefault("summaries", {})
    outputs_data.setdefault("generations", [])
    env = _jsonable(dict(environment), "environment")
    log = {
        "schema_version": SCHEMA_VERSION,
        "log_id": uuid.uuid4().hex,
        "learner_id": learner,
        "exercise": exercise,
        "kit": dict(kit) if kit is not None else _kit_info(),
        "timing": {
            "started_at": _utc_iso(started),
            "finished_at": _utc_iso(finished),
            "duration_s": round((finished - started).total_seconds(), 6),
        },
        "environment": env,
        "cluster": cluster_info,
        "model": model_info,
        "parameters": _jsonable(dict(parameters or {}), "parameters"),
        "papermill": _jsonable(dict(papermill) if papermill is not None else detect_papermill(), "papermill"),
        "outputs": outputs_data,
        "samples": {
            "requests": compact_records(
                records or [],
                now_wall_s=clock[0] if clock else None,
                now_clock_s=clock[1] if clock else None,
            ),
            "series": {str(k): [_number(v) for v in vs] for k, vs in (samples or {}).items()},
        },
        "constraints": _jsonable(
            _derive_constraints(dict(constraints or {}), env, cluster_info, model_info), "constraints"
        ),
    }
    log, changed = redact(log, environ=environ)
    log["redaction"] = {"count": len(changed), "paths": changed[:200]}
    log["integrity"] = {"algorithm": HASH_ALGORITHM, "sha256": compute_log_hash(log)}
    problems = validate_log(log)
    if problems:
        msg = f"The verification log does not match schema v{SCHEMA_VERSION}: " + "; ".join(problems[:5])
        raise RecordError(msg)
    size = len(canonical_json(log))
    if size > MAX_LOG_BYTES:
        msg = (
            f"The verification log would be {size} bytes, over the {MAX_LOG_BYTES}-byte limit graders "
            "accept. Pass fewer records (e.g. the measured run only) or shorter generations."
        )
        raise RecordError(msg)
    return log
