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
from typing import Any

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
