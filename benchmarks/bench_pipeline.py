"""One replica split across two nodes against one process: engine start and time per output token.

Run: .venv/bin/python benchmarks/bench_pipeline.py [--repeats 2]
(writes benchmarks/results/pipeline.json and prints the table for benchmarks/README.md).

On one embedded cluster, alternately: a replica of TP 1 x PP 1 (one engine process), of TP 1 x PP 2
(two pipeline stages, one per worker raylet) and of TP 2 x PP 2 (the chapter's shape: TP inside each
node, PP across them). For each: the time ``labkit.deploy`` takes until the first answer, where the
ranks ran (``describe_placement``), and time per output token one request at a time
(``measure_decode``), side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).parent
SHAPES = [(1, 1), (1, 2), (2, 2)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    import labkit

    rows = []
    started = time.monotonic()
    with labkit.start_cluster():
        for repeat in range(args.repeats):
            for tp, pp in SHAPES:
                config = labkit.topology_preset(
                    "distributed", num_replicas=1, tensor_parallel_size=tp, pipeline_parallel_size=pp
                )
                deployment = labkit.deploy(config)
                placement = labkit.describe_placement(deployment)
                decode = labkit.measure_decode(
                    f"TP {tp} x PP {pp}", deployment.url, requests=args.requests, max_tokens=args.tokens
                )
                row = {
                    "repeat": repeat,
                    "tp": tp,
                    "pp": pp,
                    "deploy_s": deployment.deploy_s,
                    "stage_nodes": {str(k): sorted(set(v)) for k, v in placement.replicas[0].stage_nodes.items()},
                    "placement_problems": placement.problems(),
                    **decode.to_dict(),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
                deployment.shutdown()
                time.sleep(5)  # let the engine processes exit before the next deploy
    out = {"rows": rows, "wall_s": time.monotonic() - started, "requests": args.requests, "tokens": args.tokens}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "pipeline.json").write_text(json.dumps(out, indent=1))
    print("\n| shape | deploy s | TPOT p50 ms | tokens/s (one request) | vs TP 1 x PP 1 | stages on |")
    print("|---|---|---|---|---|---|")
    for repeat in range(args.repeats):
        base = next(r for r in rows if r["repeat"] == repeat and (r["tp"], r["pp"]) == (1, 1))
        for r in (r for r in rows if r["repeat"] == repeat):
            ratio = r["tpot_p50_s"] / base["tpot_p50_s"] if r["tpot_p50_s"] and base["tpot_p50_s"] else float("nan")
            nodes = "; ".join(f"PP {k}: {', '.join(v)}" for k, v in r["stage_nodes"].items())
            print(
                f"| TP {r['tp']} x PP {r['pp']} | {r['deploy_s']:.0f} | {r['tpot_p50_s'] * 1e3:.1f} | "
                f"{r['tokens_per_s']:.0f} | {ratio:.2f}x | {nodes} |"
            )


if __name__ == "__main__":
    main()
