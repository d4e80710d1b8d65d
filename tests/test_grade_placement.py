"""outputs.placement: where each replica's tensor- and pipeline-parallel ranks ran."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path

import pytest

from labkit.grade import verify_logs
from labkit.grade.evidence import placement_problems
from labkit.record import compute_log_hash

ROOT = Path(__file__).resolve().parents[1]
NOW = dt.datetime(2025, 6, 1, tzinfo=dt.timezone.utc)
ALICE = json.loads((ROOT / "verification/reference/good/alice--02_multinode_serving.json").read_text())
NODES = [n["node_id"] for n in ALICE["cluster"]["nodes"]]  # two nodes


def placement(tp: int, pp: int, stage_nodes: list[list[str]], replicas: int = 1) -> dict:
    """A placement whose pp_rank p ranks run on stage_nodes[p] (one node per TP rank)."""
    out = []
    for r in range(replicas):
        ranks = []
        for p in range(pp):
            for t in range(tp):
                node = stage_nodes[p][t]
                ranks.append(
                    {
                        "rank": p * tp + t,
                        "tp_rank": t,
                        "pp_rank": p,
                        "node_id": node,
                        "node_name": f"node-{NODES.index(node) if node in NODES else 'x'}",
                        "pid": 1000 + 10 * r + p * tp + t,
                    }
                )
        out.append({"replica_id": f"rep{r}", "node_id": stage_nodes[0][0], "node_name": "n", "ranks": ranks})
    return {"tensor_parallel_size": tp, "pipeline_parallel_size": pp, "source": "ray_state_api", "replicas": out}


A, B = NODES


@pytest.mark.parametrize(
    "good",
    [
        placement(1, 1, [[A]], replicas=2),
        placement(2, 1, [[A, A]]),
        placement(1, 2, [[A], [B]]),
        placement(2, 2, [[A, A], [B, B]], replicas=2),
    ],
)
def test_good_placements_pass(good: dict) -> None:
    assert placement_problems(good, set(NODES)) == []


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (placement(2, 1, [[A, B]]), "TP group of pp_rank 0 is split over nodes"),
        (placement(1, 2, [[A], [A]]), "all 2 pipeline stages ran on one node"),
        (placement(2, 2, [[A, A], [A, A]]), "pipeline stages ran on one node"),
        (placement(1, 2, [[A], ["f" * 56]]), "not in cluster.nodes"),
        ({**placement(2, 1, [[A, A]]), "tensor_parallel_size": 4}, "has 2 ranks; TP 4 x PP 1 needs 4"),
        ({**placement(1, 1, [[A]]), "pipeline_parallel_size": "2"}, "must be integers"),
        ({**placement(1, 1, [[A]]), "replicas": []}, "no replicas"),
    ],
)
def test_bad_placements_name_the_rule_the_rank_and_the_nodes(bad: dict, words: str) -> None:
    problems = placement_problems(bad, set(NODES))
    assert any(words in p for p in problems), problems


def test_the_kits_own_placement_record_passes() -> None:
    """Placement.to_dict() as labkit.serve.ranks writes it: extra keys, source ray_runtime_context."""
    record = placement(1, 2, [[A], [B]])
    record["source"] = "ray_runtime_context"
    record["notes"] = []
    for r in record["replicas"][0]["ranks"]:
        r["process"] = "ray actor"
    assert placement_problems(record, set(NODES)) == []


def test_a_placement_made_by_the_kits_classes_passes_and_its_own_check_agrees() -> None:
    from labkit.serve.ranks import Placement, ReplicaPlacement, check_placement

    ranks = [
        {"rank": p, "tp_rank": 0, "pp_rank": p, "node_id": node, "node_name": f"worker-{p}", "pid": 10 + p,
         "process": "ray actor"}
        for p, node in enumerate((A, B))
    ]  # fmt: skip
    made = Placement(1, 2, [ReplicaPlacement("r1", A, "worker-0", ranks)]).to_dict()
    assert placement_problems(made, set(NODES)) == [] == check_placement(made, set(NODES))
    ranks[1]["node_id"] = A
    split_wrong = Placement(1, 2, [ReplicaPlacement("r1", A, "worker-0", ranks)]).to_dict()
    assert placement_problems(split_wrong, set(NODES)) and check_placement(split_wrong, set(NODES))


def test_a_rank_without_a_node_id_is_named_not_taken_for_a_split() -> None:
    record = placement(2, 1, [[A, A]])
    record["replicas"][0]["ranks"][1]["node_id"] = ""
    problems = placement_problems(record, set(NODES))
    assert problems == ["replica rep0: 1 rank(s) with no node id, so where they ran is not shown"]


def test_repeated_ranks_are_wrong() -> None:
    bad = placement(2, 1, [[A, A]])
    bad["replicas"][0]["ranks"][1]["rank"] = 0
    bad["replicas"][0]["ranks"][1]["tp_rank"] = 0
    problems = placement_problems(bad, set(NODES))
    assert any("rank numbers repeat" in p for p in problems) and any("pairs repeat" in p for p in problems)


def _log_with(place: dict, **parameters: int) -> dict:
    data = copy.deepcopy(ALICE)
    data["outputs"]["placement"] = place
    data["parameters"].update(parameters)
    data["integrity"]["sha256"] = compute_log_hash(data)
    return data


def _codes(data: dict, tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    return {f.code: f.message for f in verify_logs([path], now=NOW)[path.as_posix()]}


def test_the_grader_checks_a_logs_placement(tmp_path: Path) -> None:
    good = _log_with(placement(1, 2, [[A], [B]]), tensor_parallel_size=1, pipeline_parallel_size=2)
    assert "placement_wrong" not in _codes(good, tmp_path)
    one_node = _log_with(placement(1, 2, [[A], [A]]), tensor_parallel_size=1, pipeline_parallel_size=2)
    message = _codes(one_node, tmp_path)["placement_wrong"]
    assert "rep0" in message and A[:16] in message and "pipeline stages" in message
    other = _log_with(placement(2, 1, [[A, A]]), tensor_parallel_size=1)
    assert "parameters.tensor_parallel_size = 1" in _codes(other, tmp_path)["placement_wrong"]


def test_the_older_placement_plan_is_not_checked(tmp_path: Path) -> None:
    plan = {"bundles": [{"CPU": 1.0}], "strategy": "PACK", "explanation": "..."}
    assert "placement_wrong" not in _codes(_log_with(plan), tmp_path)
