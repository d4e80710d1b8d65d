"""Checks across logs: one run handed in by two learners, verbatim or perturbed.

Owns: :class:`Fingerprint`, the small summary of one log that the checks across logs need
(hashes of its raw samples and summaries, a bounded sketch of its sample keys, the shape of its
first requests' latencies in order, hashes of its run-unique values, the learner ids it names),
made by :func:`fingerprint` while the log is in memory, and ``_cross_checks``, which compares
the fingerprints (``identical_log``, ``copied_samples``, ``copied_shape``,
``shared_run_values``, ``copy_source``).

A fingerprint holds a few kilobytes whatever the log's size, so grading a class holds one log at
a time plus the fingerprints. Comparing them is one sort of all hashes and a few blocked matrix
products of the shapes, not a loop over every pair of logs.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from labkit.grade.budget import tick
from labkit.grade.loader import LoadedLog, _dict, _get, _list, _num, _Table, _table
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


_SHAPE = 40  # requests in order compared by shape (a copy with its times scaled or jittered)
_SHIFT = 4  # requests a copy may have dropped or added at the start
_MAX_TOKENS = 512  # run-unique values kept per log
_TOKEN_SHARE = 0.05  # a value found in more than this share of learners (and 3) is common, not evidence
_HEX = re.compile(r"^[0-9a-f]{16,64}$")


@dataclass
class Fingerprint:
    """What the checks across logs need from one log, without the log."""

    learner: str
    file: str
    parts: dict[str, str] = field(default_factory=dict)
    sketch: Any = None  # numpy int64 array, sorted: the smallest hashes of the sample keys
    key_count: int = 0
    shape: Any = None  # numpy float64: log(done - sent) of the first successful requests, in order
    tpot: Any = None  # numpy float64: time per output token of the same requests (nan where unknown)
    tokens: Any = None  # numpy int64: hashes of run-unique values (replica ids, precise timings)
    mentions: dict[str, str] = field(default_factory=dict)  # learner ids the log names -> where


def _shape(table: _Table) -> tuple[Any, Any]:
    """log(e2e from the send) and tpot of the first successful measured requests, by scheduled time."""
    import numpy as np

    c = table.cols
    tick(table.n)
    rows = [
        i
        for i in range(table.n)
        if c["status"][i] == "ok" and c["warmup"][i] is not True and c["scheduled_s"][i] is not None
    ]
    rows = heapq.nsmallest(_SHAPE + _SHIFT, rows, key=lambda i: (c["scheduled_s"][i], i))
    e2e, tpot = [], []
    for i in rows:
        sent, done, first, last = c["sent_s"][i], c["done_s"][i], c["first_token_s"][i], c["last_token_s"][i]
        tokens = _num(c["output_tokens"][i])
        span = done - sent if sent is not None and done is not None else None
        e2e.append(math.log(span) if span is not None and 1e-9 < span < 1e9 else math.nan)
        ok = first is not None and last is not None and tokens is not None and 2 <= tokens < 1e9
        step = (last - first) / (tokens - 1) if ok and tokens is not None else None  # ok implies tokens
        tpot.append(step if step is not None and 0 < step < 1e9 else math.nan)
    if len(e2e) < _SHAPE or not all(math.isfinite(v) for v in e2e):
        return None, None
    return np.asarray(e2e, dtype=np.float64), np.asarray(tpot, dtype=np.float64)


def _is_simple(x: float) -> bool:
    """A round number or a small fraction (1/3 of replicas), which independent runs share."""
    return any(abs(x * k - round(x * k)) < 1e-9 * max(1.0, abs(x * k)) for k in range(1, 65))


def _run_tokens(data: Mapping[str, Any]) -> set[str]:
    """Values only this run can have: its log id, replica and actor ids, timings to 12 digits.

    Node ids are left out (learners may share a cluster), and so are process ids (containers
    start them at the same small numbers).
    """
    tokens: set[str] = set()
    log_id = data.get("log_id")
    if isinstance(log_id, str):
        tokens.add("log_id:" + log_id[:64])
    for replica in _list(_get(data, "samples.requests.replicas"))[:1000]:
        if isinstance(replica, str) and len(replica) >= 6:
            tokens.add("replica:" + replica[:80])
    node_ids = {str(n.get("node_id")) for n in _list(_get(data, "cluster.nodes"))[:1000] if isinstance(n, dict)}
    stack: list[tuple[Any, str]] = [(_get(data, "outputs"), "")]
    seen = 0
    while stack and seen < 20_000:
        value, key = stack.pop()
        seen += 1
        if isinstance(value, dict):
            stack.extend((v, str(k)) for k, v in list(value.items())[:500])
            stack.extend((k, "") for k in list(value)[:500] if isinstance(k, str))
        elif isinstance(value, list):
            stack.extend((v, key) for v in value[:500])
        elif isinstance(value, float) and math.isfinite(value) and value != 0:
            digits = len(repr(abs(value)).replace(".", "").lstrip("0").split("e")[0])
            if digits >= 12 and not _is_simple(value):
                tokens.add("float:" + repr(value))
        elif (
            isinstance(value, str)
            and value not in node_ids
            and (_HEX.match(value) or key in ("replica_id", "actor_id", "replica"))
        ):
            tokens.add("id:" + value[:80])
    tick(seen)
    return tokens


def _mentions(loaded: LoadedLog) -> dict[str, str]:
    """Learner ids the log names besides its learner_id: where a copier forgets to edit."""
    data = loaded.data or {}
    out: dict[str, str] = {}
    for where in ("parameters.learner_id", "papermill.injected_parameters.learner_id"):
        value = _get(data, where)
        if isinstance(value, str) and value.strip():
            out.setdefault(value[:200], where)
    for part in loaded.file.replace("\\", "/").split("/"):
        for piece in part.removesuffix(".json").split("--"):
            if piece:
                out.setdefault(piece[:200], "its file name")
    return out


def fingerprint(loaded: LoadedLog) -> Fingerprint | None:
    """Summarize one usable log for the checks across logs; None for a file that is not a log."""
    if loaded.data is None or loaded.data.get("_unusable"):
        return None
    import numpy as np  # lazy, as everywhere in the grader

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
    keys = _sample_keys(loaded.table)
    fp.key_count = len(keys)
    fp.sketch = np.asarray(heapq.nsmallest(_SKETCH, (hash(k) & _MASK for k in keys)), dtype=np.int64)
    fp.shape, fp.tpot = _shape(loaded.table)
    tokens = _run_tokens(data)
    hashed = (int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "big") >> 1 for t in tokens)
    fp.tokens = np.unique(np.asarray(heapq.nsmallest(_MAX_TOKENS, hashed), dtype=np.int64))
    fp.mentions = _mentions(loaded)
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


def _common_pairs(fps: Sequence[Fingerprint | None], arrays: dict[int, Any], max_sharers: int) -> dict:
    """{(a, b): number of hashes both arrays hold} for learners a != b; one sort of all hashes."""
    import numpy as np

    common: dict[tuple[int, int], int] = defaultdict(int)
    items = [(i, arr) for i, arr in arrays.items() if arr is not None and arr.size]
    if not items:
        return common
    hashes = np.concatenate([arr for _, arr in items])
    owner = np.concatenate([np.full(arr.size, i, dtype=np.int64) for i, arr in items])
    order = np.argsort(hashes, kind="stable")
    hashes, owner = hashes[order], owner[order]
    bounds = np.flatnonzero(np.diff(hashes)) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [hashes.size]))
    for g in np.flatnonzero(ends - starts > 1):
        members = sorted(set(owner[starts[g] : ends[g]].tolist()))
        if len({fps[m].learner for m in members}) > max_sharers:
            continue  # common to many learners (a shared cluster, a round number): not evidence
        tick(len(members) ** 2)
        for x, a in enumerate(members):
            for b in members[x + 1 :]:
                if fps[a].learner != fps[b].learner:
                    common[(a, b)] += 1
    return common


def _normalized(rows: Any) -> Any:
    import numpy as np

    centered = rows - rows.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centered, axis=1, keepdims=True)
    return np.divide(centered, norms, out=np.zeros_like(centered), where=norms > 1e-12)


def _correlation(x: Any, y: Any) -> float | None:
    import numpy as np

    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < _SHAPE // 2:
        return None
    x, y = x[keep] - x[keep].mean(), y[keep] - y[keep].mean()
    denominator = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y) / denominator if denominator > 1e-12 else None


def _shape_pairs(fps: Sequence[Fingerprint | None], threshold: float) -> dict[tuple[int, int], tuple[float, int]]:
    """Pairs whose first requests' latencies follow each other in order: {(a, b): (correlation, shift)}."""
    import numpy as np

    present = {i: fp for i, fp in enumerate(fps) if fp is not None}  # the indices below are all here
    index = [i for i, fp in enumerate(fps) if fp is not None and fp.shape is not None and fp.shape.size >= _SHAPE]
    if len(index) < 2:
        return {}
    first = _normalized(np.stack([present[i].shape[:_SHAPE] for i in index]))
    found: dict[tuple[int, int], tuple[float, int]] = {}
    for shift in range(_SHIFT + 1):
        have = [k for k, i in enumerate(index) if present[i].shape.size >= _SHAPE + shift]
        later = _normalized(np.stack([present[index[k]].shape[shift : shift + _SHAPE] for k in have]))
        for start in range(0, len(index), 256):  # blocks: memory stays small for thousands of logs
            tick(256 * len(have))
            scores = first[start : start + 256] @ later.T
            for r, c in zip(*np.nonzero(scores >= threshold), strict=True):
                a, b = index[start + r], index[have[c]]
                if a == b or present[a].learner == present[b].learner:
                    continue
                key = (min(a, b), max(a, b))
                if key not in found or scores[r, c] > found[key][0]:
                    found[key] = (float(scores[r, c]), shift if a < b else -shift)
    confirmed = {}
    for (a, b), (score, shift) in found.items():
        x, y = (present[a].tpot, present[b].tpot) if shift >= 0 else (present[b].tpot, present[a].tpot)
        k = abs(shift)
        tpot = _correlation(x[:_SHAPE], y[k : k + _SHAPE])
        if tpot is None or tpot >= threshold - 0.05:  # the decode steps follow too, where both have them
            confirmed[(a, b)] = (score, shift)
    return confirmed


_STRENGTH = {"identical_log": 0, "copied_samples": 1, "copied_shape": 2, "shared_run_values": 3}


def _cross_checks(
    fps: Sequence[Fingerprint | None], rubric: Rubric, guard: Callable[[Sequence[int], Callable[[], None]], None]
) -> dict[int, list[Finding]]:
    """Compare the fingerprints of a class; findings by position in ``fps``.

    Evidence that two learners' logs come from one run, strongest first: identical raw samples
    or summaries (``identical_log``), most sample keys shared to the microsecond
    (``copied_samples``), the first requests' latencies following each other in order when
    times were scaled or jittered (``copied_shape``), run-unique values shared (replica ids,
    the log id, timings to 12 digits: ``shared_run_values``, which also covers logs without
    samples). When one of the two logs names the other learner (its parameters, papermill's
    injected parameters or its file name still say so), that log is the copy and the other
    learner gets an informational ``copy_source`` instead; otherwise both are flagged.

    ``guard(indices, step)`` runs one step and turns an exception into a finding on those files.
    """
    extra: dict[int, list[Finding]] = defaultdict(list)
    usable = [(i, fp) for i, fp in enumerate(fps) if fp is not None]
    present = dict(usable)  # every index compared below is a usable one
    learners = len({fp.learner for _, fp in usable})
    evidence: dict[tuple[int, int], dict[str, str]] = defaultdict(dict)

    def note(a: int, b: int, code: str, text: str) -> None:
        if present[a].learner != present[b].learner:
            evidence[(min(a, b), max(a, b))].setdefault(code, text)

    groups: dict[str, list[int]] = defaultdict(list)
    for i, fp in usable:
        for part, digest in fp.parts.items():
            groups[part + ":" + digest].append(i)

    def exact() -> None:
        for key, members in groups.items():
            for x, a in enumerate(members[:200]):
                for b in members[x + 1 : 200]:
                    note(a, b, "identical_log", f"its {key.split(':')[0]} are identical")

    rules = rubric["copy_detection"]
    minimum = rules["min_shared_samples"]

    def samples() -> None:
        sketches = {i: fp.sketch for i, fp in usable if fp.key_count >= minimum}
        for (a, b), count in sorted(_common_pairs(fps, sketches, _MAX_SHARERS).items()):
            shared, fraction = _shared_estimate(present[a], present[b], count)
            if shared >= minimum and fraction >= rules["min_shared_fraction"]:
                note(a, b, "copied_samples", f"{math.floor(shared)} raw samples ({fraction:.0%}) are the same")

    def shapes() -> None:
        for (a, b), (score, shift) in sorted(_shape_pairs(fps, rules["min_shape_correlation"]).items()):
            moved = f", {abs(shift)} request(s) apart" if shift else ""
            note(
                a,
                b,
                "copied_shape",
                f"its first {_SHAPE} requests' latencies follow the other's in order (correlation {score:.4f}"
                f"{moved}): an independent run does not repeat another's sequence",
            )

    def tokens() -> None:
        arrays = {i: fp.tokens for i, fp in usable}
        sharers = max(3, math.ceil(_TOKEN_SHARE * learners))
        for (a, b), count in sorted(_common_pairs(fps, arrays, sharers).items()):
            smaller = min(present[a].tokens.size, present[b].tokens.size)
            if count >= rules["min_shared_run_values"] and count >= rules["min_shared_fraction"] * smaller:
                note(a, b, "shared_run_values", f"{count} run-unique values (replica ids, timings to 12 digits) match")

    everyone = [i for i, _ in usable]
    for step in (exact, samples, shapes, tokens):
        guard(everyone, step)
    for (a, b), found in sorted(evidence.items()):

        def report(a: int = a, b: int = b, found: dict[str, str] = found) -> None:
            code = min(found, key=_STRENGTH.__getitem__)
            why = "; ".join(found[c] for c in sorted(found, key=_STRENGTH.__getitem__))
            names = {i: present[i].learner for i in (a, b)}
            copier = None
            a_names_b = names[b] in present[a].mentions
            b_names_a = names[a] in present[b].mentions
            if a_names_b != b_names_a:
                copier = a if a_names_b else b
            for me, other in ((a, b), (b, a)):
                if copier is not None and me != copier:
                    where = present[copier].mentions.get(names[me], "")
                    extra[me].append(
                        Finding(
                            "copy_source",
                            f"{names[other]}'s log {present[other].file} copies this one ({why}); it still names "
                            f"{names[me]} in {where}, so it is the copy. Not held against this learner.",
                            present[me].file,
                            {"copy": present[other].file, "other_learner": names[other]},
                        )
                    )
                    continue
                if copier == me:
                    where = present[me].mentions.get(names[other], "")
                    blame = f" This log still names {names[other]} in {where}: it is the copy."
                else:
                    blame = " The grader cannot tell who copied whom: compare the two learners' notebooks."
                extra[me].append(
                    Finding(
                        code,
                        f"Same run as {names[other]}'s log {present[other].file}: {why}.{blame}",
                        present[me].file,
                        {"other_learner": names[other], "evidence": sorted(found)},
                    )
                )

        guard((a, b), report)
    return extra
