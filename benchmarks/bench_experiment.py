"""The lesson's experiment, recorded: gated coordinator vs distributed proxies, 3 runs and a sweep.

Run: .venv/bin/python benchmarks/bench_experiment.py  (writes benchmarks/results/experiment.json)
Same engines behind both doors (labkit.serve.deploy_coordinator), the workload of
labkit.experiment.LESSON_WORKLOAD, three seeds; then both doors at several offered loads.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def main() -> None:
    import labkit
    from labkit.experiment import LESSON_WORKLOAD, compare_topologies, sweep_topologies
    from labkit.serve import deploy_coordinator
    from labkit.stats import summarize_latencies

    workload = {k: v for k, v in LESSON_WORKLOAD.items() if k != "coordinator_max_concurrency"}
    out: dict = {"workload": LESSON_WORKLOAD, "runs": [], "sweep": {}}
    with labkit.start_cluster():
        deployment = labkit.deploy(labkit.topology_preset("distributed"))
        doors = {
            "distributed": deployment.url,
            "gated": deploy_coordinator(deployment, max_concurrency=LESSON_WORKLOAD["coordinator_max_concurrency"]),
        }
        for seed in range(3):
            result = compare_topologies(doors, seed=seed, progress=False, **workload)
            print(repr(result), flush=True)
            out["runs"].append(result.claim())
        rates = [0.6, 1.2, 2.4, 3.6, 4.8]
        sweep = sweep_topologies(doors, rates, duration_s=15.0, max_tokens=workload["max_tokens"], progress=False)
        for name, results in sweep.items():
            rows = []
            for rate, res in zip(rates, results, strict=True):
                e2e = summarize_latencies(res.records, "e2e", ci=False).percentiles
                ttft = summarize_latencies(res.records, "ttft", ci=False).percentiles
                rows.append(
                    {
                        "rate_rps": rate,
                        "achieved_rps": res.achieved_rate_rps,
                        "e2e_p50": e2e["p50"],
                        "e2e_p95": e2e["p95"],
                        "e2e_p99": e2e["p99"],
                        "ttft_p50": ttft["p50"],
                        "ttft_p99": ttft["p99"],
                    }
                )
            out["sweep"][name] = rows
    out["holds"] = sum(1 for c in out["runs"] if c["holds"])
    out["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = Path(__file__).parent / "results" / "experiment.json"
    path.write_text(json.dumps(out, indent=2, default=float) + "\n")
    print(f"claim held in {out['holds']} of 3 runs; sweep written to {path}")


if __name__ == "__main__":
    main()
