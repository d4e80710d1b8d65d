"""Fidelity of the load generator: the highest open-loop rate one process on one core sustains.

A fast local no-op streaming server (tests/_fake_openai.py: 16 tokens per response, written at
once) runs in its own process pinned to one core; each client runs in its own process pinned to
the other core. For every offered rate the script runs labkit's load generator and then vLLM's
benchmark client (``vllm bench serve``, called through its Python entry point because the console
script fails with the CPU build) against the same server, and records:

- kit: achieved send rate / scheduled rate, schedule lag p50/p99/max, e2e p50/p99 (from the
  intended and from the actual send), errors, client and server CPU;
- vLLM: request throughput (completions / duration, its own figure), send rate from its
  per-request start times, e2e p50/p99, failures, client and server CPU.

"Held" means: achieved >= 99% of the offered rate, no failures, and (kit) schedule lag
p99 <= 1 ms, on a quiet machine. The machine is shared: each try measures ``other``, the CPU
that other processes took on the two cores during it (busy time from /proc/stat minus the
client's and the server's own CPU); a try with more than ``--max-foreign`` cores of it is
"noisy" and retried (up to ``--tries``). A step is decided by a quiet try that holds, or by two
quiet tries that do not. ``srv cpu`` shows the server is not the bottleneck; ``runq`` is the
share of the run the client's thread waited for its core (for vLLM that includes its own other
threads, which share the one core).

Usage::

    python benchmarks/bench_load_fidelity.py                     # default rates, writes results
    python benchmarks/bench_load_fidelity.py --rates 1000,2000 --duration 5 --skip-vllm

Writes ``benchmarks/results/load_fidelity.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "tests" / "_fake_openai.py"
MODEL = "fake-model"


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _busy_cpu(cpus: list[int]) -> float:
    """CPU seconds the given cores have been busy (all processes), from /proc/stat."""
    total = 0.0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            values = [int(v) for v in fields]
            total += sum(values) - values[3] - values[4]  # minus idle and iowait
    return total / os.sysconf("SC_CLK_TCK")


class _Foreign:
    """How much CPU other processes took on the benchmark's cores during a timed section.

    Busy time of the cores minus the CPU of this process and of the server, per second of wall
    time: 0.0 is a quiet machine, 1.0 means one whole core went to other work.
    """

    def __init__(self, server_pid: int, cpus: list[int]) -> None:
        self.server_pid, self.cpus = server_pid, cpus
        self.cores = float("nan")

    def __enter__(self) -> _Foreign:
        self.b0, self.o0, self.t0 = _busy_cpu(self.cpus), _own_cpu() + _cpu_of(self.server_pid), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        own = _own_cpu() + _cpu_of(self.server_pid) - self.o0
        self.cores = max(0.0, _busy_cpu(self.cpus) - self.b0 - own) / (time.perf_counter() - self.t0)


def _runqueue_wait() -> float:
    """Seconds this thread has waited, runnable, for a CPU (other work on the core)."""
    try:
        return int(Path("/proc/thread-self/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return float("nan")


# --------------------------------------------------------------------------- workers
def worker_kit(args: argparse.Namespace) -> dict:
    import tempfile

    from labkit.load import LoadConfig, run_load
    from labkit.stats import summarize_run

    records = Path(tempfile.mkdtemp(prefix="labkit-fidelity-")) / "records.jsonl"  # as a real run writes
    cfg = LoadConfig(url=args.url, model=MODEL, arrival=args.arrival, rate_rps=args.rate, duration_s=args.duration,
                     warmup_requests=args.warmups, max_tokens=args.tokens, prompt_tokens=32, seed=0,
                     timeout_s=60.0, hard_stop_s=args.duration * 6 + 30, records_path=str(records))
    c0, w0, t0 = _own_cpu(), _runqueue_wait(), time.perf_counter()
    with _Foreign(args.server_pid, args.cpus) as foreign:
        res = run_load(cfg, progress=False)
    wall = time.perf_counter() - t0
    cpu, runq = (_own_cpu() - c0) / wall, (_runqueue_wait() - w0) / wall
    records.unlink()
    records.parent.rmdir()
    s = summarize_run(res.records, offered_rate_rps=args.rate, ci=False)
    m = res.measured
    sched = sorted(r.scheduled_s for r in m)
    scheduled_rate = (len(sched) - 1) / (sched[-1] - sched[0])
    lag, e2e, e2e_u = (s.metrics[k].percentiles for k in ("schedule_lag", "e2e", "e2e_uncorrected"))
    done = max(r.done_s for r in m)
    return {
        "tool": "kit", "rate_rps": args.rate, "requests": s.requests, "errors": s.errors,
        "scheduled_rate_rps": scheduled_rate, "achieved_rate_rps": s.achieved_rate_rps,
        "achieved_ratio": s.achieved_rate_rps / scheduled_rate,
        "throughput_rps": s.ok / (done - sched[0]),
        "lag_p50_ms": lag["p50"] * 1e3, "lag_p99_ms": lag["p99"] * 1e3,
        "lag_max_ms": s.metrics["schedule_lag"].max * 1e3,
        "e2e_p50_ms": e2e["p50"] * 1e3, "e2e_p99_ms": e2e["p99"] * 1e3,
        "e2e_uncorrected_p50_ms": e2e_u["p50"] * 1e3, "e2e_uncorrected_p99_ms": e2e_u["p99"] * 1e3,
        "client_cpu": cpu, "client_runqueue_wait": runq, "foreign_cores": foreign.cores,
    }


def worker_vllm(args: argparse.Namespace) -> dict:
    import contextlib
    import io

    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    n = int(round(args.rate * args.duration))
    argv = ["--backend", "vllm", "--base-url", args.url, "--endpoint", "/v1/completions", "--model", MODEL,
            "--tokenizer", args.tokenizer, "--dataset-name", "random", "--random-input-len", "32",
            "--random-output-len", str(args.tokens), "--num-prompts", str(n), "--request-rate", str(args.rate),
            "--burstiness", "1.0" if args.arrival == "poisson" else "inf", "--seed", "0", "--disable-tqdm",
            "--num-warmups", str(args.warmups), "--percentile-metrics", "ttft,tpot,itl,e2el",
            "--metric-percentiles", "50,99", "--ignore-eos", "--ready-check-timeout-sec", "30",
            "--save-detailed"]  # keeps the per-request start times
    vargs = parser.parse_args(argv)
    log = io.StringIO()
    w0, t0 = _runqueue_wait(), time.perf_counter()
    with contextlib.redirect_stdout(log), _Foreign(args.server_pid, args.cpus) as foreign:
        result = main(vargs)
    runq = (_runqueue_wait() - w0) / (time.perf_counter() - t0)
    starts = sorted(result["start_times"])
    send_rate = (len(starts) - 1) / (starts[-1] - starts[0])
    return {
        "tool": "vllm", "rate_rps": args.rate, "requests": n, "errors": result["failed"],
        "achieved_rate_rps": result["request_throughput"], "achieved_ratio": result["request_throughput"] / args.rate,
        "send_rate_rps": send_rate, "duration_s": result["duration"],
        "e2e_p50_ms": result["median_e2el_ms"], "e2e_p99_ms": result["p99_e2el_ms"],
        "ttft_p50_ms": result["median_ttft_ms"], "ttft_p99_ms": result["p99_ttft_ms"],
        "client_cpu": None,  # main() also makes and tokenizes its prompts: no fair CPU figure
        "client_runqueue_wait": runq, "foreign_cores": foreign.cores,
    }


# --------------------------------------------------------------------------- driver
def _held(row: dict) -> bool:
    ok = row["errors"] == 0 and row["achieved_ratio"] >= 0.99
    if row["tool"] == "kit":
        ok = ok and row["lag_p99_ms"] <= 1.0
    return ok


def _run_worker(tool: str, args: argparse.Namespace, url: str, rate: float, tokenizer: str,
                server_pid: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", tool, "--url", url, "--rate", str(rate), "--duration",
           str(args.duration), "--arrival", args.arrival, "--tokens", str(args.tokens), "--warmups",
           str(args.warmups), "--tokenizer", tokenizer, "--cpu", str(args.client_cpu), "--server-pid",
           str(server_pid), "--cpus", f"{args.server_cpu},{args.client_cpu}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.duration * 20 + 300)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    msg = f"{tool} worker at {rate} req/s failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    raise RuntimeError(msg)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def _table(rows: list[dict]) -> str:
    head = (f"{'tool':<5}{'offered':>9}{'achieved':>10}{'ratio':>7}{'errors':>7}{'lag p99':>9}{'lag max':>9}"
            f"{'e2e p50':>9}{'e2e p99':>10}{'cli cpu':>8}{'srv cpu':>8}{'runq':>6}{'other':>7}  held")
    lines = [head, "-" * len(head)]
    for r in rows:
        lag99 = f"{r['lag_p99_ms']:.2f}" if "lag_p99_ms" in r else "-"
        lagmax = f"{r['lag_max_ms']:.1f}" if "lag_max_ms" in r else "-"
        lines.append(f"{r['tool']:<5}{r['rate_rps']:>9.0f}{r['achieved_rate_rps']:>10.1f}{r['achieved_ratio']:>7.3f}"
                     f"{r['errors']:>7}{lag99:>9}{lagmax:>9}{r['e2e_p50_ms']:>9.2f}{r['e2e_p99_ms']:>10.2f}"
                     f"{_pct(r['client_cpu']):>8}{_pct(r['server_cpu']):>8}{_pct(r['client_runqueue_wait']):>6}"
                     f"{_pct(r['foreign_cores']):>7}  {'yes' if r['held'] else ('NO' if r['quiet'] else 'noisy')}")
    return "\n".join(lines)


def drive(args: argparse.Namespace) -> int:
    import signal

    from labkit.models import make_tiny_model

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below: stop the server
    tokenizer = str(make_tiny_model())  # vLLM's client needs a tokenizer for its random prompts
    rates = [float(r) for r in args.rates.split(",")]
    server = subprocess.Popen([sys.executable, str(SERVER), "--port", "0", "--output-tokens", str(args.tokens),
                               "--cpu", str(args.server_cpu), "--uvloop", "--short-slice"],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    rows: list[dict] = []
    try:
        port = int(server.stdout.readline().split()[1])
        url = f"http://127.0.0.1:{port}"
        tools = [t for t in args.tools.split(",") if not (t == "vllm" and args.skip_vllm)]
        failures = dict.fromkeys(tools, 0)
        for rate in rates:
            for tool in tools:
                if tool == "vllm" and failures[tool] >= 2:  # past its limit: overloaded steps take long
                    continue
                best, valid_failures = None, 0
                for attempt in range(1, args.tries + 1):
                    load0 = os.getloadavg()[0]
                    s0, w0 = _cpu_of(server.pid), time.perf_counter()
                    row = _run_worker(tool, args, url, rate, tokenizer, server.pid)
                    row["server_cpu"] = (_cpu_of(server.pid) - s0) / (time.perf_counter() - w0)
                    row["loadavg_1m_before"] = load0
                    row["attempt"] = attempt
                    row["quiet"] = row["foreign_cores"] <= args.max_foreign
                    row["held"] = _held(row) and row["quiet"]
                    key = (row["held"], row["quiet"], row["achieved_ratio"])
                    if best is None or key > (best["held"], best["quiet"], best["achieved_ratio"]):
                        best = row
                    if best["held"]:
                        break
                    if row["quiet"]:  # a failure on a quiet machine counts; two of them decide
                        valid_failures += 1
                        if valid_failures >= 2:
                            break
                rows.append(best)
                failures[tool] = 0 if best["held"] else failures[tool] + 1
                print(_table([best]).splitlines()[-1], flush=True)
    finally:
        server.terminate()
        server.communicate(timeout=30)
    summary = {}
    for tool in {r["tool"] for r in rows}:
        held = [r["rate_rps"] for r in rows if r["tool"] == tool and r["held"]]
        summary[tool] = {"highest_rate_held_rps": max(held) if held else None}
    if "kit" in summary and "vllm" in summary and summary["vllm"]["highest_rate_held_rps"]:
        summary["kit_over_vllm"] = (summary["kit"]["highest_rate_held_rps"] or 0) / summary["vllm"][
            "highest_rate_held_rps"]
    doc = {
        "benchmark": "load_fidelity", "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "setup": {"server": "tests/_fake_openai.py (asyncio protocol + uvloop), 16 tokens per response",
                  "server_cpu": args.server_cpu, "client_cpu": args.client_cpu, "arrival": args.arrival,
                  "duration_s": args.duration, "warmups": args.warmups, "tries": args.tries,
                  "max_foreign_cores": args.max_foreign,
                  "held_means": "achieved >= 99% of offered, no errors, kit schedule lag p99 <= 1 ms, "
                                "on a quiet machine (other processes used <= max_foreign_cores meanwhile)",
                  "cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine(),
                  "vllm": _version("vllm"), "uvloop": _version("uvloop")},
        "summary": summary, "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(_table(rows))
    print(json.dumps(summary))
    print(f"wrote {out}")
    return 0


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rates", default="1000,1500,2000,2500,3000,4000,5000,6000,7000,8000")
    p.add_argument("--duration", type=float, default=3.0, help="measured seconds per step")
    p.add_argument("--arrival", choices=["poisson", "constant"], default="poisson")
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--warmups", type=int, default=100)
    p.add_argument("--tries", type=int, default=6, help="most tries per step (noisy tries are retried)")
    p.add_argument("--max-foreign", type=float, default=0.05,
                   help="a try counts only if other processes used at most this many cores meanwhile")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    p.add_argument("--tools", default="kit,vllm", help="which clients to run, in this order")
    p.add_argument("--skip-vllm", action="store_true", help="same as --tools kit")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "load_fidelity.json"))
    p.add_argument("--worker", choices=["kit", "vllm"], help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    p.add_argument("--tokenizer", help=argparse.SUPPRESS)
    p.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    p.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    p.add_argument("--cpus", type=lambda v: [int(c) for c in v.split(",")], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        if args.cpu is not None:
            os.sched_setaffinity(0, {args.cpu})
        row = worker_kit(args) if args.worker == "kit" else worker_vllm(args)
        print("RESULT " + json.dumps(row), flush=True)
        return 0
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
