"""The verification log on disk: :class:`VerificationLog`, its runs folder and :func:`checkpoint`.

Owns: where logs go (:func:`default_runs_dir`), who wrote them (:func:`resolve_learner_id`, the id
remembered in a runs folder, :func:`find_own_logs`), the atomic write and the checked read of a log
(:meth:`VerificationLog.save`, :meth:`VerificationLog.load`), its notebook display, and
:func:`checkpoint`, the one call a notebook makes to record and write its log.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from labkit.errors import RecordError
from labkit.record.build import build_log
from labkit.record.environment import record_environment
from labkit.record.schema import (
    MAX_LOG_BYTES,
    SCHEMA_VERSION,
    _checkout_root,
    canonical_json,
    compute_log_hash,
    validate_log,
)

__all__ = [
    "ANONYMOUS",
    "VerificationLog",
    "checkpoint",
    "default_runs_dir",
    "find_own_logs",
    "remember_learner_id",
    "resolve_learner_id",
]

ANONYMOUS = "anonymous"  # the id of a log whose learner set none (the grader flags it)
LEARNER_ID_FILE = ".learner_id"  # in a runs folder: the id a notebook was given, for the next ones


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


def _given(value: Any) -> str | None:
    """Return a learner id that was really given: not None, blank or the placeholder."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value if value and value != ANONYMOUS else None


def _remembered(folder: Path) -> str | None:
    try:
        text = (folder / LEARNER_ID_FILE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return _given(text[:200])


def resolve_learner_id(learner_id: str | None = None, runs_dir: str | os.PathLike[str] | None = None) -> str:
    """Return who a log belongs to: the id given, else the one set once for every notebook.

    In order: ``learner_id`` when it is a non-empty string other than ``"anonymous"``; else
    ``$LABKIT_LEARNER_ID``; else the id remembered in ``runs_dir`` or in :func:`default_runs_dir`
    (a notebook given an id writes it there, see :func:`checkpoint`); else ``"anonymous"``.

    Parameters
    ----------
    learner_id : str, optional
        What the notebook's ``learner_id`` parameter holds (None, ``""`` and ``"anonymous"`` mean unset).
    runs_dir : str or path, optional
        The folder the log goes to.

    Returns
    -------
    str
        The learner id.
    """
    found = _given(learner_id) or _given(os.environ.get("LABKIT_LEARNER_ID"))
    if found:
        return found
    folders = [Path(runs_dir).expanduser()] if runs_dir is not None else []
    for folder in [*folders, default_runs_dir()]:
        found = _remembered(folder)
        if found:
            return found
    return ANONYMOUS


def remember_learner_id(learner_id: str, runs_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """Write ``learner_id`` into the runs folder, where the next notebooks find it.

    Parameters
    ----------
    learner_id : str
        The id (None, blank and ``"anonymous"`` are not remembered).
    runs_dir : str or path, optional
        The runs folder; :func:`default_runs_dir` when omitted.

    Returns
    -------
    Path or None
        The file written, or None when there was nothing to remember or the folder is not writable.
    """
    given = _given(learner_id)
    folder = Path(runs_dir).expanduser() if runs_dir is not None else default_runs_dir()
    if given is None or _remembered(folder) == given:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / LEARNER_ID_FILE).write_text(given + "\n", encoding="utf-8")
    except OSError:
        return None  # the log itself reports an unwritable folder
    return folder / LEARNER_ID_FILE


def find_own_logs(learner_id: str | None = None, runs_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Return the verification logs under ``runs_dir`` that belong to the learner, oldest first.

    Files are only read as size-limited JSON (nothing in them is executed); those that are not
    logs, or belong to someone else, are left out.

    Parameters
    ----------
    learner_id : str, optional
        Whose logs; resolved by :func:`resolve_learner_id`.
    runs_dir : str or path, optional
        The folder searched recursively; :func:`default_runs_dir` when omitted.

    Returns
    -------
    list of Path
        The learner's log files.
    """
    folder = Path(runs_dir).expanduser() if runs_dir is not None else default_runs_dir()
    me = resolve_learner_id(learner_id, folder)
    found = []
    for path in sorted(folder.rglob("*.json")) if folder.is_dir() else []:
        try:
            if path.name.startswith(".") or path.stat().st_size > MAX_LOG_BYTES:
                continue
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            continue
        if isinstance(data, dict) and "integrity" in data and data.get("learner_id") == me:
            timing = cast("dict[str, Any]", data.get("timing")) if isinstance(data.get("timing"), dict) else {}
            found.append((str(timing.get("finished_at", "")), path))
    return [path for _, path in sorted(found)]


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
        Who ran it. None, ``""`` or ``"anonymous"``: ``$LABKIT_LEARNER_ID``, else the id a notebook
        was given before in this runs folder (or :func:`default_runs_dir`), else ``"anonymous"``
        (see :func:`resolve_learner_id`). An id given here is remembered in the runs folder for
        the notebooks that follow.
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
        learner_id=resolve_learner_id(learner_id, runs_dir),
        cluster=cluster,
        model=model,
        records=records,
        samples=samples,
        started_at=started_at,
    )
    log = VerificationLog(data)
    log.save(runs_dir)
    if _given(learner_id):
        remember_learner_id(data["learner_id"], runs_dir)
    return log
