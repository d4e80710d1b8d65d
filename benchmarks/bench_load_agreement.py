"""Agreement with vLLM's benchmark client on the same deployment and closed-loop workload.

Runs labkit's load generator (arrival="closed", N users) and ``vllm bench serve``
(``--max-concurrency N --request-rate inf``, the same closed loop; called through its Python
entry point) against a running OpenAI-compatible deployment with the same prompt and output
lengths (random token prompts from the same tokenizer, ``ignore_eos``, temperature 0), then
compares p50 and p99 of TTFT and end-to-end latency. Target: p50 within 5%, p99 within 10%.

Definitions compared: vLLM measures from the moment it starts the request (after its
concurrency semaphore), so the kit's ``*_uncorrected`` metrics (from the actual send) are the
like-for-like ones; in a closed loop they equal the corrected ones up to microseconds. vLLM's
end-to-end ends at the last token, the kit's at the end of the response (usage event and
``[DONE]`` right after it); both are reported.

Usage::

    python benchmarks/bench_load_agreement.py --url http://127.0.0.1:8000 --model tiny \\
        --tokenizer /path/to/tokenizer --users 4 --num-requests 200 --input-len 32 --output-len 32
    python benchmarks/bench_load_agreement.py --fake          # dry run against tests/_fake_openai.py
    python benchmarks/bench_load_agreement.py --embedded --repeats 5   # the kit's own deployment, one replica

Writes ``benchmarks/results/load_agreement.json`` (``load_agreement_dryrun.json`` with --fake)
and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"p50": 0.05, "p99": 0.10}


def run_kit(args: argparse.Namespace) -> dict:
    from labkit.load import LoadConfig, run_load
    from labkit.stats import summarize_run

    cfg = LoadConfig(url=args.url, model=args.model, arrival="closed", users=args.users,
                     num_requests=args.num_requests, warmup_requests=args.users, max_tokens=args.output_len,
                     prompt_tokens=args.input_len, tokenizer=args.tokenizer, ignore_eos=True, temperature=0.0,
                     seed=args.seed, timeout_s=args.timeout)
    res = run_load(cfg, progress=False)
    s = summarize_run(res.records, ci=False)
    last = [r.last_token_s - r.sent_s for r in res.measured if r.ok and r.last_token_s is not None]
    import numpy as np  # only for the extra "last token" latency

    out = {"requests": s.requests, "errors": s.errors}
    for name, metric in (("ttft", "ttft_uncorrected"), ("e2e", "e2e_uncorrected"), ("ttft_corrected", "ttft"),
                         ("e2e_corrected", "e2e")):
        p = s.metrics[metric].percentiles
        out[f"{name}_p50_ms"], out[f"{name}_p99_ms"] = p["p50"] * 1e3, p["p99"] * 1e3
    out["e2e_last_token_p50_ms"], out["e2e_last_token_p99_ms"] = (float(v) * 1e3 for v in np.percentile(last, [50, 99]))
    return out


def run_vllm(args: argparse.Namespace) -> dict:
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    argv = ["--backend", "vllm", "--base-url", args.url, "--endpoint", "/v1/completions", "--model", args.model,
            "--dataset-name", "random", "--random-input-len", str(args.input_len), "--random-output-len",
            str(args.output_len), "--num-prompts", str(args.num_requests), "--request-rate", "inf",
            "--max-concurrency", str(args.users), "--num-warmups", str(args.users), "--seed", str(args.seed),
            "--ignore-eos", "--temperature", "0", "--disable-tqdm", "--percentile-metrics", "ttft,tpot,itl,e2el",
            "--metric-percentiles", "50,99", "--ready-check-timeout-sec", "60"]
    argv += ["--tokenizer", args.tokenizer]
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        result = main(parser.parse_args(argv))
    return {"requests": args.num_requests, "errors": int(result["failed"]),
            "ttft_p50_ms": float(result["median_ttft_ms"]), "ttft_p99_ms": float(result["p99_ttft_ms"]),
            "e2e_p50_ms": float(result["median_e2el_ms"]), "e2e_p99_ms": float(result["p99_e2el_ms"])}


def compare(kit_runs: list[dict], vllm_runs: list[dict]) -> dict:
    rows = {}
    for metric in ("ttft", "e2e"):
        for q, tol in TARGETS.items():
            key = f"{metric}_{q}_ms"
            kit = float(statistics.median(r[key] for r in kit_runs))
            ref = float(statistics.median(r[key] for r in vllm_runs))
            diff = (kit - ref) / ref if ref else float("nan")
            rows[key] = {"kit": kit, "vllm": ref, "rel_diff": diff, "tolerance": tol, "within": bool(abs(diff) <= tol)}
    return rows


def _start_fake(args: argparse.Namespace) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "_fake_openai.py"), "--port", "0",
                               "--output-tokens", "0", "--ttft-ms", str(args.fake_ttft_ms), "--itl-ms",
                               str(args.fake_itl_ms)], stdout=subprocess.PIPE, text=True)
    args.url = f"http://127.0.0.1:{int(server.stdout.readline().split()[1])}"
    args.model = "fake-model"
    if args.tokenizer is None:
        from labkit.models import make_tiny_model

        args.tokenizer = str(make_tiny_model())
    return server


def _home_to_tilde(value):  # noqa: ANN001, ANN202 - any argument value
    """Return ``value`` with this machine's home folder written ``~`` (results are committed)."""
    return value.replace(str(Path.home()), "~") if isinstance(value, str) else value


def _start_embedded(args: argparse.Namespace):  # noqa: ANN202 - labkit.ClusterHandle, imported lazily
    """Start the kit's cluster with one tiny-model replica; point ``args`` at it; return the cluster."""
    import labkit
    from labkit.models import make_tiny_model

    cluster = labkit.start_cluster(num_nodes=2)
    deployment = labkit.deploy(labkit.topology_preset("distributed", num_replicas=1))
    args.url, args.model = deployment.url, deployment.served_model_name
    args.tokenizer = args.tokenizer or str(make_tiny_model())
    print(f"embedded deployment at {args.url} ({args.model})", flush=True)
    return cluster


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="base URL of the deployment, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", help="served model name")
    p.add_argument("--tokenizer", default=None, help="tokenizer path or id (both clients make prompts with it)")
    p.add_argument("--users", type=int, default=4, help="closed-loop concurrency")
    p.add_argument("--num-requests", type=int, default=200)
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--repeats", type=int, default=1, help="alternate kit / vLLM this many times; compare medians")
    p.add_argument("--fake", action="store_true", help="dry run against tests/_fake_openai.py")
    p.add_argument("--embedded", action="store_true",
                   help="start the kit's embedded cluster (head + 1 worker) with one tiny-model replica and use it")
    p.add_argument("--fake-ttft-ms", type=float, default=50.0)
    p.add_argument("--fake-itl-ms", type=float, default=10.0)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    server = _start_fake(args) if args.fake else None
    cluster = _start_embedded(args) if args.embedded else None
    if not args.url or not args.model:
        p.error("--url and --model are required (or --fake)")
    if args.tokenizer is None:  # what vLLM's client does too; pass --tokenizer for a served alias
        args.tokenizer = args.model
    try:
        kit_runs, vllm_runs = [], []
        for k in range(args.repeats):
            order = (run_kit, run_vllm) if k % 2 == 0 else (run_vllm, run_kit)
            for fn in order:
                t0 = time.perf_counter()
                row = fn(args)
                row["wall_s"] = time.perf_counter() - t0
                (kit_runs if fn is run_kit else vllm_runs).append(row)
                print(f"{'kit ' if fn is run_kit else 'vllm'} {json.dumps(row)}", flush=True)
    finally:
        if server is not None:
            server.terminate()
            server.communicate(timeout=30)
        if cluster is not None:
            cluster.stop()
    result = compare(kit_runs, vllm_runs)
    doc = {"benchmark": "load_agreement", "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "dry_run_against_fake_server": args.fake, "embedded_deployment": args.embedded,
           "setup": {k: _home_to_tilde(getattr(args, k)) for k in ("url", "model", "tokenizer", "users", "num_requests",
                                                                  "input_len", "output_len", "seed", "repeats")},
           "targets": {"p50": "within 5%", "p99": "within 10%"}, "comparison": result,
           "all_within": all(r["within"] for r in result.values()), "kit_runs": kit_runs, "vllm_runs": vllm_runs}
    name = "load_agreement_dryrun.json" if args.fake else "load_agreement.json"
    out = Path(args.out or ROOT / "benchmarks" / "results" / name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"{'metric':<14}{'kit ms':>10}{'vllm ms':>10}{'diff':>8}{'tol':>6}  ok")
    for key, r in result.items():
        print(f"{key:<14}{r['kit']:>10.2f}{r['vllm']:>10.2f}{r['rel_diff']:>+8.1%}{r['tolerance']:>6.0%}"
              f"  {'yes' if r['within'] else 'NO'}")
    print(f"wrote {out}")
    return 0 if doc["all_within"] else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
