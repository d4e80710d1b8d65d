"""The three regimes of notebook 02, ten times each: is every verdict right in at least 9 of 10?

Run: .venv/bin/python benchmarks/bench_regimes.py [--repeats 10]
(writes benchmarks/results/regimes.json and prints the table for benchmarks/README.md).

One embedded cluster and one deployment, with notebook 02's own defaults (read from its
``parameters`` cell, so the benchmark cannot drift from the notebook); then ``repeats`` times,
each with another seed: the healthy door, the gated door and the engine-bound closed loop
(labkit.run_regimes), each diagnosed. Run it on an otherwise idle machine: other programs on the
two cores add their own tail to every run.
"""

from __future__ import annotations

import argparse
import ast
import json
import platform
import time
from pathlib import Path

HERE = Path(__file__).parent
NOTEBOOK = HERE.parent / "notebooks" / "02_load_exercise.ipynb"


def notebook_defaults(path: Path = NOTEBOOK) -> dict:
    """Return the values assigned in a notebook's ``parameters`` cell (literals only)."""
    cells = json.loads(path.read_text())["cells"]
    source = next("".join(c["source"]) for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    import labkit

    p = notebook_defaults()
    users = p["engine_users"] or 2 * p["num_replicas"] * p["engine_max_num_seqs"]
    out: dict = {"parameters": p, "engine_users": users, "machine": platform.machine(), "runs": []}
    started = time.monotonic()
    with labkit.start_cluster():
        deployment = labkit.deploy(
            labkit.topology_preset("distributed", num_replicas=p["num_replicas"], max_num_seqs=p["engine_max_num_seqs"])
        )
        doors = {
            "distributed": deployment.url,
            "gated": labkit.serve.deploy_coordinator(deployment, max_concurrency=p["coordinator_max_concurrency"]),
        }
        for seed in range(args.repeats):
            res = labkit.run_regimes(
                doors,
                rate_rps=p["rate_rps"],
                gate_utilization=p["gate_utilization"],
                gate_slots=p["coordinator_max_concurrency"],
                duration_s=p["duration_s"],
                max_tokens=p["max_tokens"],
                engine_users=users,
                engine_duration_s=p["engine_duration_s"],
                expected_replicas=p["num_replicas"],
                seed=seed,
                progress=False,
            )
            claim = res.claim()
            row = {"seed": seed, "claim": claim, "table": res.table()}
            out["runs"].append(row)
            balance = {k: run.diagnosis.evidence.get("balance_index_replica") for k, run in res.runs.items()}
            row["balance_index_replica"] = balance
            print(f"seed {seed}: {res.sentence()} Balance (Jain): {balance}", flush=True)
    out["wall_s"] = time.monotonic() - started
    regimes = list(out["runs"][0]["claim"]["verdicts"])
    out["right"] = {
        r: sum(run["claim"]["verdicts"][r] == labkit.experiment.REGIMES[r] for run in out["runs"]) for r in regimes
    }
    factors = [run["claim"]["e2e_p99_factor"] for run in out["runs"] if run["claim"]["e2e_p99_factor"]]
    out["e2e_p99_factor"] = {"min": min(factors), "median": sorted(factors)[len(factors) // 2], "max": max(factors)}
    out["e2e_spike_visible"] = sum(run["claim"]["e2e_spike_visible"] for run in out["runs"])
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "regimes.json").write_text(json.dumps(out, indent=1, default=str))
    n = len(out["runs"])
    print("\n| regime | right | verdicts |\n|---|---|---|")
    for r in regimes:
        seen = [run["claim"]["verdicts"][r] for run in out["runs"]]
        print(f"| {r} | {out['right'][r]} of {n} | {', '.join(sorted(set(seen)))} |")
    print(
        f"\ngated / healthy e2e p99: min {out['e2e_p99_factor']['min']:.2f}x, median "
        f"{out['e2e_p99_factor']['median']:.2f}x, max {out['e2e_p99_factor']['max']:.2f}x; >= 2x in "
        f"{out['e2e_spike_visible']} of {n}; {out['wall_s'] / 60:.0f} min in all"
    )


if __name__ == "__main__":
    main()
