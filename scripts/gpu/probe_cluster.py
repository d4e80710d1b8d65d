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


def main(argv: list[str] | None = None) -> int:
    """Print host facts, start the split cluster, report; write log tails on failure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--gpus-per-node", type=int, default=1)
    parser.add_argument("--cpus-per-node", type=float, default=4.0)
    parser.add_argument("--start-timeout-s", type=float, default=150.0)
    parser.add_argument("--logs", action="store_true", help="write the log tails even when the start works")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    facts = host_facts()
    print(json.dumps(facts, indent=1), flush=True)
    import labkit
    from labkit.cluster import _temp_root

    root = os.path.join(_temp_root(None))
    before = set(glob.glob(os.path.join(root, "*")))
    started = time.monotonic()
    result: dict[str, Any] = {"facts": facts}
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
    print(json.dumps({k: v for k, v in result.items() if k != "facts"}, indent=1, default=str), flush=True)
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
