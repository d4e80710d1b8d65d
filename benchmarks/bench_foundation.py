"""Foundation figures: cluster start, time to the first answer, deploy time, peak memory.

Run: .venv/bin/python benchmarks/bench_foundation.py  (writes benchmarks/results/foundation.json)
Peak memory is the largest sum of RSS over every process of the kit's Ray session (raylets, GCS,
workers, replicas and their vLLM engine processes), sampled every 0.5 s.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path


def _session_rss(marker: str) -> int:
    import psutil

    total = 0
    for proc in psutil.process_iter(["cmdline", "memory_info", "name"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if marker in cmd or (proc.info["name"] or "").startswith(
                ("ray::", "raylet", "gcs_server", "VLLM", "EngineCore")
            ):
                total += proc.info["memory_info"].rss
        except Exception:  # noqa: BLE001, S112
            continue
    return total


def main() -> None:
    import labkit

    peak = {"bytes": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak["bytes"] = max(peak["bytes"], _session_rss("labkit-ray"))
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
        steady = _session_rss("labkit-ray")
    stop.set()
    sampler.join()
    result = {
        "cluster_start_s": round(t_cluster, 1),
        "start_to_first_answer_s": round(t_first, 1),
        "deploy_s": round(deployment.deploy_s, 1),
        "nodes_answering": len(nodes),
        "peak_rss_gib": round(peak["bytes"] / 2**30, 2),
        "steady_rss_gib_two_replicas": round(steady / 2**30, 2),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(__file__).parent / "results" / "foundation.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
