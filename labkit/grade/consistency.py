"""Consistency checks of one log against its own raw samples: percentiles and times.

Owns: :func:`recompute_metric` (the metrics of :mod:`labkit.stats`, recomputed from a log's
columns), the search for the summaries anywhere under ``outputs`` and the check that their
percentiles and counts follow from the raw samples (``_check_summaries``), and the check of
timestamps, durations and per-request time order (``_check_times``).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from labkit.grade.budget import tick
from labkit.grade.loader import _TIME_COLUMNS, _dict, _get, _list, _num, _Table, _table, _time
from labkit.grade.rubric import Finding, Rubric

__all__ = ["recompute_metric"]


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


def _is_recomputable(metric: str, series: Mapping[str, Any]) -> bool:
    """Say whether :func:`recompute_metric` knows a metric (without computing anything)."""
    if metric in series:
        return True
    key = _normalize_metric(metric)
    return key in _SPANS or key == "tpot"


def recompute_metric(
    table: _Table | Mapping[str, Any],
    metric: str,
    series: Mapping[str, Any] | None = None,
    rows: Sequence[int] | None = None,
) -> dict[str, list[float]] | None:
    """Return a metric's raw values under each request selection labkit.stats may have used.

    Definitions follow :mod:`labkit.stats`: ``e2e`` / ``ttft`` from the intended send,
    ``*_uncorrected`` from the actual send, ``tpot`` per request, ``schedule_lag``; a failed
    request counts as ``max(timeout_s or the slowest success, its measured time)``. The cost is
    linear in the number of rows selected.

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
        values = _list(series[metric])
        tick(len(values))
        return {"series": [v for v in (_num(x) for x in values) if v is not None]}
    key = _normalize_metric(metric)
    if key not in _SPANS and key != "tpot":
        return None
    c = table.cols
    status, warmup = c["status"], c["warmup"]
    chosen: Sequence[int] = range(table.n) if rows is None else rows
    tick(2 * len(chosen))
    out: dict[str, list[float]] = {}
    for with_warmup in (False, True):
        picked = [i for i in chosen if with_warmup or warmup[i] is not True]
        tag = "+warmup" if with_warmup else ""
        if key == "tpot":
            values = []
            for i in picked:
                first, last, tokens = c["first_token_s"][i], c["last_token_s"][i], _num(c["output_tokens"][i])
                if status[i] == "ok" and first is not None and last is not None and tokens is not None and tokens >= 2:
                    values.append((last - first) / (tokens - 1))
            out["ok" + tag] = values
            continue
        start, end = (c[k] for k in _SPANS[key])
        good = [end[i] - start[i] for i in picked if status[i] == "ok" and start[i] is not None and end[i] is not None]
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
            if status[i] == "ok" or c["done_s"][i] is None or base[i] is None:
                continue
            measured = c["done_s"][i] - base[i]
            floor = _num(c["timeout_s"][i])
            floor = worst if floor is None else floor
            values.append(measured if floor is None else max(floor, measured))
        out["with_failures" + tag] = values
    return out


_PCT_KEY = re.compile(r"^[pP]?[0-9]+(?:[._][0-9]+)?(?:_s|_ms)?$", re.ASCII)
_DECIMAL = re.compile(r"^[0-9]+(?:\.[0-9]+)?$", re.ASCII)
_MAX_PERCENTILES = 64  # a summary of labkit.stats has 5; more keys than this are not read


def _percentile_key(key: str) -> float | None:
    if len(key) > 24 or not _PCT_KEY.match(key):
        return None
    text = key.lower().removeprefix("p").removesuffix("_ms").removesuffix("_s").replace("_", ".")
    if "." not in text and len(text) >= 3 and text.startswith("99"):
        text = "99." + text[2:]  # p999 -> 99.9
    q = float(text)
    return q if 0 <= q <= 100 else None


def _parse_percentiles(source: Any, scale: float) -> tuple[dict[float, float], list[str]]:
    """``{"p50": v, "p99.9": v}`` (or ``{"50": v}``, fractions, ``[{"q", "value"}]``) -> {q: seconds}.

    Also returns the keys that are not percentiles (``q50``, ``median``) or whose value is
    not a number: a summary's percentiles that the grader cannot read are findings, not
    silently skipped.
    """
    unknown: list[str] = []
    if isinstance(source, list):
        tick(len(source))
        pairs = {}
        for item in source[:_MAX_PERCENTILES]:
            if isinstance(item, dict):
                pairs[str(item.get("q", item.get("percentile")))[:40]] = item.get("value")
            else:
                unknown.append(repr(item)[:40])
        source = pairs
    if not isinstance(source, dict):
        return {}, ([] if source is None else [repr(source)[:40]])
    tick(len(source))
    numeric = [k for k in list(source)[:_MAX_PERCENTILES] if _DECIMAL.match(k)]
    fractions = bool(numeric) and all(float(k) <= 1 for k in numeric) and any("." in k for k in numeric)
    out: dict[float, float] = {}
    for n, (key, value) in enumerate(source.items()):
        if n >= _MAX_PERCENTILES:
            unknown.append(f"... {len(source) - n} more keys")
            break
        q = float(key) * 100 if fractions and key in numeric else _percentile_key(key)
        if isinstance(value, dict):
            value = value.get("value", value.get("estimate"))
        v = _num(value)
        if q is None or (v is None and value is not None):
            unknown.append(key[:40])
        elif v is not None:
            out[q] = v * scale * (1e-3 if key.lower().endswith("_ms") else 1.0)
    return out, unknown


def _read_percentiles(source: Any, scale: float) -> dict[float, float]:
    """The percentiles of :func:`_parse_percentiles`, unknown keys left out."""
    return _parse_percentiles(source, scale)[0]


def _looks_like_percentiles(value: Mapping[str, Any]) -> bool:
    return any(_percentile_key(k) is not None for k in list(value)[:_MAX_PERCENTILES])


def _iter_summaries(tree: Mapping[str, Any], prefix: str = "", depth: int = 0) -> Iterable[tuple[str, dict]]:
    """Yield (path, summary) for every latency summary anywhere under ``outputs``.

    A summary is an object with ``percentiles`` or ``ok_percentiles`` (``LatencySummary.to_dict()``,
    also inside a ``RunSummary``), an object with a string ``metric`` and percentile keys, or an
    object of percentiles directly under a ``summaries`` key.
    """
    tick(len(tree))
    for name, value in tree.items():
        if not isinstance(value, dict):
            continue
        path = f"{prefix}{name}"
        explicit = "percentiles" in value or "ok_percentiles" in value
        if explicit or (
            (isinstance(value.get("metric"), str) or prefix.endswith("summaries.")) and _looks_like_percentiles(value)
        ):
            yield path, value
        elif depth < 6:
            yield from _iter_summaries(value, path + ".", depth + 1)


def _sorted_percentile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile of sorted values (numpy's default method)."""
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _matches(reported: Mapping[float, float], ordered: Sequence[float], tol: Mapping[str, float]) -> dict:
    """Return the reported percentiles that the (sorted) values do not reproduce."""
    diffs = {}
    for q in sorted(reported):
        value = reported[q]
        recomputed = _sorted_percentile(ordered, q) if len(ordered) else None
        if recomputed is None or abs(value - recomputed) > tol["percentile_abs_s"] + tol["percentile_rel"] * abs(
            recomputed
        ):
            diffs[f"p{q:g}"] = {"reported": value, "recomputed": recomputed}
    return diffs


_MAX_BLOCKS = 16  # run starts tried when several runs came as one list of records
_MAX_BLOCK_SIZES = 4  # distinct run sizes (a summary's "requests") tried as blocks
_MAX_BLOCK_ROWS = 4  # rows of all blocks tried per metric, as a multiple of the log's rows


def _block_starts(table: _Table, order: list[int]) -> list[int]:
    """Positions in ``order`` (non-warm-up rows by scheduled time) where a run may begin.

    A run begins after warm-up requests or after a gap much longer than the typical gap
    between requests. Linear after one sort; at most ``_MAX_BLOCKS`` starts.
    """
    c = table.cols
    tick(3 * table.n)
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
    return sorted(starts)[:_MAX_BLOCKS]


@dataclass
class _Summary:
    """One summary found under ``outputs``, parsed, with the request sets it may describe."""

    name: str
    metric: str
    groups: dict[str, dict[float, float]]
    count: float | None
    candidates: list[tuple[Any, ...]]
    source: Mapping[str, Any]
    first_miss: dict[str, Any] | None = None
    resolved: bool = False


def _candidates(table: _Table, name: str, summary: Mapping[str, Any], blocks: list[int] | None) -> list[tuple]:
    """The request sets a summary may describe: all, its run, each run, or a block of one run.

    Keys: ``("all",)``, ``("run", index)``, ``("block", start, size)``.
    """
    parts = set(name.split("."))
    for k, run in enumerate(table.runs):
        if run and run in parts:
            return [("run", k)]
    out: list[tuple] = [("all",)]
    out += [("run", k) for k in range(len(table.runs))]
    size = _num(summary.get("requests"))
    if blocks is not None and size and 0 < size < table.n:
        out += [("block", s, int(size)) for s in blocks]
    return out


def _candidate_label(table: _Table, key: tuple) -> str:
    if key[0] == "all":
        return "all requests"
    if key[0] == "run":
        return f"run {table.runs[key[1]]!r}"
    return f"requests {key[1]}..{key[1] + key[2] - 1}"


def _check_summaries(data: Mapping[str, Any], table: _Table, rubric: Rubric, file: str) -> list[Finding]:
    """Check that every summary's percentiles and count follow from the raw samples.

    Candidate request sets are evaluated once per metric (in candidate-major order) and each
    selection is sorted once, so the cost is linear in (samples x metrics), not in
    (samples x summaries x runs).
    """
    tol = rubric["tolerances"]
    max_summaries = int(rubric["limits"]["max_summaries"])
    series = _dict(_get(data, "samples.series"))
    findings: list[Finding] = []
    parsed: list[_Summary] = []
    order: list[int] | None = None
    blocks: list[int] | None = None
    for number, (path, summary) in enumerate(_iter_summaries(_dict(_get(data, "outputs")), "outputs.")):
        if number >= max_summaries:
            findings.append(
                Finding(
                    "too_many_summaries",
                    f"More than limits.max_summaries={max_summaries} summaries under outputs; the rest were "
                    "not checked. A kit log has a few dozen; raise the limit in a rubric copy if this one is genuine.",
                    file,
                )
            )
            break
        name = path.removeprefix("outputs.")
        unit = str(summary.get("unit", "s"))[:20].lower()
        scale = 1e-3 if unit in ("ms", "millisecond", "milliseconds") else 1.0
        top = {k: v for k, v in summary.items() if k not in ("percentiles", "ok_percentiles")}
        top_read, _top_unknown = _parse_percentiles(top, scale)
        pct, unknown = _parse_percentiles(summary.get("percentiles"), scale)
        ok_pct, ok_unknown = _parse_percentiles(summary.get("ok_percentiles"), scale)
        bad_keys = [*unknown, *ok_unknown]
        if bad_keys:
            findings.append(
                Finding(
                    "unknown_percentile_key",
                    f"Summary '{name[:80]}': keys {bad_keys[:5]} are not percentiles the grader can read "
                    "(labkit.stats writes p50, p90, p95, p99, p99.9 with numbers); they were not checked.",
                    file,
                    {"summary": name, "keys": bad_keys[:20]},
                )
            )
        groups = {"percentiles": {**top_read, **pct}, "ok_percentiles": ok_pct}
        groups = {k: v for k, v in groups.items() if v}
        if not groups:
            continue
        metric = cast(str, summary.get("metric")) if isinstance(summary.get("metric"), str) else name.rsplit(".", 1)[-1]
        if not _is_recomputable(metric, series):
            known = _normalize_metric(metric) == "itl"
            findings.append(
                Finding(
                    "summary_unverifiable" if known else "unknown_summary_metric",
                    f"Summary '{name[:80]}': metric {metric[:80]!r} cannot be recomputed from the raw samples"
                    + (
                        ""
                        if known
                        else " (labkit.stats metrics: e2e, e2e_uncorrected, ttft, ttft_uncorrected, "
                        "tpot, itl, schedule_lag)"
                    )
                    + ".",
                    file,
                )
            )
            continue
        parsed.append(_Summary(name, metric, groups, _num(summary.get("count")), [], summary))
    if not table.runs and any(_num(p.source.get("requests")) for p in parsed):
        order = sorted(
            (
                i
                for i in range(table.n)
                if table.cols["warmup"][i] is not True and table.cols["scheduled_s"][i] is not None
            ),
            key=lambda i: table.cols["scheduled_s"][i],
        )
        blocks = _block_starts(table, order)
    sizes: set[int] = set()
    for item in parsed:
        size = _num(item.source.get("requests"))
        if size and len(sizes) < _MAX_BLOCK_SIZES:
            sizes.add(int(size))
        use = blocks if size and int(size) in sizes else None
        item.candidates = [("series",)] if item.metric in series else _candidates(table, item.name, item.source, use)
        item.source = {}
    by_metric: dict[str, list[_Summary]] = {}
    for item in parsed:
        by_metric.setdefault(item.metric if item.metric in series else _normalize_metric(item.metric), []).append(item)
    for metric, members in by_metric.items():
        universe: set[tuple] = set()
        for item in members:
            universe.update(item.candidates)
        rank = {"series": 0, "all": 0, "run": 1, "block": 2}
        block_rows = 0
        for key in sorted(universe, key=lambda k: (rank[k[0]], *k[1:])):
            waiting = [m for m in members if not m.resolved and key in m.candidates]
            tick(len(members))
            if not waiting:
                continue
            if key[0] == "block":
                block_rows += key[2]
                if block_rows > _MAX_BLOCK_ROWS * max(table.n, 1):
                    continue  # blocks are a guess at run bounds: a few tries, not every one
            if key[0] == "series":
                selections = recompute_metric(table, metric, series) or {}
            else:
                rows = None if key[0] == "all" else table.rows_of_run(key[1]) if key[0] == "run" else None
                if key[0] == "block":
                    rows = (order or [])[key[1] : key[1] + key[2]]
                selections = recompute_metric(table, metric, series, rows=rows) or {}
            ordered = {}
            for sel, values in selections.items():
                tick(len(values))
                ordered[sel] = sorted(values)
            label = "series" if key[0] == "series" else _candidate_label(table, key)
            for item in waiting:
                _evaluate(item, ordered, tol, label)
    for item in parsed:
        if item.resolved or item.first_miss is None:
            continue
        findings.append(_summary_finding(item, file))
    return findings


def _evaluate(item: _Summary, ordered: Mapping[str, Sequence[float]], tol: Mapping[str, float], label: str) -> None:
    """Test one summary against one request set's selections; remember its first miss."""
    misses = {}
    for group, reported in item.groups.items():
        per_selection = {sel: _matches(reported, vals, tol) for sel, vals in ordered.items()}
        fits = [sel for sel, diffs in per_selection.items() if not diffs]
        if not fits:
            sel = "ok" if group == "ok_percentiles" else "with_failures"
            sel = sel if sel in per_selection else next(iter(per_selection), "")
            misses[group] = (sel, len(ordered.get(sel, ())), per_selection.get(sel, {}))
        elif group == "percentiles" and item.count is not None:
            sizes = {len(ordered[sel]) for sel in fits}
            if int(item.count) not in sizes:
                misses["count"] = (fits[0], len(ordered[fits[0]]), {})
    if not misses:
        item.resolved = True
    elif item.first_miss is None:
        item.first_miss = {"rows": label, "misses": misses}


def _summary_finding(item: _Summary, file: str) -> Finding:
    misses = item.first_miss["misses"] if item.first_miss else {}
    name, metric = item.name, item.metric
    if set(misses) == {"count"}:
        return Finding(
            "count_mismatch",
            f"Summary '{name[:80]}' says count={item.count:g}; its percentiles fit {misses['count'][1]} raw samples.",
            file,
            {"count": item.count},
        )
    group = "percentiles" if "percentiles" in misses else "ok_percentiles"
    sel, size, diffs = misses[group]
    label, diff = next(iter(diffs.items()), ("?", {"reported": None, "recomputed": None}))
    rows = cast("dict[str, Any]", item.first_miss)["rows"]  # set: only items with a miss come here
    return Finding(
        "percentile_mismatch",
        f"Summary '{name[:80]}' ({metric[:40]}): {group} {label} reported {diff['reported']!r}; "
        f"the {size} raw samples ({rows}) give {diff['recomputed']!r}.",
        file,
        {"summary": name, "group": group, "rows": rows, "differences": diffs},
    )


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
    tick(2 * len(_TIME_COLUMNS) * table.n)
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
        if t0 is not None and offset is not None and (offset < -slack or offset + span > run_s + slack):
            findings.append(
                Finding(
                    "samples_outside_run",
                    f"The samples start at {t0.isoformat()}, outside "
                    f"the run {started.isoformat()} .. {finished.isoformat()}.",
                    file,
                )
            )
    return findings
