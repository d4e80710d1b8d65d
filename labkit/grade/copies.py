"""Checks across logs: identical logs and raw samples shared between learners.

Owns: ``_cross_checks``, which flags ``identical_log`` (raw samples or summaries identical to
another learner's) and ``copied_samples`` (most raw latency samples shared with another
learner's log), and the sample keys it compares.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from labkit.grade.loader import LoadedLog, _dict, _get, _Table, _table
from labkit.grade.rubric import Finding, Rubric
from labkit.record import canonical_json

__all__: list[str] = []  # used by labkit.grade.scoring; nothing public


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
