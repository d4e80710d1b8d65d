"""Ray processes of this user: find them, wait for them to end, kill those left behind.

Owns the kit's Ray session folder root (``$TMPDIR/labkit-ray``, one sub-folder per embedded
cluster), which is how a cluster's processes are told apart from any other Ray on the machine;
the owner file in each sub-folder (which process started it), the removal of folders whose owner
died without stopping its cluster, and Ray's own address file (``ray_current_cluster`` in its
default temp folder), read, checked and restored so a stopped cluster never leaves it pointing
at a dead address. psutil is imported inside each function, never at import time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
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


# -- who owns a session folder ---------------------------------------------------------------------
_OWNER_FILE = "owner.pid"


def _write_owner(folder: str) -> None:
    """Record this process (pid and start time) as the owner of a cluster's session folder."""
    import psutil

    me = psutil.Process()
    with open(os.path.join(folder, _OWNER_FILE), "w", encoding="ascii") as handle:
        handle.write(f"{me.pid} {me.create_time():.3f}\n")


def _owner_alive(folder: str) -> bool:
    """Whether the process that started the folder's cluster still runs (True when unknown)."""
    import psutil

    try:
        with open(os.path.join(folder, _OWNER_FILE), encoding="ascii") as handle:
            pid_text, started_text = handle.read().split()[:2]
        pid, started = int(pid_text), float(started_text)
    except (OSError, ValueError):
        return True  # no owner file (yet): never remove it
    try:
        return abs(psutil.Process(pid).create_time() - started) < 1.0  # not a reused pid
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _remove_stale_session_dirs() -> list[str]:
    """Remove the session folders of embedded clusters whose owner died without stopping them.

    A kernel killed outright (SIGKILL, a crash) cannot clean up; the next cluster started on the
    machine does it: the folders whose owner process is gone, after killing any Ray process left
    in them. Folders of running clusters, and those without an owner file, are kept.

    Returns
    -------
    list of str
        The folders removed.
    """
    removed = []
    for folder in sorted(list_session_dirs()):
        if not os.path.isdir(folder) or _owner_alive(folder):
            continue
        kill_leftovers(folder)
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


# -- Ray's address file ----------------------------------------------------------------------------
def _address_file() -> str:
    import ray

    # Ray private: where Ray keeps the address `ray.init("auto")` reads; no public function names it.
    return str(ray._private.utils.get_ray_address_file(None))


def _read_ray_address_file() -> str | None:
    """Return the address in Ray's ``ray_current_cluster`` file (what ``ray.init()`` connects to)."""
    try:
        with open(_address_file(), encoding="utf-8") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def _address_answers(address: str, timeout_s: float = 0.5) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def _live_previous_address() -> str | None:
    """Before a start: the address in Ray's file if a cluster answers there; a stale file is removed.

    Returns
    -------
    str or None
        The address of another running cluster: the file points there again once the kit's
        cluster has stopped (:func:`_restore_ray_address_file`). While the kit's cluster runs the
        file holds its address, as Ray wants (processes that call ``ray.init()`` find it).
    """
    previous = _read_ray_address_file()
    if previous is None:
        return None
    if _address_answers(previous):
        return previous
    with contextlib.suppress(OSError):
        os.remove(_address_file())
    return None


def _restore_ray_address_file(ours: str | None, previous: str | None, before: str | None = None) -> None:
    """After a stop: Ray's file names a cluster that still runs, or is gone; never the stopped one.

    Ray's ``Cluster.shutdown`` removes the file whatever it holds. This puts back the cluster that
    wrote it after ours started (``before``: what the file held just before the stop), else the one
    that was there before ours (``previous``), when it still answers; else it removes ``ours``.

    Parameters
    ----------
    ours : str, optional
        The stopped cluster's address.
    previous : str, optional
        What the file held before the kit's cluster started (see :func:`_live_previous_address`).
    before : str, optional
        What the file held just before the stop.
    """
    candidates = [a for a in (before, previous) if a and a != ours]
    target = next((a for a in candidates if _address_answers(a)), None)
    current = _read_ray_address_file()
    if target is not None and current != target:
        with contextlib.suppress(OSError), open(_address_file(), "w", encoding="utf-8") as handle:
            handle.write(target)
    elif target is None and current is not None and current == ours:
        with contextlib.suppress(OSError):
            os.remove(_address_file())


def _kill_session_now(marker: str, extra: list[Any] | None = None, timeout_s: float = 1.0) -> int:
    """Kill every process of a cluster's session at once (SIGKILL) and wait up to ``timeout_s``.

    Parameters
    ----------
    marker : str
        The cluster's session folder (on each of its processes' command line).
    extra : list of psutil.Process, optional
        Other processes to kill with them (the engines the replicas started).
    timeout_s : float
        How long to wait for them to be gone (a killed process that is a zombie counts as gone).

    Returns
    -------
    int
        How many processes were killed.
    """
    import psutil

    targets = []
    for item in find_ray_processes(marker):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc = psutil.Process(item["pid"])
            targets += [proc, *proc.children(recursive=True)]
    targets += list(extra or [])
    for proc in targets:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.kill()

    def gone(proc: Any) -> bool:
        try:
            return bool(proc.status() == psutil.STATUS_ZOMBIE)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return True

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not all(gone(proc) for proc in targets):
        time.sleep(0.05)
    return len(targets)
