"""The kit's Serve topologies against vLLM's own OpenAI server, side by side, hop by hop.

Run: .venv/bin/python benchmarks/bench_serve_overhead.py [--rates 2,5,10] [--requests 100]
     [--topologies distributed,head-proxy,gated,direct-ingress]

Writes benchmarks/results/serve_overhead.json and serve_overhead_hops.png. One engine on each side,
same tiny model, same engine settings (float32, eager, 32 sequences, 1 GiB KV cache, one OpenMP
thread). vLLM alone (`vllm.entrypoints.openai.api_server`, its own process) runs the whole time; the
kit's embedded 2-node cluster deploys one topology after the other (one replica each):

- ``distributed``: a Serve proxy on every node (the lesson's healthy door);
- ``head-proxy``: one proxy, on the head;
- ``gated``: the head's proxy and the kit's coordinator in front (a gate of 32 slots, as many as the
  engine runs: the coordinator's hop without its queue);
- ``direct-ingress``: Serve's throughput-optimized mode, no proxy: the client connects to the
  replica's own HTTP server.

A name with ``+nice0`` (``distributed+nice0``) runs that topology on a cluster whose Ray workers
(proxies, replicas, engines) run at niceness 0 (``worker_niceness=0``) instead of Ray's default 15,
the priority vLLM alone and the load generator have.

For every topology and rate the same Poisson schedule (same seed), streamed, ``ignore_eos``, is sent
to vLLM alone and then to the kit, back to back: each ratio kit / vLLM comes from one pair measured a
minute apart at most. The kit's records carry the hop stamps; their p50 per hop is reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
KEYS = ("ttft_p50", "ttft_p99", "e2e_p50", "e2e_p99")


def _wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s")


def _drive(url: str, model: str, rate: float, requests: int, max_tokens: int) -> tuple[dict, Any]:
    from labkit.load import LoadConfig, run_load

    config = LoadConfig(
        url=url,
        model=model,
        arrival="poisson",
        rate_rps=rate,
        num_requests=requests,
        duration_s=3.0 * requests / rate,  # a cap: the run ends after `requests` measured requests
        max_tokens=max_tokens,
        ignore_eos=True,
        temperature=0.0,
        warmup_requests=5,
        seed=7,
    )
    result = run_load(config, progress=False)
    summary = result.summary()
    m = summary.metrics
    row = {
        "n": m["ttft"].count,
        "ttft_p50": m["ttft"].percentiles["p50"],
        "ttft_p99": m["ttft"].percentiles["p99"],
        "e2e_p50": m["e2e"].percentiles["p50"],
        "e2e_p99": m["e2e"].percentiles["p99"],
        "achieved_rps": summary.achieved_rate_rps,
        "errors": m["e2e"].errors,
    }
    return row, result.records


def _split(records: list, offsets: dict) -> dict[str, float | None]:
    """Each request's TTFT and e2e (from its actual send) split in two: the engine's part and Serve's path.

    ``engine_first`` / ``serve_path``: p50 of the TTFT's parts; ``engine_total_p99`` / ``e2e_path_p99``:
    p99 of the engine's whole time (submit -> last token at the replica) and of the rest of the e2e.
    """
    from labkit.stats import hop_times, percentile_supported, percentiles

    engine, path, engine_total, e2e_path = [], [], [], []
    for record in records:
        if record.warmup:
            continue
        hops = hop_times(record, offsets)
        if "engine_first" in hops and "first_return" in hops:
            engine.append(hops["engine_first"])
            path.append(record.ttft_uncorrected_s - hops["engine_first"])
        if "engine_first" in hops and "decode" in hops:
            total = hops["engine_first"] + hops["decode"]
            engine_total.append(total)
            e2e_path.append(record.e2e_uncorrected_s - total)
    out: dict[str, float | None] = {"engine_first": None, "serve_path": None}
    if engine:
        out = {"engine_first": percentiles(engine, [50])["p50"], "serve_path": percentiles(path, [50])["p50"]}
    if engine_total and percentile_supported(99, len(engine_total)):
        out["engine_total_p99"] = percentiles(engine_total, [99])["p99"]
        out["e2e_path_p99"] = percentiles(e2e_path, [99])["p99"]
    return out


def _vllm_server(model_dir: Path, name: str, port: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "OMP_NUM_THREADS": "1",
    }
    args = ["--model", str(model_dir), "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port)]
    args += ["--max-model-len", "512", "--dtype", "float32", "--enforce-eager", "--max-num-seqs", "32"]
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _config(name: str) -> Any:
    import labkit

    name = name.split("+", 1)[0]
    extra = {"coordinator_max_concurrency": 32} if name == "gated" else {}
    return labkit.topology_preset(name, num_replicas=1, **extra)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", default="2,5,10")
    parser.add_argument("--requests", type=int, default=100, help="measured requests per rate and side (p99 needs 100)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--topologies", default="distributed,head-proxy,gated,direct-ingress")
    parser.add_argument("--out", default="serve_overhead", help="result name under benchmarks/results/")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    topologies = args.topologies.split(",")

    from labkit.models import TINY_MODEL_NAME, make_tiny_model

    port = 8123
    server = _vllm_server(make_tiny_model(), TINY_MODEL_NAME, port)
    vllm_url = f"http://127.0.0.1:{port}"
    rows: dict[str, dict[str, Any]] = {}
    hops: dict[str, dict[str, dict[str, float]]] = {}
    hops_p99: dict[str, dict[str, dict[str, float | None]]] = {}
    hop_values: dict[str, dict[str, list[float]]] = {}
    try:
        _wait_http(f"{vllm_url}/v1/models", 300)
        for niceness in dict.fromkeys(0 if n.endswith("+nice0") else None for n in topologies):
            group = [n for n in topologies if (0 if n.endswith("+nice0") else None) == niceness]
            _run_group(group, niceness, rates, args, vllm_url, rows, hops, hops_p99, hop_values)
    finally:
        server.terminate()
        server.wait(timeout=60)
    _write(rates, args, rows, hops, hops_p99, hop_values)


def _run_group(
    topologies: list[str],
    niceness: int | None,
    rates: list[float],
    args: Any,
    vllm_url: str,
    rows: dict,
    hops: dict,
    hops_p99: dict,
    hop_values: dict,
) -> None:
    import labkit
    from labkit.models import TINY_MODEL_NAME
    from labkit.stats import hop_breakdown

    with labkit.start_cluster(num_nodes=2, worker_niceness=niceness):
        for name in topologies:
            deployment = labkit.deploy(_config(name))
            offsets = labkit.measure_clock_offsets(deployment.url)
            rows[name] = {
                "deploy_s": deployment.deploy_s,
                "worker_niceness": 15 if niceness is None else niceness,
                "clock": offsets,
                "rates": {},
            }
            hops[name] = {}
            hops_p99[name] = {}
            for rate in rates:
                alone, _ = _drive(vllm_url, TINY_MODEL_NAME, rate, args.requests, args.max_tokens)
                served = deployment.served_model_name
                kit, records = _drive(deployment.url, served, rate, args.requests, args.max_tokens)
                ratio = {k: (kit[k] / alone[k]) if alone[k] else None for k in KEYS}
                rows[name]["rates"][str(rate)] = {"vllm_alone": alone, "kit": kit, "ratio": ratio}
                breakdown = hop_breakdown(records, offsets=offsets["offsets"])
                rows[name]["rates"][str(rate)]["split_p50_s"] = _split(records, offsets["offsets"])
                hops[name][str(rate)] = {h: v["p50"] for h, v in breakdown.items()}
                hops_p99[name][str(rate)] = {h: v.get("p99") for h, v in breakdown.items()}
                if rate == rates[len(rates) // 2]:
                    hop_values[name] = {h: v["values"] for h, v in breakdown.items()}
                print(name, rate, {k: None if v is None else round(v, 2) for k, v in ratio.items()}, flush=True)
            deployment.shutdown()


def _write(rates: list[float], args: Any, rows: dict, hops: dict, hops_p99: dict, hop_values: dict) -> None:
    result = {
        "rates_rps": rates,
        "requests_per_rate": args.requests,
        "max_tokens": args.max_tokens,
        "topologies": rows,
        "hop_p50_s": hops,
        "hop_p99_s": hops_p99,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n")
    if hop_values:
        from labkit.plots import plot_hops

        fig = plot_hops(hop_values, title=f"hops at {rates[len(rates) // 2]:g} req/s, tiny model, one replica")
        fig.savefig(RESULTS / f"{args.out}_hops.png", dpi=110, bbox_inches="tight")
    print(_table(result))


def _table(result: dict[str, Any]) -> str:
    lines = [
        "| topology | req/s | TTFT p50 | TTFT p99 | e2e p50 | e2e p99 | kit TTFT p50: Serve path + engine |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in result["topologies"].items():
        for rate, cell in row["rates"].items():
            parts = []
            for k in KEYS:
                kit, alone, ratio = cell["kit"][k], cell["vllm_alone"][k], cell["ratio"][k]
                parts.append(f"{kit * 1000:.1f} / {alone * 1000:.1f} ms (x{ratio:.2f})" if ratio else "n/a")
            split = cell.get("split_p50_s") or {}
            if split.get("serve_path") is not None and split.get("engine_first") is not None:
                parts.append(f"{split['serve_path'] * 1000:.1f} + {split['engine_first'] * 1000:.1f} ms")
            else:
                parts.append("n/a")
            lines.append(f"| {name} | {float(rate):g} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
