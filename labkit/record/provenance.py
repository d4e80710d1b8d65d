"""Provenance of a run: the kit's version and git state, papermill, the Ray cluster, the model.

Owns: the kit description (version, commit, dirty tree), :func:`detect_papermill` (parameters
papermill injected, parsed with :func:`ast.literal_eval`), :func:`describe_cluster` (nodes,
resources and labels, without addresses) and :func:`describe_model` (a model directory's size,
files, hash and parameter estimate, or a Hub id).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from labkit.errors import ConfigError
from labkit.record.environment import _run
from labkit.record.schema import _checkout_root, _jsonable, _number

__all__ = [
    "describe_cluster",
    "describe_model",
    "detect_papermill",
    "notebook_parameters",
]

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


def _kernel_shell() -> Any:
    """The running IPython shell, or None outside a kernel (IPython is never imported here)."""
    ipython = sys.modules.get("IPython")
    return ipython.get_ipython() if ipython is not None else None


def _executed_cells(shell: Any) -> list[str]:
    """Sources of the cells the kernel ran, in order (IPython's ``In``); none without a shell."""
    raw = shell.user_ns.get("In", []) if shell is not None else []
    return [c for c in raw if isinstance(c, str)]


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
        history = _executed_cells(_kernel_shell())
    for i in range(len(history) - 1, -1, -1):
        params = _parse_injected_cell(history[i])
        if not params:
            continue
        earlier = set().union(*(_assigned_names(c) for c in history[:i])) if i else set()
        if earlier & params.keys():
            return {"detected": True, "injected_parameters": params}
    return {"detected": False, "injected_parameters": {}}


def notebook_parameters(
    namespace: Mapping[str, Any] | None = None,
    history: Sequence[str] | None = None,
    *,
    exclude: Sequence[str] = ("output_dir",),
) -> dict[str, Any]:
    """Return the running notebook's parameters with the values this run uses, for :func:`checkpoint`.

    The names are those its ``parameters`` cell assigns (a cell whose first line starts with
    ``# Parameters``, e.g. ``# Parameters: papermill and make run replace these.``) and those
    papermill's injected cell (first line exactly ``# Parameters``) assigns; the values are read
    from the kernel's namespace, so a value papermill injected is the one recorded. Call it in the
    cell right after the parameters, before any cell changes one: then the log cannot drift from
    the notebook, whatever parameters are added later.

    Parameters
    ----------
    namespace : mapping, optional
        The notebook's variables; the IPython kernel's when omitted.
    history : sequence of str, optional
        Executed cell sources in order; IPython's ``In`` when omitted.
    exclude : sequence of str
        Names left out: ``output_dir`` by default (where the run writes, a path of this machine,
        not a setting of the experiment).

    Returns
    -------
    dict
        ``{name: JSON-ready value}`` in the parameters cell's order, injected-only names last.

    Raises
    ------
    ConfigError
        Outside a notebook (no IPython kernel), or when no executed cell starts with ``# Parameters``.
    """
    if namespace is None or history is None:
        shell = _kernel_shell()
        if shell is None:
            msg = (
                "notebook_parameters() reads a running notebook's parameters cell; "
                "outside one, pass parameters= yourself."
            )
            raise ConfigError(msg, field="namespace", value=None)
        namespace = shell.user_ns if namespace is None else namespace
        if history is None:
            history = _executed_cells(shell)
    names: list[str] = []
    cells = [c for c in history if c.lstrip("\n").startswith("# Parameters")]
    if not cells:
        msg = (
            "No executed cell starts with '# Parameters': run the notebook's parameters cell first "
            "(its first line must start with '# Parameters')."
        )
        raise ConfigError(msg, field="history", value=len(history))
    for source in cells:
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            continue
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            names += [t.id for t in targets if isinstance(t, ast.Name) and t.id not in names]
    return {n: _jsonable(namespace[n]) for n in names if n in namespace and n not in exclude}


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
    empty: dict[str, Any] = {
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
