"""Ray processes of this user: find them, wait for them to end, kill those left behind.

Owns the kit's Ray session folder root (``$TMPDIR/labkit-ray``, one sub-folder per embedded
cluster), which is how a cluster's processes are told apart from any other Ray on the machine.
psutil is imported inside each function, never at import time.
"""

from __future__ import annotations

import os
import time
from typing import Any

from labkit.cluster.config import ClusterConfig

__all__ = ["find_ray_processes", "kill_leftovers", "list_session_dirs"]

_RAY_PROCESS_NAMES = (
    "raylet",
    "gcs_server",
    "plasma_store",
    "dashboard",
    "ray::",
    "ray_client_server",
    "log_monitor",
    "monitor.py",
    "dashboard_agent",
    "runtime_env_agent",
)


def _temp_root(config: ClusterConfig | None) -> str:
    if config and config.temp_dir:
        return config.temp_dir
    import tempfile

    return os.path.join(tempfile.gettempdir(), "labkit-ray")


def find_ray_processes(marker: str | None = None) -> list[dict[str, Any]]:
    """Return Ray processes of this user, optionally only those whose command line has ``marker``.

    Parameters
    ----------
    marker : str, optional
        A substring of the command line, e.g. the kit's session folder.

    Returns
    -------
    list of dict
        ``pid``, ``name`` and the first 200 characters of the command line.
    """
    import psutil  # heavy-ish; only for teardown checks

    found = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid", "name", "cmdline", "uids"]):
        try:
            if proc.info["pid"] == me or proc.info["uids"] is None or proc.info["uids"].real != os.getuid():
                continue
            cmd = " ".join(proc.info["cmdline"] or [])
            name = proc.info["name"] or ""
            if not any(key in name or key in cmd for key in _RAY_PROCESS_NAMES):
                continue
            if marker is not None and marker not in cmd:
                continue
            found.append({"pid": proc.info["pid"], "name": name, "cmdline": cmd[:200]})
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _session_descendants(marker: str) -> list[Any]:
    import psutil

    found = []
    for item in find_ray_processes(marker):
        try:
            found.extend(psutil.Process(item["pid"]).children(recursive=True))
        except psutil.NoSuchProcess:
            continue
    return found


def _kill_survivors(processes: list[Any]) -> None:
    import psutil

    for proc in processes:
        try:
            if proc.is_running():
                proc.kill()
        except psutil.NoSuchProcess:
            continue


def _wait_for_no_processes(marker: str, timeout_s: float) -> None:
    import psutil

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = find_ray_processes(marker)
        if not left:
            return
        time.sleep(0.2)
    for item in find_ray_processes(marker):
        try:
            psutil.Process(item["pid"]).kill()
        except psutil.NoSuchProcess:
            continue


def kill_leftovers(marker: str | None = None) -> int:
    """Kill Ray processes that an embedded cluster of the kit left behind (e.g. after a crash).

    Parameters
    ----------
    marker : str, optional
        Substring of their command line; default the kit's Ray session folder.

    Returns
    -------
    int
        How many processes were killed.
    """
    import psutil

    found = find_ray_processes(marker or _temp_root(None))
    for item in found:
        try:
            psutil.Process(item["pid"]).kill()
        except psutil.NoSuchProcess:
            continue
    return len(found)


def list_session_dirs() -> set[str]:
    """Return the folders of the kit's embedded clusters on this machine (one per cluster).

    Returns
    -------
    set of str
        Absolute paths under the kit's Ray root (``$TMPDIR/labkit-ray``).
    """
    root = _temp_root(None)
    try:
        return {os.path.join(root, name) for name in os.listdir(root)}
    except FileNotFoundError:
        return set()
