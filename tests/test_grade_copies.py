"""Copies under perturbation: one learner's run handed in by another, with small changes.

``COPIES`` lists every variant tried with the finding that must catch it (or none, with the
reason); genuine logs, including runs that share an arrival schedule (the notebooks' default
seed), must not be flagged.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from _grade_fixtures import GEN, rehash

from labkit.grade import grade_directory
from labkit.record import build_log

ROOT = Path(__file__).resolve().parents[1]
NOW = dt.datetime(2025, 6, 1, tzinfo=dt.timezone.utc)


EXERCISE = "02_multinode_serving"


def _original() -> list:
    return GEN.records(1, 200, ttft_s=0.030, tpot_s=0.008)


ALICE = GEN.make("alice", EXERCISE, _original())


def _perturbed(change: Callable[[list], list]) -> dict:
    """mallory's log rebuilt with the kit from alice's records after change (summaries recomputed)."""
    return GEN.make("mallory", EXERCISE, change(copy.deepcopy(_original())))


def _times(r: object, f: Callable[[float], float]) -> None:
    for key in ("scheduled_s", "sent_s", "first_token_s", "last_token_s", "done_s"):
        value = getattr(r, key)
        if value is not None:
            setattr(r, key, f(value))


def _scale(recs: list, factor: float) -> list:
    for r in recs:
        _times(r, lambda t: 1000 + (t - 1000) * factor)
    return recs


def _done_plus_1us(recs: list) -> list:
    for r in recs:
        r.done_s += 1e-6
    return recs


def _noise(recs: list, seed: int = 5, size: float = 1e-3) -> list:
    rng = random.Random(seed)
    for r in recs:
        _times(r, lambda t: t + rng.uniform(-size, size))
        r.sent_s = max(r.sent_s, r.scheduled_s)
        if r.first_token_s is not None:
            r.first_token_s = max(r.first_token_s, r.sent_s)
            r.last_token_s = max(r.last_token_s, r.first_token_s)
            r.done_s = max(r.done_s, r.last_token_s)
        r.done_s = max(r.done_s, r.sent_s)
    return recs


def _verbatim(rename_everywhere: bool) -> dict:
    data = copy.deepcopy(ALICE)
    data["learner_id"] = "mallory"
    if rename_everywhere:
        data["parameters"]["learner_id"] = "mallory"
        data["log_id"] = "e" * 32
    return rehash(data)


def _reordered_noisy() -> dict:
    """The middle of the run shuffled and jittered: the order the shape check reads is gone."""

    def change(recs: list) -> list:
        recs = _noise(recs, seed=9)
        middle = recs[2:120]
        random.Random(3).shuffle(middle)
        times = sorted((r.scheduled_s, r.sent_s) for r in middle)
        for r, (scheduled, sent) in zip(middle, times, strict=True):
            shift = sent - r.sent_s
            r.scheduled_s, r.sent_s = scheduled, sent
            r.done_s += shift
            if r.first_token_s is not None:
                r.first_token_s += shift
                r.last_token_s += shift
        return recs[:2] + middle + recs[120:]

    return _perturbed(change)


def _walkthrough(learner: str, deploy_s: float, replicas: tuple[str, ...], seed: int) -> dict:
    """A chapter-walkthrough log: answers and replicas, no raw samples."""
    rng = random.Random(seed)
    nodes = [n["node_id"] for n in GEN.cluster(2)["nodes"]]
    answers = [
        {
            "prompt": f"prompt {k}",
            "text": " a city of bytes.",
            "node_id": nodes[k % 2],
            "replica_id": replicas[k % 2],
            "server_s": rng.uniform(0.05, 0.2),
        }
        for k in range(8)
    ]
    outputs = {
        "summaries": {},
        "generations": [],
        "answers": answers,
        "answers_per_node": {nodes[0]: 4, nodes[1]: 4},
        "deploy_s": deploy_s,
        "replicas": [{"replica_id": r, "node_id": nodes[k]} for k, r in enumerate(replicas)],
    }
    return build_log(
        "chapter-walkthrough",
        environment=GEN.CPU_ENV,
        learner_id=learner,
        outputs=outputs,
        cluster=GEN.cluster(2),
        model="org/tiny",
        parameters={"learner_id": learner, "num_replicas": 2},
        started_at=GEN.START,
        finished_at=GEN.START + dt.timedelta(minutes=2),
        papermill={"detected": False, "injected_parameters": {}},
        kit=GEN.KIT,
        environ={},
    )


def _walkthrough_copy() -> dict:
    data = _walkthrough("alice", 41.2345678901234, ("oryfchw1", "qzk83mda"), 1)
    data["learner_id"] = "mallory"
    data["parameters"]["learner_id"] = "mallory"
    data["outputs"]["deploy_s"] *= 1.01
    data["log_id"] = "d" * 32
    return rehash(data)


# (name, the copy's log, findings that must flag it; empty: not caught, with the reason)
COPIES: list[tuple[str, Callable[[], dict], set[str]]] = [
    ("verbatim, learner_id renamed", lambda: _verbatim(False), {"identical_log"}),
    ("verbatim, renamed everywhere, new log id", lambda: _verbatim(True), {"identical_log"}),
    ("every time x1.01, rebuilt", lambda: _perturbed(lambda r: _scale(r, 1.01)), {"copied_shape"}),
    ("every time x0.97, rebuilt", lambda: _perturbed(lambda r: _scale(r, 0.97)), {"copied_shape"}),
    ("done +1 us, rebuilt", lambda: _perturbed(_done_plus_1us), {"copied_shape"}),
    ("1 ms noise on every time, rebuilt", lambda: _perturbed(_noise), {"copied_shape"}),
    ("3 ms noise on every time, rebuilt", lambda: _perturbed(lambda r: _noise(r, size=3e-3)), {"copied_shape"}),
    # 5 ms of noise on requests of ~30-300 ms takes the correlation to ~0.89, under the 0.98 kept
    # so that independent runs of one schedule are never flagged.
    ("5 ms noise on every time, rebuilt", lambda: _perturbed(lambda r: _noise(r, size=5e-3)), set()),
    ("first 3 requests dropped, 1 ms noise", lambda: _perturbed(lambda r: _noise(r[3:])), {"copied_shape"}),
    ("first 120 requests x1.01 and new ones after", lambda: _perturbed(
        lambda r: _scale(r[:120], 1.01) + GEN.records(8, 200, ttft_s=0.03, tpot_s=0.008)[120:]), {"copied_shape"}),
    ("walkthrough without samples, renamed, deploy_s x1.01", _walkthrough_copy, {"shared_run_values"}),
    # Shuffling the middle of the run and jittering every time leaves neither the microseconds
    # nor the order the checks compare; only the first requests' shape remains, too few to tell.
    ("middle shuffled and 1 ms noise", _reordered_noisy, set()),
]  # fmt: skip


@pytest.mark.timeout(120)  # hang guard
@pytest.mark.parametrize(("name", "build", "expected"), COPIES, ids=[c[0] for c in COPIES])
def test_copy_variants(name: str, build: Callable[[], dict], expected: set[str], tmp_path: Path) -> None:
    original = _walkthrough("alice", 41.2345678901234, ("oryfchw1", "qzk83mda"), 1) if "walk" in name else ALICE
    (tmp_path / "alice.json").write_text(json.dumps(original))
    (tmp_path / "mallory.json").write_text(json.dumps(build()))
    book = grade_directory(tmp_path, now=NOW)
    found = {f.code for f in book.findings if f.file == "mallory.json" and f.severity != "info"}
    if expected:
        assert found & expected, (name, found)
        assert {r.learner_id: r.score for r in book.rows}["mallory"] == 0
    else:
        assert not found & {"identical_log", "copied_samples", "copied_shape", "shared_run_values"}, (name, found)


def test_the_copy_that_names_its_source_spares_the_source(tmp_path: Path) -> None:
    (tmp_path / "alice.json").write_text(json.dumps(ALICE))
    (tmp_path / "mallory.json").write_text(json.dumps(_verbatim(False)))  # still says learner alice inside
    book = grade_directory(tmp_path, now=NOW)
    rows = {r.learner_id: r for r in book.rows}
    assert rows["alice"].score == 100 and rows["alice"].flags == ()
    assert rows["mallory"].score == 0 and "identical_log" in rows["mallory"].flags
    source = [f for f in book.findings if f.code == "copy_source"]
    assert len(source) == 1 and source[0].file == "alice.json" and "mallory" in source[0].message
    (tmp_path / "mallory.json").write_text(json.dumps(_verbatim(True)))  # nothing says who copied
    rows = {r.learner_id: r for r in grade_directory(tmp_path, now=NOW).rows}
    assert rows["alice"].score == 0 and rows["mallory"].score == 0


@pytest.mark.timeout(300)
def test_independent_runs_are_never_flagged_even_with_one_schedule(tmp_path: Path) -> None:
    """Forty learners: twenty with their own seeds, twenty sharing one arrival schedule."""
    schedule = GEN.records(77, 200, ttft_s=0.03, tpot_s=0.008)
    for k in range(20):
        (tmp_path / f"own{k}.json").write_text(
            json.dumps(GEN.make(f"own{k}", EXERCISE, GEN.records(300 + k, 200, ttft_s=0.03, tpot_s=0.008)))
        )
        fresh = GEN.records(400 + k, 200, ttft_s=0.03, tpot_s=0.008)
        for r, s in zip(fresh, schedule, strict=True):  # the default seed: the same arrivals for everyone
            shift = s.sent_s - r.sent_s
            r.scheduled_s, r.sent_s, r.done_s = s.scheduled_s, s.sent_s, r.done_s + shift
            if r.first_token_s is not None:
                r.first_token_s, r.last_token_s = r.first_token_s + shift, r.last_token_s + shift
        (tmp_path / f"same{k}.json").write_text(json.dumps(GEN.make(f"same{k}", EXERCISE, fresh)))
    for k in range(5):
        replicas = (f"rep{k:05d}a", f"rep{k:05d}b")
        walk = _walkthrough(f"walk{k}", 40.0 + random.Random(k).random(), replicas, k)
        (tmp_path / f"walk{k}.json").write_text(json.dumps(walk))
    book = grade_directory(tmp_path, now=NOW)
    assert [(r.learner_id, r.flags) for r in book.rows if r.flags] == []
