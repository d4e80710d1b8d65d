"""The kit's GPU check: notebook 02 on the GPU, then the kit against vLLM alone on the same GPU.

On a GPU host with N GPUs (after ``scripts/gpu/install_wheels.sh``):

    python scripts/gpu/run_gpu_lab.py --phase notebook --gpus 1 --model dummy:llama-2-7b --out OUT
    python scripts/gpu/run_gpu_lab.py --phase both --gpus 1 --model dummy:llama-2-7b --rates 4 16 --out OUT

``--phase notebook``: the embedded cluster with the GPUs owned by worker nodes (one worker for one
GPU, two that own N/2 each otherwise; the head has none), then ``notebooks/02_load_exercise.ipynb``
itself through papermill (``labkit.run.run_lab``) with GPU parameters and the cluster's address: the
three regimes, histograms, timelines with GPU utilization, diagnosis and verification log, exactly
as a learner runs them. No second copy of the lesson flow lives here.
``--phase kit``: the kit's doors (``--doors distributed direct-ingress``; the distributed proxies by
default) on the same cluster layout (one replica of TP x PP, deployed once per door), driven by the
kit's load generator at two offered loads, with every request's hops. ``--phase vllm``: vLLM's own OpenAI server
on the same GPUs, model and engine settings, driven the same way. ``--phase both`` runs both and adds
``compare`` to ``result.json``: deploy time, tokens/s, TTFT and end-to-end p50/p95/p99 at each
offered load, kit / vLLM ratios. The two may also run as two commands with the same ``--out`` and
parameters (a host that limits one command to 10 minutes): the second compares with the first.

With no GPU (``--gpus 0 --model tiny``) every phase runs on the CPU build: the script's own smoke
tests (``tests/test_gpu_script.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

#: The kit's doors the kit phase can drive (``--doors``) and ``compare`` looks for, in this order.
DOORS = ("distributed", "direct-ingress")
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def _log(msg: str) -> None:
    print(f"[gpu-lab {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _gpu_memory() -> list[dict[str, Any]]:
    """Return used / total memory and utilization of every GPU (``nvidia-smi``)."""
    query = "index,name,memory.used,memory.total,utilization.gpu"
    if shutil.which("nvidia-smi") is None:
        return []  # a CPU host (the script's own smoke test): no GPU to report
    done = subprocess.run(
        ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = []
    for line in done.stdout.strip().splitlines():
        index, name, used, total, util = (x.strip() for x in line.split(","))
        out.append(
            {
                "index": int(index),
                "name": name,
                "used_gib": round(float(used) / 1024, 2),
                "total_gib": round(float(total) / 1024, 2),
                "util_percent": float(util),
            }
        )
    return out


def _row(run: Any, deploy_s: float) -> dict[str, Any]:
    s = run.summary
    row: dict[str, Any] = {
        "deploy_s": round(deploy_s, 2),
        "offered_rps": s.offered_rate_rps,
        "requests": s.requests,
        "ok": s.ok,
        "errors": s.errors,
        "output_tokens_per_s": s.output_tokens_per_s,
        "throughput_rps": s.throughput_rps,
    }
    for metric in ("ttft", "e2e"):
        m = s.metrics.get(metric)
        row[f"{metric}_n"] = int(m.count) if m else 0  # ttft_n == ok: a first token on every answer
        for q in ("p50", "p95", "p99"):
            row[f"{metric}_{q}_s"] = m.percentiles.get(q) if m else None
    gpu = [x for x in (run.telemetry.samples if run.telemetry else []) if x.gpu_util_percent is not None]
    by_gpu: dict[str, list[float]] = {}
    for x in gpu:
        by_gpu.setdefault(x.component_id, []).append(x.gpu_util_percent)
    row["gpu_util_mean_percent"] = {k: round(sum(v) / len(v), 1) for k, v in sorted(by_gpu.items())}
    return row


def _figures(runs: dict[str, Any], fig_dir: Path, prefix: str) -> None:
    import labkit

    for name, run in runs.items():
        for metric in ("ttft", "e2e"):
            fig = labkit.plot_latency_histogram(run.result, metric, name=f"{prefix} {name}", log_x=metric == "ttft")
            labkit.save_figure(fig, fig_dir / f"hist-{metric}-{prefix}-{name}", formats=("png",))
        fig = labkit.plot_timeline(run.result, run.telemetry, name=f"{prefix} {name}")
        labkit.save_figure(fig, fig_dir / f"timeline-{prefix}-{name}", formats=("png",))


def cluster_layout(gpus: int) -> dict[str, Any]:
    """Return ``start_cluster`` arguments: a head without GPU and workers that own the GPUs.

    One GPU (or an odd count): one worker owns them all. An even count: two workers own half each,
    so a pipeline of two stages crosses nodes. No GPU: the embedded CPU default.
    """
    if gpus <= 0:
        return {}
    workers = 2 if gpus % 2 == 0 else 1
    return {
        "num_nodes": 1 + workers,
        "gpus_per_node": gpus // workers,
        "gpu_mode": "physical",
        "head_cpus": 2.0,
        "object_store_mb_per_node": 1024,
        "start_timeout_s": 120.0,
    }


def _start_cluster(args: argparse.Namespace) -> Any:
    import labkit

    layout = cluster_layout(args.gpus)
    if layout:
        layout["cpus_per_node"] = float(args.cpus_per_node)
    cluster = labkit.start_cluster(**layout)
    _log(f"cluster up in {cluster.start_s:.1f} s\n{cluster!r}")
    return cluster


def notebook_parameters(args: argparse.Namespace, cluster_address: str) -> dict[str, Any]:
    """Return notebook 02's parameters for this host (papermill injects them)."""
    replicas = max(1, args.gpus // (args.tp * args.pp)) if args.gpus else 2
    params: dict[str, Any] = {
        "learner_id": "reference-gpu" if args.gpus else "reference-cpu",
        "cluster_address": cluster_address,
        "backend": "gpu" if args.gpus else "cpu",
        "model": args.model,
        "num_replicas": replicas,
        "tensor_parallel_size": args.tp if args.gpus else 1,
        "pipeline_parallel_size": args.pp if args.gpus else 1,
        "engine_max_num_seqs": args.max_num_seqs,
        "gate_utilization": 0.8,
        "duration_s": args.duration_s,
        "max_tokens": args.max_tokens,
        "coordinator_max_concurrency": args.coordinator_max_concurrency,
        "engine_duration_s": args.engine_duration_s,
        "sweep_rates": list(args.sweep_rates),
        "sweep_duration_s": args.sweep_duration_s,
        "interactive": False,
        "seed": 0,
    }
    return params


def run_notebook(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Run notebook 02 through papermill on a cluster whose workers own the GPUs; summarize its log."""
    from labkit.run import run_lab

    cluster = _start_cluster(args)
    try:
        params = notebook_parameters(args, cluster.address)
        _log(f"notebook 02 with {params}")
        lab = run_lab(out, notebooks=["02_load_exercise.ipynb"], parameters=params, progress=_log)
        summary: dict[str, Any] = {"parameters": params, "run": lab.to_dict()}
        logs = sorted(out.glob("load-exercise--*.json"))
        if logs:
            log = json.loads(logs[-1].read_text())
            regimes = log.get("outputs", {}).get("regimes", {})
            summary.update(log=logs[-1].name, claim=regimes.get("claim"), table=regimes.get("table"))
            for row in regimes.get("table") or []:
                _log(
                    f"{row['regime']:<18} {row['door']:<12} n={row['e2e_n']} ttft n={row['ttft_n']} "
                    f"e2e p50/p99 {row['e2e_p50_s']}/{row['e2e_p99_s']} s, waiting {row['engine_waiting_mean']}, "
                    f"slots {row['engine_slots_in_use']}, tok/s {row.get('output_tokens_per_s')}, "
                    f"GPU util {row.get('gpu_util_mean_percent')} %: {row['verdict']}"
                )
        return summary
    finally:
        cluster.stop()


def run_kit(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Deploy one replica with the kit and drive each of its doors (``--doors``) at the two offered loads.

    Each door is its own deployment of the same replica, one after the other on the same GPUs:
    ``distributed`` (a Serve proxy on every node, the lesson's healthy door) and ``direct-ingress``
    (Serve's throughput-optimized mode: the client reaches the replica's own HTTP server). Every row
    carries the per-hop p50 / p99 of its requests (``labkit.stats.hop_breakdown``).
    """
    import labkit

    cluster = _start_cluster(args)
    rows: dict[str, Any] = {}
    deploys: dict[str, float] = {}
    try:
        for door in args.doors:
            _wait_gpu_memory_free()
            config = labkit.topology_preset(
                door,
                backend="gpu" if args.gpus else "cpu",
                model=args.model,
                num_replicas=1,
                tensor_parallel_size=args.tp,
                pipeline_parallel_size=args.pp,
                max_model_len=args.max_model_len,
                max_num_seqs=args.max_num_seqs,
                max_tokens_limit=max(args.max_tokens, 256),
                gpu_memory_utilization=args.gpu_memory_utilization,
                max_ongoing_requests=512,
                engine_kwargs=_engine_kwargs(args),
                deploy_timeout_s=540.0,
            )
            deployment = labkit.deploy(config)
            deploys[door] = deployment.deploy_s
            _log(f"{door}: deployed in {deployment.deploy_s:.1f} s: {deployment!r}; plan {deployment.plan.bundles}")
            bundles = _bundle_nodes(cluster)
            gpus_after_deploy = _gpu_memory()
            _log(f"bundles on nodes: {bundles}; GPU memory after deploy: {gpus_after_deploy}")
            common = _load_settings(args, str(deployment.model.model), out)
            runs = {
                f"{door}-{rate:g}rps": labkit.run_topology(door, deployment.url, rate_rps=rate, **common)
                for rate in args.rates
            }
            for name, run in runs.items():
                _log(f"{name}: {run.summary!r}\n  diagnosis: {run.diagnosis.verdict}")
                rows[name] = {**_row(run, deployment.deploy_s), "hops_ms": _hops_ms(run.result.records)}
            _figures(runs, out / "figures", "kit")
            deployment.shutdown()
        return {
            "deploy_s": deploys[args.doors[0]],
            "deploy_s_by_door": deploys,
            "rows": rows,
            "bundles": bundles,
            "gpu_memory_after_deploy": gpus_after_deploy,
        }
    finally:
        cluster.stop()


def _hops_ms(records: list[Any]) -> dict[str, dict[str, float]]:
    """Return ``{hop: {"p50": ms, "p99": ms, "count": n}}`` of one run (the percentiles its count supports)."""
    from labkit.stats import hop_breakdown

    return {
        hop: {"count": h["count"], **{q: round(h[q] * 1000, 3) for q in ("p50", "p99") if h.get(q) is not None}}
        for hop, h in hop_breakdown(records).items()
    }


def _wait_gpu_memory_free(timeout_s: float = 120.0, below_gib: float = 2.0) -> None:
    """Wait until every GPU's used memory is under ``below_gib`` (an engine just deleted frees it late)."""
    deadline = time.monotonic() + timeout_s
    while (busy := [g for g in _gpu_memory() if g["used_gib"] >= below_gib]) and time.monotonic() < deadline:
        time.sleep(2)
    if busy:
        _log(f"GPU memory still in use after {timeout_s:.0f} s: {busy}")


def _load_settings(args: argparse.Namespace, tokenizer: str, out: Path) -> dict[str, Any]:
    """The load both sides get: the same prompts, answer length, seed and time-outs."""
    return {
        "duration_s": args.duration_s,
        "max_tokens": args.max_tokens,
        "prompt_tokens": args.prompt_tokens,
        "seed": 0,
        "tokenizer": tokenizer,
        "records_dir": out / "records",
        "progress": False,
        "timeout_s": 120.0,
    }


def _engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"enforce_eager": bool(args.enforce_eager)}


def _bundle_nodes(cluster: Any) -> list[dict[str, Any]]:
    """Return every placement group's bundles with the node each landed on (the replica's TP x PP)."""
    from ray.util.placement_group import placement_group_table

    names = cluster.node_names()
    out = []
    try:
        for pg in placement_group_table().values():
            if pg.get("state") != "CREATED":
                continue
            nodes = pg.get("bundles_to_node_id", {})
            out.append(
                {
                    "strategy": pg.get("strategy"),
                    "bundles": [
                        {"resources": pg["bundles"][i], "node": names.get(nodes.get(i), nodes.get(i))}
                        for i in sorted(pg["bundles"])
                    ],
                }
            )
    except Exception as err:  # noqa: BLE001 - evidence only: never lose the run for it
        out.append({"error": repr(err)})
    return out


def run_vllm(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Start vLLM's own OpenAI server on the same GPUs and model; drive it with the kit's load generator."""
    import labkit
    from labkit.models import resolve_model
    from labkit.serve.deployment import _free_port

    spec = resolve_model(args.model)
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        spec.model,
        "--served-model-name",
        spec.served_name,
        "--load-format",
        spec.load_format,
        "--tensor-parallel-size",
        str(args.tp),
        "--pipeline-parallel-size",
        str(args.pp),
        "--max-model-len",
        str(args.max_model_len),
        "--max-num-seqs",
        str(args.max_num_seqs),
        "--gpu-memory-utilization",
        str(args.gpu_memory_utilization),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if args.enforce_eager:
        cmd.append("--enforce-eager")
    env = {**os.environ, **NO_MULTICAST, "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(args.gpus))}
    log_path = out / "vllm-server.log"
    started = time.monotonic()
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = started + 540
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                msg = f"vLLM server exited with {proc.returncode}; see {log_path}"
                raise RuntimeError(msg)
            try:
                body = json.dumps({"model": spec.served_name, "prompt": "ready?", "max_tokens": 1}).encode()
                req = urllib.request.Request(
                    f"{url}/v1/completions", data=body, headers={"content-type": "application/json"}
                )
                with urllib.request.urlopen(req, timeout=30):  # noqa: S310 - local server
                    break
            except OSError:
                time.sleep(1.0)
        deploy_s = time.monotonic() - started
        _log(f"vLLM alone answered after {deploy_s:.1f} s")
        common = _load_settings(args, str(spec.model), out)
        runs = {f"vllm-{rate:g}rps": labkit.run_topology("vllm", url, rate_rps=rate, **common) for rate in args.rates}
        for name, run in runs.items():
            _log(f"{name}: {run.summary!r}")
        _figures(runs, out / "figures", "vllm")
        return {"deploy_s": deploy_s, "rows": {name: _row(run, deploy_s) for name, run in runs.items()}}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def compare(
    kit: dict[str, Any],
    vllm: dict[str, Any],
    rates: list[float],
    doors: tuple[str, ...] = DOORS,
) -> dict[str, Any]:
    """Return kit and vLLM-alone numbers side by side with kit / vLLM ratios, per door and offered load.

    Keys: ``"4rps"`` for the distributed door (as earlier results name it), ``"direct-ingress-4rps"``
    for the other; a door the kit phase did not run is left out.
    """
    table = {}
    keys = ["deploy_s", "output_tokens_per_s"]
    keys += [f"{m}_{q}_s" for m in ("ttft", "e2e") for q in ("p50", "p95", "p99")]
    for door in doors:
        for rate in rates:
            k, v = kit["rows"].get(f"{door}-{rate:g}rps"), vllm["rows"][f"vllm-{rate:g}rps"]
            if k is None:
                continue  # the kit phase ran other doors
            name = f"{rate:g}rps" if door == "distributed" else f"{door}-{rate:g}rps"
            table[name] = {
                key: {
                    "kit": k.get(key),
                    "vllm": v.get(key),
                    "ratio": (k[key] / v[key]) if k.get(key) and v.get(key) else None,
                }
                for key in keys
            }
    return table


def args_dict(args: argparse.Namespace) -> dict[str, Any]:
    """The parameters as ``result.json`` keeps them (paths as text)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


_SAME_CONFIGURATION = (
    "gpus",
    "model",
    "tp",
    "pp",
    "rates",
    "duration_s",
    "max_tokens",
    "prompt_tokens",
    "max_model_len",
)


def _earlier_phases(result_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Return the other phase's result from an earlier run into the same ``--out``, if it matches.

    The kit phase and vLLM alone may run as two commands (each under a host's per-command limit);
    the second one then finds the first's ``result.json`` and writes the comparison. A result made
    with other parameters is not compared: that would not be the same GPUs, model and load.
    """
    if args.phase in ("both", "notebook") or not result_path.exists():
        return {}
    earlier = json.loads(result_path.read_text())
    other = "vllm" if args.phase == "kit" else "kit"
    if other not in earlier:
        return {}
    before = earlier.get("args", {})
    now = args_dict(args)
    differ = [k for k in _SAME_CONFIGURATION if before.get(k) != now.get(k)]
    if differ:
        _log(f"not comparing with the earlier {other} phase in {result_path}: {differ} differ")
        return {}
    _log(f"found the earlier {other} phase in {result_path}: its numbers are compared with this one's")
    return {other: earlier[other], f"{other}_args": before}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Return the script's parameters (defaults: 1 GPU, dummy Llama-2-7B, TP 1 x PP 1)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--model", default="dummy:llama-2-7b")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--rates", type=float, nargs=2, default=[4.0, 16.0])
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--max-num-seqs", type=int, default=128)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    parser.add_argument("--coordinator-max-concurrency", type=int, default=8)
    parser.add_argument("--cpus-per-node", type=int, default=8)
    parser.add_argument("--enforce-eager", type=int, default=1)
    parser.add_argument("--engine-duration-s", type=float, default=20.0, help="notebook: engine-bound run")
    parser.add_argument("--sweep-rates", type=float, nargs="+", default=[1.0, 3.0, 6.0], help="notebook: sweep")
    parser.add_argument("--sweep-duration-s", type=float, default=6.0, help="notebook: seconds per sweep point")
    parser.add_argument("--phase", choices=["notebook", "kit", "vllm", "both"], default="both")
    parser.add_argument(
        "--doors",
        nargs="+",
        choices=DOORS,
        default=["distributed"],
        help="kit phase: the doors to deploy and drive, one after the other",
    )
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the phases, write ``result.json`` under ``--out``."""
    args = parse_args(argv)
    os.environ.update(NO_MULTICAST)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "figures").mkdir(exist_ok=True)
    result_path = args.out / "result.json"
    result: dict[str, Any] = _earlier_phases(result_path, args)
    result["args"] = args_dict(args)
    result["gpus_before"] = _gpu_memory()
    if args.phase == "notebook":
        result["notebook"] = run_notebook(args, args.out)
        result_path.write_text(json.dumps(result, indent=2, default=str))
        return 0 if result["notebook"]["run"]["ok"] else 1
    if args.phase in ("kit", "both"):
        result["kit"] = run_kit(args, args.out)
        result_path.write_text(json.dumps(result, indent=2, default=str))
    if args.phase in ("vllm", "both"):
        result["vllm"] = run_vllm(args, args.out)
    if "kit" in result and "vllm" in result:
        result["compare"] = compare(result["kit"], result["vllm"], list(args.rates))
        _log("kit / vLLM alone:\n" + json.dumps(result["compare"], indent=1))
    result_path.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
