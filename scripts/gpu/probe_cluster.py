"""Check that the kit's embedded cluster starts on this (GPU) host, and say why when it does not.

    python scripts/gpu/probe_cluster.py [--out DIR] [--gpus-per-node 1] [--cpus-per-node 4]

Prints the host facts that decide how fast Ray's processes start (cores, memory, /dev/shm, GPU
persistence mode, the cost of an NVML start and of ``import ray``, proxy variables by name only),
then starts the kit's split cluster (head plus two workers that own their GPUs), timing each node's
registration. On failure, and with ``--logs`` always, the tails of the raylets', agents' and GCS's
logs are written to ``DIR/probe-logs.txt``. Exit code 0 when the cluster started.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

LOGS = ("raylet*.out", "raylet*.err", "gcs_server*", "dashboard_agent*", "runtime_env_agent*")


def _timed(cmd: list[str]) -> float | str:
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode:
        return f"failed: {done.stderr.strip()[-300:]}"
    return round(time.monotonic() - started, 2)


def host_facts() -> dict[str, Any]:
    """Return what this host offers Ray (no values of environment variables, names only)."""
    facts: dict[str, Any] = {"cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0))}
    for name in ("/sys/fs/cgroup/cpu.max", "/proc/sys/kernel/pid_max"):
        with contextlib.suppress(OSError):
            facts[name] = Path(name).read_text().strip()
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
    facts["mem_total"] = meminfo.get("MemTotal", "").strip()
    facts["mem_available"] = meminfo.get("MemAvailable", "").strip()
    for path in ("/dev/shm", "/tmp"):
        usage = shutil.disk_usage(path)
        facts[f"free_gib {path}"] = round(usage.free / 1024**3, 1)
    facts["proxy_variables_set"] = sorted(k for k in os.environ if "proxy" in k.lower())
    started = time.monotonic()
    try:
        socket.gethostbyname(socket.gethostname())
        facts["hostname_lookup_s"] = round(time.monotonic() - started, 3)
    except OSError as err:
        facts["hostname_lookup_s"] = f"failed after {time.monotonic() - started:.1f} s: {err}"
    if shutil.which("nvidia-smi"):
        facts["gpus"] = (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=index,name,persistence_mode,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            .stdout.strip()
            .splitlines()
        )
    facts["nvml_init_s"] = _timed([sys.executable, "-c", "import pynvml; pynvml.nvmlInit(); pynvml.nvmlShutdown()"])
    facts["import_ray_s"] = _timed([sys.executable, "-c", "import ray"])
    facts["import_ray_dashboard_agent_s"] = _timed([sys.executable, "-c", "import ray.dashboard.agent"])
    return facts


def log_tails(root: str, lines: int = 40) -> str:
    """Return the first and last lines of every node's Ray logs under ``root`` (state dumps left out)."""
    out = []
    seen: set[str] = set()
    for pattern in LOGS:
        for path in sorted(glob.glob(os.path.join(root, "session_2*", "logs", pattern))):
            if os.path.realpath(path) in seen:
                continue
            seen.add(os.path.realpath(path))
            try:
                text = [
                    t for t in Path(path).read_text(errors="replace").splitlines() if not t.startswith("[state-dump]")
                ]
            except OSError:
                continue
            if len(text) > 2 * lines:  # start-up lines first: that is where a slow start shows
                text = [*text[:lines], f"... {len(text) - 2 * lines} lines ...", *text[-lines:]]
            out.append(f"==== {os.path.relpath(path, root)} ({os.path.getsize(path)} bytes)")
            out.extend(text)
    return "\n".join(out)


# One worker added to a head with the kit's arguments, each variant in its own process: which of
# the kit's worker arguments keeps a raylet from registering on this host?
VARIANTS = {
    "kit": {
        "num_gpus": 1,
        "env_vars": {"CUDA_VISIBLE_DEVICES": "0"},
        "resources": {"labkit_worker": 1.0},
        "labels": {"labkit.io/node": "worker-1"},
    },
    "no-env": {"num_gpus": 1, "resources": {"labkit_worker": 1.0}, "labels": {"labkit.io/node": "worker-1"}},
    "env-no-gpus": {"env_vars": {"CUDA_VISIBLE_DEVICES": "0"}},
    "minimal": {},
    "kit-after-nvml": {"num_gpus": 1, "env_vars": {"CUDA_VISIBLE_DEVICES": "0"}, "_nvml_first": True},
    "kit-head-args": {
        "num_gpus": 1,
        "env_vars": {"CUDA_VISIBLE_DEVICES": "0"},
        "num_cpus": 4.0,
        "resources": {"labkit_node_worker-1": 1.0, "labkit_worker": 1.0},
        "labels": {"labkit.io/node": "worker-1"},
        "_kit_head": True,
    },
    "kit-start-fresh-process": {"_kit_start": True},
}
VARIANT_SCRIPT = """
import json, os, sys, tempfile, threading, time, uuid
import ray
from ray.cluster_utils import Cluster
extra = json.loads(sys.argv[1])
sys.path.insert(0, sys.argv[2])  # this script's folder
from probe_cluster import process_snapshot
if extra.pop("_nvml_first", False):  # NVML started and shut down in this process first
    import pynvml
    pynvml.nvmlInit()
    pynvml.nvmlShutdown()
root = os.path.join(tempfile.gettempdir(), "labkit-probe", uuid.uuid4().hex[:8])
os.makedirs(os.path.dirname(ray._private.utils.get_ray_address_file(None)), exist_ok=True)
head = {"num_cpus": 1, "num_gpus": 0, "object_store_memory": 256 * 1024**2, "include_dashboard": False,
        "temp_dir": root}
if extra.pop("_kit_head", False):  # the kit's head arguments
    head.update(num_cpus=1.0, resources={"labkit_head": 1.0, "labkit_node_head": 1.0},
                labels={"labkit.io/node": "head"})
kit_start = extra.pop("_kit_start", False)
if not kit_start:
    cluster = Cluster(initialize_head=True, connect=False, head_node_args=head)
out = {}
def snapshot():
    time.sleep(12)
    out["processes_at_12s"] = process_snapshot(root)
thread = threading.Thread(target=snapshot, daemon=True)
thread.start()
started = time.monotonic()
try:
    if kit_start:
        import labkit
        handle = labkit.start_cluster(num_nodes=2, gpus_per_node=1, gpu_mode="physical", cpus_per_node=4.0,
                                      start_timeout_s=40, temp_dir=root)
        out["result"] = f"registered: {len(handle.nodes())} nodes"
        handle.stop()
    else:
        cluster.add_node(**{"num_cpus": 4, "object_store_memory": 256 * 1024**2, **extra})
        out["result"] = "registered"
except Exception as err:
    out["result"] = f"failed: {err}"[:300]
out["add_node_s"] = round(time.monotonic() - started, 1)
thread.join(15)
logs = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.startswith("raylet")]
out["raylet_logs"] = {os.path.relpath(f, root): os.path.getsize(f) for f in logs}
print(json.dumps(out, indent=1))
if not kit_start:
    cluster.shutdown()
"""


def process_snapshot(marker: str) -> list[dict[str, Any]]:
    """Return every Ray process whose command line names ``marker``: state, wait channel, threads."""
    import psutil

    procs = []
    for p in psutil.process_iter(["pid", "ppid", "name", "cmdline", "status"]):
        cmd = p.info["cmdline"] or []
        if marker not in " ".join(cmd) and "raylet" not in (p.info["name"] or ""):
            continue
        item = {
            "pid": p.info["pid"],
            "ppid": p.info["ppid"],
            "name": p.info["name"],
            "status": p.info["status"],
            "cmd": " ".join(c for c in cmd if not c.startswith("--") or "log" in c or "port" in c)[:300],
        }
        try:
            item["wchan"] = Path(f"/proc/{p.pid}/wchan").read_text()
            item["threads"] = p.num_threads()
            env = Path(f"/proc/{p.pid}/environ").read_text().split(chr(0))
            item["cvd"] = dict(x.split("=", 1) for x in env if "=" in x).get("CUDA_VISIBLE_DEVICES")
        except (OSError, psutil.Error) as err:
            item["err"] = repr(err)
        procs.append(item)
    return procs


def _brief(proc: dict[str, Any]) -> str:
    """One line for a process of :func:`process_snapshot`."""
    return (
        f"{proc['pid']}<{proc['ppid']} {proc['name']} {proc['status']} {proc.get('wchan')} "
        f"threads={proc.get('threads')} cvd={proc.get('cvd')} {proc['cmd'][:120]}"
    )


def bisect(out_dir: Path, only: list[str] | None = None) -> dict[str, Any]:
    """Try each worker-argument variant in its own process; return what each did."""
    results = {}
    for name, extra in VARIANTS.items():
        if only and name not in only:
            continue
        started = time.monotonic()
        try:
            done = subprocess.run(
                [sys.executable, "-c", VARIANT_SCRIPT, json.dumps(extra), str(Path(__file__).resolve().parent)],
                capture_output=True,
                text=True,
                timeout=90,
                check=False,
            )
            text = done.stdout.strip() or done.stderr.strip()[-1500:]
        except subprocess.TimeoutExpired:
            text = "timed out after 90 s"
        results[name] = {"wall_s": round(time.monotonic() - started, 1), "output": text}
        try:
            data = json.loads(text)
            brief = {k: v for k, v in data.items() if k != "processes_at_12s"}
            brief["processes_at_12s"] = [_brief(p) for p in data.get("processes_at_12s", [])]
            text_brief = json.dumps(brief, indent=1)
        except ValueError:
            text_brief = text[-2000:]
        print(f"== variant {name} ({results[name]['wall_s']} s)\n{text_brief}", flush=True)
        subprocess.run(["pkill", "-9", "-f", "labkit-probe"], check=False)
    (out_dir / "bisect.json").write_text(json.dumps(results, indent=1))
    return results


def main(argv: list[str] | None = None) -> int:
    """Print host facts, start the split cluster, report; write log tails on failure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--gpus-per-node", type=int, default=1)
    parser.add_argument("--cpus-per-node", type=float, default=4.0)
    parser.add_argument("--start-timeout-s", type=float, default=150.0)
    parser.add_argument("--logs", action="store_true", help="write the log tails even when the start works")
    parser.add_argument(
        "--bisect", nargs="*", metavar="VARIANT", help=f"first try one worker per variant {list(VARIANTS)}"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    facts = host_facts()
    print(json.dumps(facts, indent=1), flush=True)
    if args.bisect is not None:
        bisect(args.out, args.bisect)
    import labkit
    from labkit.cluster.processes import _temp_root

    root = _temp_root(None)
    before = set(glob.glob(os.path.join(root, "*")))
    started = time.monotonic()
    result: dict[str, Any] = {"facts": facts}
    import threading

    def watch() -> None:
        time.sleep(15)
        result["processes_at_15s"] = [_brief(p) for p in process_snapshot(root)]

    threading.Thread(target=watch, daemon=True).start()
    try:
        handle = labkit.start_cluster(
            num_nodes=3,
            gpus_per_node=args.gpus_per_node,
            gpu_mode="physical",
            cpus_per_node=args.cpus_per_node,
            start_timeout_s=args.start_timeout_s,
        )
    except Exception as err:  # noqa: BLE001 - the probe reports every failure
        result.update(ok=False, error=str(err), after_s=round(time.monotonic() - started, 1))
        handle = None
    else:
        result.update(ok=True, start_s=round(handle.start_s, 1), nodes=[n.to_dict() for n in handle.nodes()])
    print(
        json.dumps({k: v for k, v in result.items() if k not in ("facts", "nodes")}, indent=1, default=str), flush=True
    )
    if not result["ok"] or args.logs:
        new = sorted(set(glob.glob(os.path.join(root, "*"))) - before)
        tails = "\n".join(log_tails(d) for d in new)
        (args.out / "probe-logs.txt").write_text(tails)
        print(f"log tails: {args.out / 'probe-logs.txt'} ({len(tails)} chars)", flush=True)
    if handle is not None:
        handle.stop()
    (args.out / "probe.json").write_text(json.dumps(result, indent=1, default=str))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
