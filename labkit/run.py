"""``labkit run``: execute every chapter notebook headless with papermill, into one run folder.

Owns the automated path: each notebook runs in its own kernel with the parameters given (the
embedded CPU defaults, or a real cluster's), its executed copy, figures and verification logs go
to ``verification/runs/<timestamp>/``, any Ray processes a failed notebook left are killed, and
the exit code says whether everything ran.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labkit.errors import ConfigError

__all__ = ["NOTEBOOKS", "LabRun", "run_lab"]

NOTEBOOKS = (
    "00_environment_check.ipynb",
    "01_chapter_walkthrough.ipynb",
    "02_load_exercise.ipynb",
    "03_instructor_grading.ipynb",
)


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@dataclass
class LabRun:
    """What one ``labkit run`` did: per notebook, status and seconds; where the outputs are."""

    out_dir: Path
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every notebook ran to the end."""
        return bool(self.results) and all(r["status"] == "ok" for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {"out_dir": str(self.out_dir), "ok": self.ok, "results": self.results}

    def __repr__(self) -> str:
        lines = [f"LabRun({self.out_dir}, ok={self.ok})"]
        lines += [
            f"  {r['notebook']:<32} {r['status']:<6} {r['seconds']:7.1f} s  {r.get('error') or ''}"
            for r in self.results
        ]
        return "\n".join(lines)


def run_folder(out_dir: str | Path | None = None) -> Path:
    """Return the absolute run folder (notebooks run with ``cwd=notebooks/``, so it must be absolute).

    Parameters
    ----------
    out_dir : str or Path, optional
        The folder asked for; default ``verification/runs/<UTC timestamp>/`` of the checkout.

    Returns
    -------
    Path
        An absolute path.
    """
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return (Path(out_dir) if out_dir else _repo_root() / "verification" / "runs" / stamp).resolve()


def run_lab(
    out_dir: str | Path | None = None,
    *,
    notebooks: Sequence[str] | None = None,
    parameters: Mapping[str, Any] | None = None,
    per_notebook: Mapping[str, Mapping[str, Any]] | None = None,
    kernel_name: str | None = None,
    timeout_s: float = 1800.0,
    stop_on_failure: bool = False,
    progress: Callable[[str], Any] | None = None,
) -> LabRun:
    """Execute the chapter notebooks with papermill.

    Parameters
    ----------
    out_dir : str or Path, optional
        Run folder; default ``verification/runs/<UTC timestamp>/`` of the checkout.
    notebooks : sequence of str, optional
        File names under ``notebooks/``; default all of :data:`NOTEBOOKS`, in order.
    parameters : mapping, optional
        Parameters for every notebook (each notebook ignores the ones it does not have;
        ``output_dir`` is always set to the run folder).
    per_notebook : mapping, optional
        ``{notebook: {parameter: value}}`` overrides.
    kernel_name : str, optional
        Jupyter kernel; default the notebook's (python3 of this environment).
    timeout_s : float
        Per-cell execution time-out.
    stop_on_failure : bool
        Skip the remaining notebooks after a failure.
    progress : callable, optional
        Called with one line when a notebook starts and one when it ends (``print`` in ``labkit run``).

    Returns
    -------
    LabRun
        Status and time of each notebook.

    Raises
    ------
    ConfigError
        If a notebook name is unknown, or a parameter is one that none of the notebooks has.
    """
    import papermill  # heavy; only for runs

    from labkit.cluster import kill_leftovers, list_session_dirs

    source = _repo_root() / "notebooks"
    names = list(notebooks or NOTEBOOKS)
    unknown = [n for n in names if not (source / n).exists()]
    if unknown:
        msg = f"Unknown notebook(s) {unknown}. Available: {sorted(p.name for p in source.glob('*.ipynb'))}"
        raise ConfigError(msg, field="notebooks", value=unknown)
    declared = {name: _declared_parameters(source / name) for name in names}
    _check_parameters(parameters or {}, per_notebook or {}, declared)
    out = run_folder(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = LabRun(out_dir=out)
    failed = False
    say = progress or (lambda _line: None)
    for number, name in enumerate(names, start=1):
        if failed and stop_on_failure:
            run.results.append({"notebook": name, "status": "skipped", "seconds": 0.0})
            say(f"[{number}/{len(names)}] {name}: skipped (an earlier notebook failed)")
            continue
        params = {**(parameters or {}), **((per_notebook or {}).get(name, {})), "output_dir": str(out)}
        params = {k: v for k, v in params.items() if k in declared[name]}  # papermill warns about the others
        started = time.monotonic()
        before = list_session_dirs()
        entry: dict[str, Any] = {"notebook": name}
        say(f"[{number}/{len(names)}] {name}: started at {dt.datetime.now().strftime('%H:%M:%S')}")
        sockets = tempfile.mkdtemp(prefix="labkit-kernel-")
        try:
            papermill.execute_notebook(
                str(source / name),
                str(out / name),
                parameters=params,
                cwd=str(source),
                kernel_name=kernel_name,
                progress_bar=False,
                execution_timeout=timeout_s,
                report_mode=False,
                config=_kernel_config(sockets),
            )
            entry["status"] = "ok"
        except papermill.PapermillExecutionError as err:
            entry.update(status="failed", error=f"cell {err.cell_index}: {err.ename}: {str(err.evalue)[:300]}")
            failed = True
        except Exception as err:  # noqa: BLE001 - a kernel crash must not stop the other notebooks
            entry.update(status="failed", error=f"{type(err).__name__}: {str(err)[:300]}")
            failed = True
        finally:
            entry["seconds"] = round(time.monotonic() - started, 1)
            # Only clusters this notebook started: never another one running on the machine.
            entry["leftover_ray_processes_killed"] = sum(kill_leftovers(d) for d in list_session_dirs() - before)
            shutil.rmtree(sockets, ignore_errors=True)
        run.results.append(entry)
        outcome = "done" if entry["status"] == "ok" else f"FAILED ({entry['error']})"
        say(f"[{number}/{len(names)}] {name}: {outcome} in {_duration(entry['seconds'])}")
    (out / "run.json").write_text(json.dumps(run.to_dict(), indent=2) + "\n")
    return run


def _declared_parameters(path: Path) -> set[str]:
    """Names the notebook's ``parameters`` cell assigns (read with ``ast``: comments may say anything)."""
    import ast

    book = json.loads(path.read_text(encoding="utf-8"))
    for cell in book.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            source = "".join(cell.get("source", []))
            names: set[str] = set()
            for node in ast.parse(source).body:
                targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
                names.update(t.id for t in targets if isinstance(t, ast.Name))
            return names
    return set()


def _check_parameters(
    parameters: Mapping[str, Any], per_notebook: Mapping[str, Mapping[str, Any]], declared: Mapping[str, set[str]]
) -> None:
    known = set().union(*declared.values()) if declared else set()
    unknown = sorted(set(parameters) - known)
    for name, overrides in per_notebook.items():
        if name in declared:  # overrides of notebooks outside this run are not used
            unknown += [f"{name}:{key}" for key in sorted(set(overrides) - declared[name])]
    if unknown:
        msg = f"Unknown notebook parameter(s) {unknown}: no notebook of this run has them. Known: {sorted(known)}"
        raise ConfigError(msg, field="parameters", value=unknown)


def _kernel_config(sockets: str) -> Any:
    """Kernel over local IPC sockets in ``sockets`` (a private folder), not unencrypted TCP ports."""
    from traitlets.config import Config

    return Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(sockets, "kernel")}})


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
