"""Foundation figures: cluster start, time to the first answer, deploy time, peak memory.

Run: .venv/bin/python benchmarks/bench_foundation.py  (writes benchmarks/results/foundation.json)
Peak memory is measured two ways, sampled every 0.5 s: the rise of the machine's used memory over
its value before the cluster started (what a learner's machine must have free), and the sum of PSS
(proportional set size: shared pages split between the processes that map them, so the object store
and shared libraries count once) over every process of the kit's Ray session (raylets, GCS, workers,
replicas and their vLLM engine processes). A plain sum of RSS would count shared pages many times.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path


def _session_pss(marker: str) -> int:
    import psutil

    total = 0
    for proc in psutil.process_iter(["cmdline", "name"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            name = proc.info["name"] or ""
            if marker in cmd or name.startswith(("ray::", "raylet", "gcs_server", "VLLM", "EngineCore")):
                total += proc.memory_full_info().pss
        except Exception:  # noqa: BLE001, S112
            continue
    return total


def _used() -> int:
    import psutil

    return psutil.virtual_memory().used


def main() -> None:
    import labkit

    baseline = _used()
    peak = {"pss": 0, "used": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak["pss"] = max(peak["pss"], _session_pss("labkit-ray"))
            peak["used"] = max(peak["used"], _used() - baseline)
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.monotonic()
    with labkit.start_cluster():
        t_cluster = time.monotonic() - t0
        deployment = labkit.deploy(labkit.topology_preset("distributed"))
        t_first = time.monotonic() - t0
        nodes = {deployment.complete(f"q{i}", max_tokens=8)["labkit"]["node_id"] for i in range(10)}
        time.sleep(2)
        steady = _session_pss("labkit-ray")
    stop.set()
    sampler.join()
    result = {
        "cluster_start_s": round(t_cluster, 1),
        "start_to_first_answer_s": round(t_first, 1),
        "deploy_s": round(deployment.deploy_s, 1),
        "nodes_answering": len(nodes),
        "peak_used_memory_rise_gib": round(peak["used"] / 2**30, 2),
        "peak_pss_gib": round(peak["pss"] / 2**30, 2),
        "steady_pss_gib_two_replicas": round(steady / 2**30, 2),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(__file__).parent / "results" / "foundation.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
