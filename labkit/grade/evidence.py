"""Checks that the numbers a log claims follow from its samples and agree with each other.

Owns the checks against consistent forgeries, where a learner edits a log and recomputes its
hash and its percentile summaries:

- ``_check_derived``: every number under ``outputs`` that :mod:`labkit.stats` or
  :mod:`labkit.diagnose` derives from one run's requests (a ``RunSummary``'s counts, rates and
  duration; a run's tail ratios; a diagnosis's ``n_requests``, ``e2e_p50_s`` ...; a results
  table's ``ttft_p99_s`` ...) is recomputed from the raw samples of that run
  (``derived_value_mismatch``), and the engine activity telemetry recorded is compared with the
  requests in flight that the samples imply (``latency_contradicts_telemetry``);
- ``_check_claim``: ``outputs.claim`` (``ExperimentResult.claim()``) recomputed: tail ratios from
  the samples, their factor, the verdicts and booleans (``claim_mismatch``);
- ``_check_sample_fields``: successful requests without a first token or a token count among
  ones that have them (``sample_fields_missing``, a failure edited into a success);
- ``_check_hardware``: GPUs listed without a driver or a source, repeated indices, fewer GPUs in
  the run's own GPU readings than listed (``hardware_inconsistent``);
- ``_check_cluster``: node ids repeated, heads not exactly one, node counts that disagree,
  requests served by nodes not in the cluster (``cluster_inconsistent``);
- ``_check_placement``: ``outputs.placement`` (ranks of each replica from the Ray state API)
  against tensor and pipeline parallelism and the recorded cluster (``placement_wrong``).

All are linear in the log's size and read the log defensively (any type anywhere).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from labkit.grade.budget import tick
from labkit.grade.consistency import _sorted_percentile, recompute_metric
from labkit.grade.loader import _dict, _get, _list, _num, _Table
from labkit.grade.rubric import Finding, Rubric

__all__: list[str] = []  # used by labkit.grade.checks

_REL = 2e-3  # relative slack for values recomputed from samples rounded to the microsecond
_ABS = 1e-4
_PCT_FIELD = re.compile(r"^(e2e|ttft|tpot|e2e_uncorrected|ttft_uncorrected|schedule_lag)_p([0-9]+(?:\.[0-9]+)?)_s$")
_RATIO_FIELD = re.compile(r"^(e2e|ttft)_p99_p50_ratio$")
_MAX_DICTS = 2000  # dicts under outputs looked at for derived values


def _close(reported: float, recomputed: float, rel: float = _REL, absolute: float = _ABS) -> bool:
    return abs(reported - recomputed) <= absolute + rel * abs(recomputed)


def _fmt(value: Any) -> str:
    number = _num(value)
    if number is None:
        return repr(value)[:40]
    return f"{number:.6g}"


# --------------------------------------------------------------------------------------------
# What one run's samples say
# --------------------------------------------------------------------------------------------


class _Run:
    """Facts of one run recomputed from its rows (warm-ups left out, as labkit.stats does)."""

    def __init__(self, table: _Table, rows: Sequence[int] | None, name: str) -> None:
        c = table.cols
        self.table, self.name = table, name
        self.rows = list(range(table.n)) if rows is None else list(rows)
        tick(2 * len(self.rows))
        measured = [i for i in self.rows if c["warmup"][i] is not True]
        self.measured = measured
        statuses: Counter[str] = Counter(str(c["status"][i])[:40] for i in measured)
        self.statuses = dict(statuses)
        self.requests = len(measured)
        self.ok = statuses.get("ok", 0)
        self.warmup_excluded = len(self.rows) - len(measured)
        sched = [c["scheduled_s"][i] for i in measured if c["scheduled_s"][i] is not None]
        sent = [c["sent_s"][i] for i in measured if c["sent_s"][i] is not None]
        done = [c["done_s"][i] for i in measured if c["done_s"][i] is not None]
        self.duration = max(done) - min(sched) if done and sched else None
        span_sent = max(sent) - min(sent) if len(sent) > 1 else 0.0
        self.achieved = (len(sent) - 1) / span_sent if span_sent > 0 else None
        tokens = [
            _num(c["output_tokens"][i])
            for i in measured
            if c["status"][i] == "ok" and _num(c["output_tokens"][i]) is not None
        ]
        self.tokens = sum(t for t in tokens if t is not None) if tokens else None
        busy = [
            c["done_s"][i] - c["sent_s"][i]
            for i in measured
            if c["done_s"][i] is not None and c["sent_s"][i] is not None
        ]
        window = (max(done) - min(sent)) if done and sent else 0.0
        self.in_flight = sum(busy) / window if window > 0 else None
        self._sorted: dict[str, dict[str, list[float]]] = {}

    def values(self, metric: str) -> dict[str, list[float]]:
        if metric not in self._sorted:
            selections = recompute_metric(self.table, metric, rows=self.rows) or {}
            self._sorted[metric] = {k: sorted(v) for k, v in selections.items()}
        return self._sorted[metric]

    def percentile_fits(self, metric: str, q: float, reported: float, tol: Mapping[str, float]) -> float | None:
        """None when one selection reproduces the value; else the usual selection's value."""
        best = None
        for sel, ordered in self.values(metric).items():
            if not ordered:
                continue
            value = _sorted_percentile(ordered, q)
            if abs(reported - value) <= tol["percentile_abs_s"] + tol["percentile_rel"] * abs(value):
                return None
            if best is None or sel in ("with_failures", "ok"):
                best = value
        return best if best is not None else math.nan

    def ratio_fits(self, metric: str, reported: float) -> float | None:
        best = None
        for sel, ordered in self.values(metric).items():
            if len(ordered) < 1:
                continue
            p50 = _sorted_percentile(ordered, 50)
            if not p50:
                continue
            ratio = _sorted_percentile(ordered, 99) / p50
            if _close(reported, ratio):
                return None
            if best is None or sel == "with_failures":
                best = ratio
        return best if best is not None else math.nan

    def tail_ratio(self, metric: str) -> float | None:
        """p99 / p50 over the selection labkit.stats' summary percentiles use (failures counted)."""
        values = self.values(metric)
        ordered = values.get("with_failures") or values.get("ok") or []
        if not ordered:
            return None
        p50 = _sorted_percentile(ordered, 50)
        return _sorted_percentile(ordered, 99) / p50 if p50 else None


def _runs_by_path(table: _Table) -> dict[str, int]:
    return {name: k for k, name in enumerate(table.runs) if name}


def _run_for(table: _Table, path: Sequence[str], cache: dict[Any, _Run]) -> _Run | None:
    """The run a dict under outputs describes: a run named in its path, or all when there is one run."""
    names = _runs_by_path(table)
    for part in reversed(path):
        if part in names:
            key = names[part]
            if key not in cache:
                cache[key] = _Run(table, table.rows_of_run(key), part)
            return cache[key]
    if not table.runs and table.n:
        if "all" not in cache:
            cache["all"] = _Run(table, None, "all requests")
        return cache["all"]
    return None


def _walk(tree: Mapping[str, Any], path: tuple[str, ...] = (), depth: int = 0) -> Iterable[tuple[tuple, dict]]:
    tick(len(tree))
    for name, value in tree.items():
        if isinstance(value, dict):
            yield (*path, str(name)), value
            if depth < 6:
                yield from _walk(value, (*path, str(name)), depth + 1)


# --------------------------------------------------------------------------------------------
# Derived values: RunSummary, TopologyRun, Diagnosis evidence, results tables
# --------------------------------------------------------------------------------------------


def _compare(out: list[str], where: str, key: str, reported: Any, recomputed: float | None, **kw: float) -> None:
    value = _num(reported)
    if value is None or recomputed is None:
        return
    if isinstance(recomputed, float) and math.isnan(recomputed):
        out.append(f"{where}.{key} = {_fmt(reported)} but the run has no samples for it")
    elif not _close(value, recomputed, **kw):
        out.append(f"{where}.{key} = {_fmt(reported)}; the samples give {_fmt(recomputed)}")


def _run_summary_problems(summary: Mapping[str, Any], run: _Run, where: str) -> list[str]:
    out: list[str] = []
    exact = {"rel": 0.0, "absolute": 0.5}
    _compare(out, where, "requests", summary.get("requests"), run.requests, **exact)
    _compare(out, where, "ok", summary.get("ok"), run.ok, **exact)
    _compare(out, where, "errors", summary.get("errors"), run.requests - run.ok, **exact)
    _compare(out, where, "warmup_excluded", summary.get("warmup_excluded"), run.warmup_excluded, **exact)
    if run.requests:
        _compare(out, where, "error_rate", summary.get("error_rate"), (run.requests - run.ok) / run.requests)
    statuses = summary.get("statuses")
    if isinstance(statuses, dict) and {str(k)[:40]: _num(v) for k, v in statuses.items()} != {
        k: float(v) for k, v in run.statuses.items()
    }:
        out.append(f"{where}.statuses = {str(statuses)[:80]}; the samples give {run.statuses}")
    if run.duration is not None:
        _compare(out, where, "duration_s", summary.get("duration_s"), run.duration)
        if run.duration > 0:
            _compare(out, where, "throughput_rps", summary.get("throughput_rps"), run.ok / run.duration)
            if run.tokens is not None:
                _compare(
                    out, where, "output_tokens_per_s", summary.get("output_tokens_per_s"), run.tokens / run.duration
                )
    if run.achieved is not None:
        _compare(out, where, "achieved_rate_rps", summary.get("achieved_rate_rps"), run.achieved)
    return out


def _evidence_problems(values: Mapping[str, Any], run: _Run, where: str, tol: Mapping[str, float]) -> list[str]:
    out: list[str] = []
    exact = {"rel": 0.0, "absolute": 0.5}
    for key, reported in list(values.items())[:200]:
        value = _num(reported)
        if value is None:
            continue
        pct = _PCT_FIELD.match(key)
        ratio = _RATIO_FIELD.match(key)
        if pct:
            recomputed = run.percentile_fits(pct.group(1), float(pct.group(2)), value, tol)
            if recomputed is not None:
                _compare(out, where, key, reported, recomputed, rel=0.0, absolute=0.0)
        elif ratio or (key in ("tail_ratio_ttft", "tail_ratio_e2e") and "summary" in values):
            metric = ratio.group(1) if ratio else key.rsplit("_", 1)[-1]
            recomputed = run.ratio_fits(metric, value)
            if recomputed is not None:
                _compare(out, where, key, reported, recomputed, rel=0.0, absolute=0.0)
        elif key in ("n_requests", "requests"):
            _compare(out, where, key, reported, run.requests, **exact)
        elif key in ("n_ok", "ok"):
            _compare(out, where, key, reported, run.ok, **exact)
        elif key == "errors":
            _compare(out, where, key, reported, run.requests - run.ok, **exact)
        elif key == "error_rate" and run.requests:
            _compare(out, where, key, reported, (run.requests - run.ok) / run.requests)
        elif key == "output_tokens_per_s" and run.duration and run.tokens is not None:
            _compare(out, where, key, reported, run.tokens / run.duration)
        elif key == "throughput_rps" and run.duration:
            _compare(out, where, key, reported, run.ok / run.duration)
    return out


def _is_run_summary(value: Mapping[str, Any]) -> bool:
    return {"requests", "ok", "errors", "statuses", "metrics"} <= value.keys()


def _is_latency_summary(value: Mapping[str, Any]) -> bool:
    return isinstance(value.get("metric"), str) and "percentiles" in value and "requests" in value


def _latency_summary_problems(summary: Mapping[str, Any], run: _Run, where: str) -> list[str]:
    """A LatencySummary's requests and errors: every measured request, failures among them."""
    out: list[str] = []
    metric = str(summary.get("metric"))
    if metric.startswith("ttft") and not run.values(metric).get("ok"):
        return out  # labkit.stats counts no requests for a TTFT nobody streamed
    exact = {"rel": 0.0, "absolute": 0.5}
    _compare(out, where, "requests", summary.get("requests"), run.requests, **exact)
    if metric not in ("tpot", "itl"):
        _compare(out, where, "errors", summary.get("errors"), run.requests - run.ok, **exact)
    return out


def _check_derived(data: Mapping[str, Any], table: _Table, rubric: Rubric, file: str) -> list[Finding]:
    tol = rubric["tolerances"]
    outputs = _dict(_get(data, "outputs"))
    runs: dict[Any, _Run] = {}
    problems: list[str] = []
    contradictions: list[str] = []
    for number, (path, value) in enumerate(_walk(outputs)):
        if number >= _MAX_DICTS:
            break
        where = "outputs." + ".".join(p[:40] for p in path)
        last = path[-1]
        shaped = (
            _is_run_summary(value)
            or _is_latency_summary(value)
            or last == "evidence"
            or ("tail_ratio_ttft" in value and "summary" in value)
            or any(_PCT_FIELD.match(str(k)) for k in list(value)[:50])
        )
        if not shaped:
            continue
        run = _run_for(table, path, runs)
        if run is None:
            continue
        if run.name == "all requests":  # one list of records: only what describes all of them is checked
            size = _num(value.get("requests", value.get("n_requests", _get(value, "summary.requests"))))
            if size != run.requests:
                continue
        if _is_run_summary(value):
            problems += _run_summary_problems(value, run, where)
        elif _is_latency_summary(value):
            problems += _latency_summary_problems(value, run, where)
        else:
            problems += _evidence_problems(value, run, where, tol)
        activity = _num(value.get("engine_activity_overall", value.get("engine_active_mean_all")))
        if activity is not None and run.in_flight is not None and activity > 2 * run.in_flight + 1:
            contradictions.append(
                f"{where}: engines held {activity:.3g} requests on average (telemetry) but the samples have "
                f"only {run.in_flight:.3g} in flight"
            )
    findings = []
    if problems:
        findings.append(
            Finding(
                "derived_value_mismatch",
                f"{len(problems)} number(s) under outputs do not follow from the raw samples of their run: "
                + "; ".join(problems[:4])
                + ".",
                file,
                {"problems": problems[:20]},
            )
        )
    if contradictions:
        findings.append(
            Finding(
                "latency_contradicts_telemetry",
                "; ".join(contradictions[:3]) + ". A client cannot have fewer requests in flight than the "
                "engines hold: the latencies were shortened after the run.",
                file,
                {"problems": contradictions[:20]},
            )
        )
    return findings


# --------------------------------------------------------------------------------------------
# outputs.claim (ExperimentResult.claim())
# --------------------------------------------------------------------------------------------


def _claim_run(runs: Mapping[str, Any], role: str, rate: float | None) -> tuple[str, Mapping[str, Any]] | None:
    """The outputs.runs entry of the gated or baseline door (at the claim's rate when several)."""
    found = []
    for key, run in list(runs.items())[:200]:
        if not isinstance(run, dict):
            continue
        name = run.get("name") if isinstance(run.get("name"), str) else key
        if name == role or key == role:
            found.append((str(key), run))
    if len(found) > 1 and rate is not None:
        at_rate = [
            (k, r) for k, r in found if _num(_get(r, "summary.offered_rate_rps")) == rate or k.endswith(f"-{rate:g}rps")
        ]
        found = at_rate or found
    return found[0] if len(found) == 1 else None


def _check_claim(data: Mapping[str, Any], table: _Table, rubric: Rubric, file: str) -> list[Finding]:
    claim = _get(data, "outputs.claim")
    if not isinstance(claim, dict) or "holds" not in claim:
        return []
    from labkit.experiment import ACTIVITY_TOLERANCE, TAIL_RATIO_FACTOR  # the claim's own constants

    problems: list[str] = []
    metric = cast(str, claim.get("metric")) if claim.get("metric") in ("ttft", "e2e") else "ttft"
    rate = _num(claim.get("rate_rps"))
    runs = _dict(_get(data, "outputs.runs"))
    names = _runs_by_path(table)
    cache: dict[Any, _Run] = {}
    ratios: dict[str, float | None] = {}
    verdicts: dict[str, Any] = {}
    activity: dict[str, float | None] = {}
    for role, side in (("gated", "gated"), ("distributed", "baseline")):
        entry = _claim_run(runs, role, rate)
        if entry is None:
            problems.append(f"no run named {role!r} under outputs.runs to check the claim against")
            continue
        key, run = entry
        recorded = _run_for(table, ("runs", key), cache) if key in names else None
        for field_metric, claim_key in ((metric, f"tail_ratio_{side}"), ("e2e", f"e2e_tail_ratio_{side}")):
            ratio = (
                recorded.tail_ratio(field_metric)
                if recorded is not None
                else _num(run.get(f"tail_ratio_{field_metric}"))
            )
            if field_metric == metric:
                ratios[side] = ratio
            if ratio is not None and claim_key in claim:
                _compare(problems, "claim", claim_key, claim.get(claim_key), ratio)
        verdicts[side] = _get(run, "diagnosis.verdict")
        activity[side] = _num(run.get("engine_activity_tail", _get(run, "diagnosis.evidence.engine_active_mean_tail")))
        if verdicts[side] is not None and claim.get(f"verdict_{side}") != verdicts[side]:
            problems.append(
                f"claim.verdict_{side} = {str(claim.get(f'verdict_{side}'))[:40]!r}; the run's diagnosis "
                f"says {str(verdicts[side])[:40]!r}"
            )
        if activity[side] is not None:
            _compare(problems, "claim", f"activity_{side}", claim.get(f"activity_{side}"), activity[side])
    _compare(
        problems, "claim", "tail_factor_min", claim.get("tail_factor_min"), TAIL_RATIO_FACTOR, rel=0.0, absolute=0.0
    )
    _compare(
        problems,
        "claim",
        "activity_tolerance",
        claim.get("activity_tolerance"),
        ACTIVITY_TOLERANCE,
        rel=0.0,
        absolute=0.0,
    )
    tg, tb = ratios.get("gated"), ratios.get("baseline")
    factor = tg / tb if tg and tb else None
    if factor is not None:
        _compare(problems, "claim", "tail_factor", claim.get("tail_factor"), factor)
    expected: dict[str, bool] = {}
    if factor is not None:
        expected["tail_grew"] = factor >= TAIL_RATIO_FACTOR
    ag, ab = activity.get("gated"), activity.get("baseline")
    if ag is not None and ab is not None:
        expected["engines_not_busier"] = ag <= ab * (1 + ACTIVITY_TOLERANCE)
    if verdicts.get("gated") is not None and verdicts.get("baseline") is not None:
        expected["diagnosis_right"] = (
            verdicts["gated"] == "coordinator_bottleneck" and verdicts["baseline"] != "coordinator_bottleneck"
        )
    if len(expected) == 3:
        expected["holds"] = all(expected.values())
    else:  # the parts that could not be recomputed must still agree with the claim's own parts
        parts = [claim.get(k) for k in ("tail_grew", "engines_not_busier", "diagnosis_right")]
        expected["holds"] = all(p is True for p in parts)
    for key, value in expected.items():
        if claim.get(key) is not value:
            problems.append(f"claim.{key} = {str(claim.get(key))[:20]}; the numbers give {value}")
    if not problems:
        return []
    return [
        Finding(
            "claim_mismatch",
            f"outputs.claim does not follow from the log: {'; '.join(problems[:4])}.",
            file,
            {"problems": problems[:20]},
        )
    ]


# --------------------------------------------------------------------------------------------
# Requests, hardware, cluster
# --------------------------------------------------------------------------------------------


def _check_sample_fields(data: Mapping[str, Any], table: _Table, rubric: Rubric, file: str) -> list[Finding]:
    c = table.cols
    tick(table.n)
    ok = [i for i in range(table.n) if c["status"][i] == "ok" and c["warmup"][i] is not True]
    if len(ok) < 10:
        return []
    bare = [
        i
        for i in ok
        if c["first_token_s"][i] is None or c["last_token_s"][i] is None or _num(c["output_tokens"][i]) is None
    ]
    if not bare or len(bare) > 0.1 * len(ok):
        return []  # none, or a log whose server streams no first token at all
    return [
        Finding(
            "sample_fields_missing",
            f"{len(bare)} of {len(ok)} successful requests (rows {bare[:5]}) have no first-token time or token "
            "count, unlike the others: a failed request does not have them, a success does.",
            file,
            {"rows": bare[:20]},
        )
    ]


def _gpu_readings(outputs: Mapping[str, Any]) -> int | None:
    """The most GPUs any of the run's own GPU readings mention (memory after deploy, utilization)."""
    counts = []
    memory = _list(outputs.get("gpu_memory_after_deploy"))
    if memory:
        counts.append(len({str(_get(g, "index")) for g in memory if isinstance(g, dict)}))
    for row in list(_dict(outputs.get("table")).values())[:100]:
        util = _get(row, "gpu_util_mean_percent")
        if isinstance(util, dict):
            counts.append(len(util))
    return max(counts) if counts else None


def _check_hardware(data: Mapping[str, Any], table: _Table, rubric: Rubric, file: str) -> list[Finding]:
    hw = _dict(_get(data, "environment.hardware"))
    gpus = [g for g in _list(hw.get("gpus"))[:1000] if isinstance(g, dict)]
    problems: list[str] = []
    if gpus:
        if hw.get("gpu_source") not in ("nvml", "nvidia-smi"):
            problems.append(f"{len(gpus)} GPUs listed but gpu_source is {str(hw.get('gpu_source'))[:20]!r}")
        if not hw.get("gpu_driver_version"):
            problems.append(f"{len(gpus)} GPUs listed but no GPU driver version")
        indices = [g.get("index") for g in gpus]
        if len(set(map(str, indices))) != len(indices):
            problems.append(f"GPU indices repeat: {indices[:10]}")
        torch = _get(data, "environment.packages.torch")
        if isinstance(torch, str) and torch.endswith("+cpu") and str(_get(data, "constraints.backend")) == "gpu":
            problems.append(f"a GPU run with the CPU build of torch ({torch[:30]})")
    count = _num(_get(data, "constraints.gpu_count"))
    if count is not None and count != len(gpus) and not _get(data, "parameters.gpu_count"):
        problems.append(f"constraints.gpu_count = {count:g} but {len(gpus)} GPUs are listed")
    seen = _gpu_readings(_dict(_get(data, "outputs")))
    if seen is not None and gpus and seen < len(gpus):
        problems.append(f"{len(gpus)} GPUs listed but the run's own GPU readings show {seen}")
    if not problems:
        return []
    return [
        Finding(
            "hardware_inconsistent",
            f"The recorded hardware contradicts itself: {'; '.join(problems[:4])}.",
            file,
            {"problems": problems},
        )
    ]


def _check_cluster(data: Mapping[str, Any], table: _Table, rubric: Rubric, file: str) -> list[Finding]:
    cluster = _dict(_get(data, "cluster"))
    nodes = [n for n in _list(cluster.get("nodes")) if isinstance(n, dict)]
    tick(len(nodes))
    if not nodes:
        return []
    problems: list[str] = []
    ids = [str(n.get("node_id"))[:80] for n in nodes]
    repeated = sorted(k for k, v in Counter(ids).items() if v > 1)
    if repeated:
        problems.append(f"node ids repeat: {repeated[:3]}")
    heads = sum(1 for n in nodes if n.get("is_head") is True)
    if heads != 1 and cluster.get("source") in ("describe", "ray"):
        problems.append(f"{heads} head nodes (a Ray cluster has exactly one)")
    alive = sum(1 for n in nodes if n.get("alive", True) is not False)
    count = _num(cluster.get("node_count"))
    if count is not None and count != alive:
        problems.append(f"node_count = {count:g} but {alive} alive nodes are listed")
    details = _num(_get(cluster, "details.num_nodes"))
    if details is not None and count is not None and details != count:
        problems.append(f"node_count = {count:g} but the cluster was started with num_nodes = {details:g}")
    names: Counter[str] = Counter()
    for n in nodes:
        if isinstance(n.get("name"), str):
            names[n["name"]] += 1
        for key, label in _dict(n.get("labels")).items():
            if str(key).startswith("labkit") and isinstance(label, str):
                names[f"{key}={label}"] += 1
    twins = sorted(k for k, v in names.items() if v > 1)
    if twins:
        problems.append(f"node names repeat: {twins[:3]} (the kit names each node once)")
    served = {str(x)[:80] for x in _list(_get(data, "samples.requests.nodes"))[:10_000] if x}
    unknown = sorted(served - set(ids))
    if unknown and cluster.get("source") in ("describe", "ray"):
        problems.append(f"requests were served by node(s) {unknown[:2]} that are not in cluster.nodes")
    if not problems:
        return []
    return [
        Finding(
            "cluster_inconsistent",
            f"The recorded cluster contradicts itself: {'; '.join(problems[:4])}.",
            file,
            {"problems": problems},
        )
    ]


# --------------------------------------------------------------------------------------------
# outputs.placement: where each replica's ranks ran
# --------------------------------------------------------------------------------------------


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**6 else None


def placement_problems(placement: Mapping[str, Any], cluster_ids: set[str] | None) -> list[str]:
    """What is wrong with an ``outputs.placement`` record; empty when every rule holds.

    Rules: each replica has ``tensor_parallel_size x pipeline_parallel_size`` ranks with
    distinct ``rank`` and ``(tp_rank, pp_rank)``; the ranks of one ``pp_rank`` (a TP group) share
    one node; with ``pipeline_parallel_size > 1`` the stages sit on at least two nodes; every
    node id is one of the log's ``cluster.nodes`` (when the cluster is recorded).
    """
    tp, pp = _int(placement.get("tensor_parallel_size")), _int(placement.get("pipeline_parallel_size"))
    if not tp or not pp:
        return [
            f"tensor_parallel_size = {str(placement.get('tensor_parallel_size'))[:20]}, pipeline_parallel_size = "
            f"{str(placement.get('pipeline_parallel_size'))[:20]}: both must be integers >= 1"
        ]
    replicas = _list(placement.get("replicas"))
    if not replicas:
        return ["no replicas listed"]
    problems: list[str] = []
    tick(len(replicas))
    for number, replica in enumerate(replicas[:1000]):
        if not isinstance(replica, dict):
            problems.append(f"replica #{number} is not an object")
            continue
        rid = str(replica.get("replica_id", f"#{number}"))[:40]
        ranks = [r for r in _list(replica.get("ranks"))[: 4 * tp * pp + 4] if isinstance(r, dict)]
        if len(ranks) != tp * pp:
            problems.append(f"replica {rid} has {len(ranks)} ranks; TP {tp} x PP {pp} needs {tp * pp}")
        numbers = [r.get("rank") for r in ranks]
        if len({str(x) for x in numbers}) != len(numbers):
            problems.append(f"replica {rid}: rank numbers repeat {numbers[:8]}")
        pairs = [(r.get("tp_rank"), r.get("pp_rank")) for r in ranks]
        if len({str(p) for p in pairs}) != len(pairs):
            problems.append(f"replica {rid}: (tp_rank, pp_rank) pairs repeat")
        stages: dict[int, set[str]] = {}
        unknown = 0
        for r in ranks:
            t, p = _int(r.get("tp_rank")), _int(r.get("pp_rank"))
            node = str(r.get("node_id") or "")[:80]
            if t is None or p is None or t >= tp or p >= pp:
                problems.append(
                    f"replica {rid}: rank {str(r.get('rank'))[:10]} has tp_rank {str(r.get('tp_rank'))[:10]}, "
                    f"pp_rank {str(r.get('pp_rank'))[:10]} outside TP {tp} x PP {pp}"
                )
                continue
            if not node:
                unknown += 1  # the kit records the replica's node when a rank's own is unknown
                continue
            stages.setdefault(p, set()).add(node)
            if cluster_ids is not None and node not in cluster_ids:
                problems.append(
                    f"replica {rid}: rank {str(r.get('rank'))[:10]} ran on node {node[:16]}, not in cluster.nodes"
                )
        for p, on in sorted(stages.items()):
            if len(on) > 1:
                problems.append(
                    f"replica {rid}: the TP group of pp_rank {p} is split over nodes "
                    f"{sorted(x[:16] for x in on)} (tensor parallel ranks must share a node)"
                )
        if pp > 1 and stages:
            distinct = set().union(*stages.values())
            if len(distinct) < 2:
                problems.append(
                    f"replica {rid}: all {pp} pipeline stages ran on one node {sorted(x[:16] for x in distinct)} "
                    "(pipeline parallelism across nodes needs at least 2)"
                )
        if unknown:
            problems.append(f"replica {rid}: {unknown} rank(s) with no node id, so where they ran is not shown")
        replica_node = replica.get("node_id")
        if cluster_ids is not None and replica_node and str(replica_node)[:80] not in cluster_ids:
            problems.append(f"replica {rid} ran on node {str(replica_node)[:16]}, not in cluster.nodes")
    return problems


def _check_placement(data: Mapping[str, Any], table: _Table, rubric: Rubric, file: str) -> list[Finding]:
    placement = _get(data, "outputs.placement")
    if not isinstance(placement, dict) or "replicas" not in placement:
        return []  # absent, or the older placement plan (bundles and strategy) that has no ranks
    nodes = [n for n in _list(_get(data, "cluster.nodes")) if isinstance(n, dict)]
    ids = {str(n.get("node_id"))[:80] for n in nodes} if nodes else None
    problems = placement_problems(placement, ids)
    for key in ("tensor_parallel_size", "pipeline_parallel_size"):
        given = _get(data, f"parameters.{key}")
        if _int(given) is not None and _int(placement.get(key)) is not None and given != placement.get(key):
            problems.append(f"parameters.{key} = {given} but the placement has {placement.get(key)}")
    if not problems:
        return []
    return [
        Finding(
            "placement_wrong",
            f"outputs.placement breaks {len(problems)} rule(s): {'; '.join(problems[:4])}.",
            file,
            {"problems": problems[:20]},
        )
    ]
