"""Consistent forgeries: logs edited, their summaries recomputed and their hash fixed.

Each variant is what a learner who reads the kit can do in a few minutes. The grader must flag
the ones its checks cover (the test names the finding) and must not flag genuine logs;
``FORGERIES`` lists every variant tried with the findings that catch it, or none where a
self-run log cannot show the edit (verification/README.md says which and why).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from _grade_fixtures import ALICE, GEN, cpu_log, rehash

from labkit.grade import grade_directory, verify_logs
from labkit.load import RequestRecord
from labkit.stats import summarize_run

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "verification" / "reference"
NOW = dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc)
GPU_LOG = REFERENCE / "gpu" / "2gpu-20261127" / "gpu-load-exercise--reference-gpu--20261127T125223Z--a4081245.json"


BOB = json.loads((REFERENCE / "good/bob--02_multinode_serving_gpu.json").read_text())
CAROL = json.loads((REFERENCE / "good/carol--01_local_smoke.json").read_text())
GPU = json.loads(GPU_LOG.read_text())


def codes(data: dict, tmp_path: Path, name: str = "x.json") -> set[str]:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return {f.code for f in verify_logs([path], now=NOW)[path.as_posix()] if f.severity != "info"}


# ------------------------------------------------------------------------------------------ helpers


def _records(data: dict, run: int | None = None) -> list[RequestRecord]:
    """The log's requests as RequestRecords (what a forger feeds labkit.stats)."""
    req = data["samples"]["requests"]
    c = req["columns"]
    out = []
    for i in range(len(c["status"])):
        if run is not None and c["run"][i] != run:
            continue
        node = c["node"][i]
        out.append(
            RequestRecord(
                request_id=f"r{i}",
                scheduled_s=c["scheduled_s"][i],
                sent_s=c["sent_s"][i],
                done_s=c["done_s"][i],
                status=c["status"][i],
                warmup=c["warmup"][i],
                first_token_s=c["first_token_s"][i],
                last_token_s=c["last_token_s"][i],
                output_tokens=c["output_tokens"][i],
                prompt_tokens=c["prompt_tokens"][i],
                node_id=req["nodes"][node] if node is not None else None,
                timeout_s=c["timeout_s"][i],
            )
        )
    return out


def _scale_latencies(data: dict, factor: float) -> dict:
    """Every time after the send multiplied by factor (the schedule kept), to the microsecond."""
    data = copy.deepcopy(data)
    c = data["samples"]["requests"]["columns"]
    for i, sent in enumerate(c["sent_s"]):
        for key in ("first_token_s", "last_token_s", "done_s"):
            if c[key][i] is not None:
                c[key][i] = round(sent + (c[key][i] - sent) * factor, 6)
    return data


def _resummarize_gpu(data: dict) -> dict:
    """Recompute every outputs.runs.<run>.summary with labkit.stats, as a careful forger would."""
    runs = data["samples"]["requests"]["runs"]
    for k, name in enumerate(runs):
        entry = data["outputs"]["runs"][name]
        summary = summarize_run(_records(data, k), offered_rate_rps=entry["summary"]["offered_rate_rps"], ci=False)
        entry["summary"] = json.loads(json.dumps(summary.to_dict()))
    return data


def _gpu_thorough(data: dict) -> dict:
    """Also the diagnosis percentiles, the table and the tail ratios, from the new summaries."""
    for name, entry in data["outputs"]["runs"].items():
        metrics = entry["summary"]["metrics"]
        evidence = entry["diagnosis"]["evidence"]
        row = data["outputs"]["table"].get(name, {})
        for metric in ("e2e", "ttft"):
            ok = metrics[metric]["ok_percentiles"]
            for q in (50, 95, 99):
                evidence[f"{metric}_p{q}_s"] = ok[f"p{q}"]
                row[f"{metric}_p{q}_s"] = ok[f"p{q}"]
        for key in ("output_tokens_per_s", "throughput_rps"):
            row[key] = entry["summary"][key]
    return data


def _alice_scaled(factor: float) -> dict:
    recs = GEN.records(1, 200, ttft_s=0.030, tpot_s=0.008)
    for r in recs:
        if r.first_token_s is not None:
            r.first_token_s = r.sent_s + (r.first_token_s - r.sent_s) * factor
            r.last_token_s = r.sent_s + (r.last_token_s - r.sent_s) * factor
        r.done_s = r.sent_s + (r.done_s - r.sent_s) * factor
    return GEN.make("alice", "02_multinode_serving", recs)


def _flip_failures(data: dict, fabricate: bool) -> dict:
    data = copy.deepcopy(data)
    c = data["samples"]["requests"]["columns"]
    for i, status in enumerate(c["status"]):
        if status != "ok":
            c["status"][i] = "ok"
            if fabricate:  # invent a first token and a token count inside the failure's time
                c["first_token_s"][i] = round(c["sent_s"][i] + 0.001, 6)
                c["last_token_s"][i] = round(c["done_s"][i] - 0.0002, 6)
                c["output_tokens"][i] = 32
    recs = [r for r in _records(data) if not r.warmup]
    for metric, base, end in (("e2e", "scheduled_s", "done_s"), ("e2e_uncorrected", "sent_s", "done_s")):
        values = [getattr(r, end) - getattr(r, base) for r in recs]
        summary = data["outputs"]["summaries"][metric]
        summary.update(count=len(values), errors=0, error_rate=0.0, mean=sum(values) / len(values))
        summary["percentiles"] = {f"p{q:g}": GEN.percentile(values, q) for q in (50, 90, 95, 99, 99.9)}
        summary["ok_percentiles"] = dict(summary["percentiles"])
    ttft = [r.first_token_s - r.scheduled_s for r in recs if r.first_token_s is not None]
    summary = data["outputs"]["summaries"]["ttft"]
    summary["ok_percentiles"] = {f"p{q:g}": GEN.percentile(ttft, q) for q in (50, 90, 95, 99, 99.9)}
    summary["percentiles"] = dict(summary["ok_percentiles"])
    summary.update(count=len(ttft), errors=0, error_rate=0.0)
    return rehash(data)


def _eight_gpus(data: dict, constraints: bool) -> dict:
    data = copy.deepcopy(data)
    name = data["environment"]["hardware"]["gpus"][0]["name"]
    memory = data["environment"]["hardware"]["gpus"][0]["memory_total_bytes"]
    data["environment"]["hardware"]["gpus"] = [
        {"index": i, "name": name, "memory_total_bytes": memory} for i in range(8)
    ]
    if constraints:
        data["constraints"]["gpu_count"] = 8
    return rehash(data)


def _cpu_to_gpu(data: dict) -> dict:
    """A CPU log given eight GPUs, a driver, a source and a GPU backend."""
    data = copy.deepcopy(data)
    hw = data["environment"]["hardware"]
    hw["gpus"] = [{"index": i, "name": "NVIDIA H100 80GB HBM3", "memory_total_bytes": 80 * 2**30} for i in range(8)]
    hw.update(gpu_driver_version="570.86.15", cuda_version="12.8", gpu_source="nvml")
    data["constraints"].update(gpu_count=8, backend="gpu")
    return rehash(data)


def _append_node(data: dict, careful: bool) -> dict:
    data = copy.deepcopy(data)
    nodes = data["cluster"]["nodes"]
    extra = copy.deepcopy(nodes[0])
    extra["node_id"] = "ab" * 28
    if careful:
        extra["is_head"] = False
        extra["labels"] = {k: f"{v}-2" for k, v in extra["labels"].items()}
        if "name" in extra:
            extra["name"] = "worker-9"
    nodes.append(extra)
    data["cluster"]["node_count"] = len(nodes)
    data["constraints"]["cluster_nodes"] = len(nodes)
    return rehash(data)


def _claim_edit(data: dict, key: str, value: object) -> dict:
    data = copy.deepcopy(data)
    data["outputs"]["claim"][key] = value
    return rehash(data)


def _claim_recomputed(data: dict) -> dict:
    """The baseline's tail ratio doubled in the claim and in its run, factor and verdict recomputed."""
    data = copy.deepcopy(data)
    claim = data["outputs"]["claim"]
    claim["tail_ratio_gated"] = claim["tail_ratio_gated"] / 3
    data["outputs"]["runs"]["gated-4rps"]["tail_ratio_ttft"] = claim["tail_ratio_gated"]
    claim["tail_factor"] = claim["tail_ratio_gated"] / claim["tail_ratio_baseline"]
    return rehash(data)


def _rename_percentiles(data: dict) -> dict:
    data = copy.deepcopy(data)
    for summary in data["outputs"]["summaries"].values():
        summary["percentiles"] = {k.replace("p", "q"): v for k, v in summary["percentiles"].items()}
    return rehash(data)


# (name, build, findings that must catch it; empty: not caught, with the reason in a comment)
FORGERIES: list[tuple[str, Callable[[], dict], set[str]]] = [
    ("gpu latencies x0.1, run summaries recomputed", lambda: rehash(_resummarize_gpu(_scale_latencies(GPU, 0.1))),
     {"derived_value_mismatch", "latency_contradicts_telemetry", "latency_below_hardware_floor"}),
    ("gpu latencies x0.1, every derived number recomputed",
     lambda: rehash(_gpu_thorough(_resummarize_gpu(_scale_latencies(GPU, 0.1)))),
     {"latency_contradicts_telemetry", "latency_below_hardware_floor"}),
    # Halved latencies stay above the floor and within the telemetry check's slack (activity up to
    # twice the requests in flight, plus one, is accepted: telemetry windows and warm-ups blur it).
    ("gpu latencies x0.5, every derived number recomputed",
     lambda: rehash(_gpu_thorough(_resummarize_gpu(_scale_latencies(GPU, 0.5)))), set()),
    # A synthetic CPU log of a tiny model x0.1 (28 ms requests) stays above any sound CPU floor
    # and carries no telemetry: only a re-run shows it (README: what a self-run log cannot prove).
    ("cpu tiny-model latencies x0.1, rebuilt with the kit", lambda: _alice_scaled(0.1), set()),
    ("cpu tiny-model latencies x0.01, rebuilt with the kit", lambda: _alice_scaled(0.01),
     {"latency_below_hardware_floor"}),
    ("failures flipped to ok, summaries recomputed", lambda: _flip_failures(ALICE, fabricate=False),
     {"sample_fields_missing"}),
    # With first tokens and token counts invented inside a 4 ms failure, 4 requests of 200 beat the
    # floor: under max_fraction_too_fast (5%), so the floor does not flag them.
    ("failures flipped to ok with invented tokens", lambda: _flip_failures(ALICE, fabricate=True), set()),
    ("gpu hardware edited to 8 GPUs", lambda: _eight_gpus(GPU, constraints=False), {"hardware_inconsistent"}),
    ("gpu hardware and constraints edited to 8 GPUs", lambda: _eight_gpus(GPU, constraints=True),
     {"hardware_inconsistent"}),
    ("synthetic gpu log edited to 8 GPUs", lambda: _eight_gpus(BOB, constraints=False), {"hardware_inconsistent"}),
    # bob's log has no GPU readings of its own and a cluster that may hold fewer GPUs than the box.
    ("synthetic gpu log and constraints edited to 8 GPUs", lambda: _eight_gpus(BOB, constraints=True), set()),
    ("cpu log given 8 GPUs, driver, source and a GPU backend", lambda: _cpu_to_gpu(ALICE),
     {"hardware_inconsistent"}),
    ("second node appended (copy of the first)", lambda: _append_node(CAROL, careful=False),
     {"cluster_inconsistent"}),
    ("second node appended to the gpu log, new id, not head", lambda: _append_node(GPU, careful=True),
     {"cluster_inconsistent"}),
    # A synthetic log's cluster came as a dict (no head flags, no start config): a careful copy passes.
    ("second node appended to a dict cluster, new id and labels", lambda: _append_node(CAROL, careful=True), set()),
    ("claim.holds edited", lambda: _claim_edit(GPU, "holds", False), {"claim_mismatch"}),
    ("claim.tail_ratio_baseline edited", lambda: _claim_edit(GPU, "tail_ratio_baseline", 1.0), {"claim_mismatch"}),
    ("claim.verdict_baseline edited", lambda: _claim_edit(GPU, "verdict_baseline", "coordinator_bottleneck"),
     {"claim_mismatch"}),
    ("claim and run tail ratio edited, factor recomputed", lambda: _claim_recomputed(GPU),
     {"claim_mismatch", "derived_value_mismatch"}),
    ("percentile keys renamed p50 -> q50", lambda: _rename_percentiles(ALICE), {"unknown_percentile_key"}),
    ("too fast (heidi)", lambda: json.loads((REFERENCE / "bad/heidi--too_fast.json").read_text()),
     {"latency_below_hardware_floor"}),
]  # fmt: skip


@pytest.mark.timeout(300)  # hang guard
@pytest.mark.parametrize(("name", "build", "expected"), FORGERIES, ids=[f[0] for f in FORGERIES])
def test_forgery_variants(name: str, build: Callable[[], dict], expected: set[str], tmp_path: Path) -> None:
    found = codes(build(), tmp_path)
    if expected:
        assert found & expected, (name, found)
        assert "hash_mismatch" not in found  # the forger fixed the hash: the finding is the check's
    else:  # documented as not caught: the test keeps the documentation honest
        assert not found - {"timestamp_in_future"}, (name, found)


def test_genuine_logs_pass_every_new_check(tmp_path: Path) -> None:
    assert codes(GPU, tmp_path, "gpu.json") == set()
    for data in (ALICE, BOB, CAROL):
        assert codes(data, tmp_path, "x.json") == set()


def test_a_genuine_experiment_claim_passes_and_an_edited_one_fails(tmp_path: Path) -> None:
    """A notebook-02 shaped log: two runs, their RunSummary, diagnosis and the claim of labkit.experiment."""
    from labkit.experiment import ACTIVITY_TOLERANCE, TAIL_RATIO_FACTOR

    runs = {}
    for name, seed, ttft in (("distributed", 61, 0.02), ("gated", 62, 0.08)):
        recs = GEN.records(seed, 150, ttft_s=ttft, tpot_s=0.005)
        if name == "gated":
            for k, r in enumerate(recs):
                shift = 60 + (0.5 if k % 20 == 0 else 0.0)  # a few requests wait at the coordinator
                r.scheduled_s, r.sent_s = r.scheduled_s + 60, r.sent_s + 60
                if r.first_token_s is not None:
                    r.first_token_s, r.last_token_s = r.first_token_s + shift, r.last_token_s + shift
                r.done_s += shift
        runs[name] = recs
    outputs: dict = {"runs": {}}
    ratios = {}
    for name, recs in runs.items():
        summary = summarize_run(recs, ci=False)
        p = summary.metrics["ttft"].percentiles
        ratios[name] = p["p99"] / p["p50"]
        verdict = "coordinator_bottleneck" if name == "gated" else "healthy"
        outputs["runs"][name] = {
            "name": name,
            "tail_ratio_ttft": ratios[name],
            "engine_activity_tail": 1.0,
            "summary": summary.to_dict(),
            "diagnosis": {"verdict": verdict, "evidence": {"n_requests": summary.requests, "n_ok": summary.ok}},
        }
    factor = ratios["gated"] / ratios["distributed"]
    outputs["claim"] = {
        "rate_rps": 8.0,
        "metric": "ttft",
        "tail_ratio_gated": ratios["gated"],
        "tail_ratio_baseline": ratios["distributed"],
        "tail_factor": factor,
        "tail_factor_min": TAIL_RATIO_FACTOR,
        "activity_gated": 1.0,
        "activity_baseline": 1.0,
        "activity_tolerance": ACTIVITY_TOLERANCE,
        "verdict_gated": "coordinator_bottleneck",
        "verdict_baseline": "healthy",
        "tail_grew": factor >= TAIL_RATIO_FACTOR,
        "engines_not_busier": True,
        "diagnosis_right": True,
        "holds": factor >= TAIL_RATIO_FACTOR,
    }
    data = cpu_log(
        "load-exercise",
        "yan",
        outputs,
        runs,
        minutes=3,
        last_done_s=max(r.done_s for recs in runs.values() for r in recs),
    )
    assert codes(data, tmp_path) == set()
    assert "claim_mismatch" in codes(_claim_edit(data, "holds", not data["outputs"]["claim"]["holds"]), tmp_path)
    forged = copy.deepcopy(data)
    forged["outputs"]["claim"]["tail_ratio_gated"] *= 3
    forged["outputs"]["claim"]["tail_factor"] *= 3
    forged["outputs"]["claim"]["tail_grew"] = forged["outputs"]["claim"]["holds"] = True
    assert "claim_mismatch" in codes(rehash(forged), tmp_path)


def test_forgeries_graded_in_a_class_lose_their_points(tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / "gpu.json").write_text(json.dumps(GPU))
    forged = rehash(_resummarize_gpu(_scale_latencies(GPU, 0.1)))
    forged["learner_id"] = "mallory"
    (folder / "forged.json").write_text(json.dumps(rehash(forged)))
    rows = {r.learner_id: r for r in grade_directory(folder, now=NOW).rows}
    assert "copied_shape" in rows["mallory"].flags  # beside the run it came from, it is also a copy
    (folder / "gpu.json").unlink()
    row = grade_directory(folder, now=NOW).rows[0]
    assert row.learner_id == "mallory" and row.score <= 50 and row.plausibility == 0.0
