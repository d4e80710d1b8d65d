"""Checks across logs: identical logs and raw samples shared between learners.

Owns: :class:`Fingerprint`, the small summary of one log that the checks across logs need
(hashes of its raw samples and summaries, a bounded sketch of its sample keys), made by
:func:`fingerprint` while the log is in memory, and ``_cross_checks``, which compares the
fingerprints: ``identical_log`` (raw samples or summaries identical to another learner's) and
``copied_samples`` (most raw latency samples shared with another learner's log).

A fingerprint holds at most ``_SKETCH`` sample keys whatever the log's size, so grading a class
holds one log at a time plus a few kilobytes per log. Comparing them is one sort of all keys,
not a comparison of every pair of logs.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from labkit.grade.budget import tick
from labkit.grade.loader import LoadedLog, _dict, _get, _Table, _table
from labkit.grade.rubric import Finding, Rubric
from labkit.record import canonical_json

__all__: list[str] = []  # used by labkit.grade.scoring; nothing public

_SKETCH = 1024  # sample keys kept per log (the smallest hashes): exact up to this many samples
_MAX_SHARERS = 50  # a key found in more logs than this is common, not evidence of a copy
_MASK = (1 << 63) - 1


# --------------------------------------------------------------------------------------------
# Fingerprints of single logs
# --------------------------------------------------------------------------------------------


def _sample_keys(data: Mapping[str, Any] | _Table) -> set[tuple[int, int]]:
    """(e2e, ttft) of each successful request, in whole microseconds, from the actual send time."""
    c = (data if isinstance(data, _Table) else _table(data)).cols
    keys = set()
    tick(len(c["status"]))
    for status, sent, first, done in zip(c["status"], c["sent_s"], c["first_token_s"], c["done_s"], strict=False):
        if status == "ok" and sent is not None and done is not None:
            e2e = done - sent
            ttft = -1e-6 if first is None else first - sent
            if abs(e2e) < 1e9 and abs(ttft) < 1e9:  # a wild value (1e303) has no microseconds to compare
                keys.add((round(e2e * 1e6), round(ttft * 1e6)))
    return keys


@dataclass
class Fingerprint:
    """What the checks across logs need from one log, without the log."""

    learner: str
    file: str
    parts: dict[str, str] = field(default_factory=dict)
    sketch: Any = None  # numpy int64 array, sorted: the smallest hashes of the sample keys
    key_count: int = 0


def fingerprint(loaded: LoadedLog) -> Fingerprint | None:
    """Summarize one usable log for the checks across logs; None for a file that is not a log."""
    if loaded.data is None or loaded.data.get("_unusable"):
        return None
    data = loaded.data
    fp = Fingerprint(loaded.identity[0], loaded.file)
    # Raw samples compared without their wall-clock anchor, which a copier can re-date.
    columns = _dict(_get(data, "samples.requests.columns"))
    series = _dict(_get(data, "samples.series"))
    parts = {
        "raw samples": [columns, series] if loaded.table.n or series else None,
        "summaries": _dict(_get(data, "outputs.summaries")) or None,
    }
    for part, value in parts.items():
        if value is not None:
            fp.parts[part] = hashlib.sha256(canonical_json(value)).hexdigest()
    import numpy as np  # lazy, as everywhere in the grader

    keys = _sample_keys(loaded.table)
    fp.key_count = len(keys)
    fp.sketch = np.asarray(heapq.nsmallest(_SKETCH, (hash(k) & _MASK for k in keys)), dtype=np.int64)
    return fp


# --------------------------------------------------------------------------------------------
# Checks across logs
# --------------------------------------------------------------------------------------------


def _shared_estimate(a: Fingerprint, b: Fingerprint, common: int) -> tuple[float, float]:
    """(shared keys, shared fraction of the smaller log), exact when both sketches are whole sets."""
    import numpy as np

    if a.key_count <= _SKETCH and b.key_count <= _SKETCH:
        return float(common), common / max(1, min(a.key_count, b.key_count))
    union = np.union1d(a.sketch, b.sketch)[:_SKETCH]
    both = np.intersect1d(np.intersect1d(a.sketch, b.sketch), union).size
    jaccard = both / max(1, union.size)
    shared = jaccard * (a.key_count + b.key_count) / (1 + jaccard)
    return shared, shared / max(1, min(a.key_count, b.key_count))


def _cross_checks(
    fps: Sequence[Fingerprint | None], rubric: Rubric, guard: Callable[[Sequence[int], Callable[[], None]], None]
) -> dict[int, list[Finding]]:
    """Compare the fingerprints of a class; findings by position in ``fps``.

    ``guard(indices, step)`` runs one step and turns an exception into a finding on those files.
    """
    extra: dict[int, list[Finding]] = defaultdict(list)
    usable = [(i, fp) for i, fp in enumerate(fps) if fp is not None]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, fp in usable:
        for part, digest in fp.parts.items():
            groups[part + ":" + digest].append(i)
    identical_pairs: set[tuple[int, int]] = set()
    for key, members in groups.items():

        def flag_identical(key: str = key, members: list[int] = members) -> None:
            learners = {fps[i].learner for i in members}
            if len(learners) < 2:
                return
            for i in members:
                others = sorted({fps[j].learner for j in members if fps[j].learner != fps[i].learner})
                identical_pairs.update((i, j) for j in members)
                extra[i].append(
                    Finding(
                        "identical_log",
                        f"{key.split(':')[0]} identical to the log(s) of {', '.join(others)[:200]}.",
                        fps[i].file,
                        {"others": others[:20]},
                    )
                )

        guard(members, flag_identical)
    rules = rubric["copy_detection"]
    minimum = rules["min_shared_samples"]
    common: dict[tuple[int, int], int] = defaultdict(int)
    indexed = [(i, fp) for i, fp in usable if fp.key_count >= minimum and fp.sketch is not None and fp.sketch.size]
    if indexed:
        import numpy as np

        hashes = np.concatenate([fp.sketch for _, fp in indexed])
        owner = np.concatenate([np.full(fp.sketch.size, i, dtype=np.int64) for i, fp in indexed])
        order = np.argsort(hashes, kind="stable")
        hashes, owner = hashes[order], owner[order]
        bounds = np.flatnonzero(np.diff(hashes)) + 1
        starts = np.concatenate(([0], bounds))
        ends = np.concatenate((bounds, [hashes.size]))
        shared_keys = np.flatnonzero((ends - starts > 1) & (ends - starts <= _MAX_SHARERS))
        for g in shared_keys:
            members = sorted(set(owner[starts[g] : ends[g]].tolist()))
            for x, a in enumerate(members):
                for b in members[x + 1 :]:
                    if fps[a].learner != fps[b].learner:
                        common[(a, b)] += 1
    for (a, b), count in sorted(common.items()):

        def flag_copied(a: int = a, b: int = b, count: int = count) -> None:
            shared, fraction = _shared_estimate(fps[a], fps[b], count)
            if shared < minimum or fraction < rules["min_shared_fraction"] or (a, b) in identical_pairs:
                return
            for me, other in ((a, b), (b, a)):
                extra[me].append(
                    Finding(
                        "copied_samples",
                        f"{math.floor(shared)} raw samples ({fraction:.0%}) also appear in "
                        f"{fps[other].learner}'s log {fps[other].file}.",
                        fps[me].file,
                        {"other_learner": fps[other].learner, "shared": math.floor(shared)},
                    )
                )

        guard((a, b), flag_copied)
    return extra
