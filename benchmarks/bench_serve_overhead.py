"""Overhead of the kit's Serve path against vLLM's own OpenAI server: same tiny model, same load.

Run: .venv/bin/python benchmarks/bench_serve_overhead.py [--rates 2,5,10] [--duration 20]
Writes benchmarks/results/serve_overhead.json. One engine on each side (the kit: one replica on an
embedded 2-node cluster, reached through the Serve proxy; vLLM: `vllm.entrypoints.openai.api_server`
in its own process). Both are driven by the kit's load generator with the same Poisson schedules
(same seed), streaming, ignore_eos, so every request has the same shape. Reported as ratios kit/vLLM
of p50 and p99 of TTFT and end-to-end, measured back to back in one run.
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


def _wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s")


def _drive(url: str, model: str, rates: list[float], duration_s: float, max_tokens: int) -> dict:
    from labkit.load import LoadConfig, run_load

    out = {}
    for rate in rates:
        config = LoadConfig(
            url=url,
            model=model,
            arrival="poisson",
            rate_rps=rate,
            duration_s=duration_s,
            max_tokens=max_tokens,
            ignore_eos=True,
            temperature=0.0,
            warmup_requests=3,
            seed=7,
        )
        summary = run_load(config, progress=False).summary()
        m = summary.metrics
        out[str(rate)] = {
            "ttft_p50": m["ttft"].percentiles["p50"],
            "ttft_p99": m["ttft"].percentiles["p99"],
            "e2e_p50": m["e2e"].percentiles["p50"],
            "e2e_p99": m["e2e"].percentiles["p99"],
            "achieved_rps": summary.achieved_rate_rps,
            "errors": m["e2e"].errors,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", default="2,5,10")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]

    import labkit
    from labkit.models import TINY_MODEL_NAME, make_tiny_model

    model_dir = make_tiny_model()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"}
    port = 8123
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model_dir),
            "--served-model-name",
            TINY_MODEL_NAME,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-model-len",
            "512",
            "--dtype",
            "float32",
            "--enforce-eager",
            "--max-num-seqs",
            "32",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/v1/models", 300)
        vllm_side = _drive(f"http://127.0.0.1:{port}", TINY_MODEL_NAME, rates, args.duration, args.max_tokens)
    finally:
        server.terminate()
        server.wait(timeout=60)
    with labkit.start_cluster(num_nodes=2):
        deployment = labkit.deploy(labkit.topology_preset("distributed", num_replicas=1))
        kit_side = _drive(deployment.url, deployment.served_model_name, rates, args.duration, args.max_tokens)
    ratios = {
        rate: {
            k: (kit_side[rate][k] / vllm_side[rate][k]) if vllm_side[rate][k] else None
            for k in ("ttft_p50", "ttft_p99", "e2e_p50", "e2e_p99")
        }
        for rate in kit_side
    }
    result = {
        "rates_rps": rates,
        "duration_s": args.duration,
        "max_tokens": args.max_tokens,
        "vllm_openai_server": vllm_side,
        "kit_serve_path": kit_side,
        "ratio_kit_over_vllm": ratios,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(__file__).parent / "results" / "serve_overhead.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(ratios, indent=2))


if __name__ == "__main__":
    main()
