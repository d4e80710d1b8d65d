"""The gradebook: one row per learner and exercise, written as CSV and an HTML report.

Owns: :class:`GradeRow`, :class:`Gradebook` with its text and HTML views and
:meth:`Gradebook.write` (``gradebook.csv``, ``findings.csv``, ``report.html``). Every string
from a log is escaped in the HTML report and defused in the CSV.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labkit.errors import GradingError
from labkit.grade.checks import _hardware_gpus
from labkit.grade.loader import _dict, _get, _num
from labkit.grade.rubric import _CATEGORIES, _SEVERITY_ORDER, FINDING_CODES, Finding, Rubric, _clean
from labkit.record import redact_string, secret_env_values

__all__ = ["GradeRow", "Gradebook"]


# --------------------------------------------------------------------------------------------
# The gradebook
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GradeRow:
    """One learner and exercise in the gradebook (the attempt the rubric's policy picked)."""

    learner_id: str
    exercise: str
    when: str
    backend: str
    hardware: str
    completeness: float
    consistency: float
    plausibility: float
    flags: tuple[str, ...]
    score: float
    attempts: int
    file: str

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        out = dataclasses.asdict(self)
        out["flags"] = list(self.flags)
        return out


_CSV_COLUMNS = (
    "learner_id",
    "exercise",
    "when",
    "backend",
    "hardware",
    "completeness",
    "consistency",
    "plausibility",
    "flags",
    "score",
    "attempts",
    "file",
)


# A formula starts with one of these (ASCII or full-width) at the start of a cell, and a
# spreadsheet that splits on another delimiter (";" in many locales, tab, "|") starts a cell after it.
_FORMULA = re.compile(r"(^|[,;\t|\r\n]\s*)(?=[=+\-@\uff1d\uff0b\uff0d\uff20])")


def _csv_safe(value: Any, secrets: Sequence[str] = ()) -> Any:
    """Defuse spreadsheet formulas (after any delimiter) and secrets in strings from a log."""
    if not isinstance(value, str):
        return value
    value = redact_string(value, secrets)
    if value[:1] in ("\t", "\r"):
        value = "'" + value
    return _FORMULA.sub(lambda m: m.group(1) + "'", value)


def _safe_html(value: Any, secrets: Sequence[str] = ()) -> str:
    """Escape a string for HTML with secrets redacted."""
    return html.escape(redact_string(str(value), secrets))


def _hardware_text(data: Mapping[str, Any]) -> str:
    hw = _dict(_get(data, "environment.hardware"))
    cpus = _num(hw.get("cpu_count_usable")) or _num(hw.get("cpu_count_logical"))
    memory = _num(hw.get("memory_total_bytes"))
    gpu_names, gpu_count = _hardware_gpus(data)
    parts = [f"{cpus:g} CPU" if cpus else "? CPU", f"{memory / 2**30:.0f} GiB" if memory else "? GiB"]
    if gpu_count:
        parts.append(f"{gpu_count}x {gpu_names[0] if gpu_names else 'GPU'}")
    parts.append(f"{_num(_get(data, 'cluster.node_count')) or 0:g} node(s)")
    return ", ".join(parts)[:200]


def _text(value: Any, limit: int = 200) -> str:
    return _clean(value[:limit]) if isinstance(value, str) else ""


@dataclass
class Gradebook:
    """The graded folder: one row per learner and exercise, every finding, the rubric used."""

    rows: list[GradeRow]
    findings: list[Finding]
    rubric: Rubric
    source: str
    graded_at: str

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "source": self.source,
            "graded_at": self.graded_at,
            "rubric": self.rubric.to_dict(),
            "rows": [r.to_dict() for r in self.rows],
            "findings": [f.to_dict() for f in self.findings],
        }

    def __repr__(self) -> str:
        flagged = sum(1 for r in self.rows if r.flags)
        return (
            f"Gradebook(source={self.source!r}, rows={len(self.rows)}, flagged={flagged}, "
            f"findings={len(self.findings)})"
        )

    def _repr_html_(self) -> str:
        return self._rows_table()

    def _rows_table(self) -> str:
        secrets = secret_env_values(os.environ)
        head = "".join(f"<th>{html.escape(c)}</th>" for c in _CSV_COLUMNS)
        body = []
        for r in self.rows:
            cells = []
            for name in _CSV_COLUMNS:
                value = getattr(r, name)
                if name == "flags":
                    cells.append(
                        "<td>"
                        + " ".join(
                            f"<abbr title='{html.escape(FINDING_CODES[c][2], quote=True)}'>{html.escape(c)}</abbr>"
                            for c in value
                        )
                        + "</td>"
                    )
                elif isinstance(value, float):
                    cells.append(f"<td class='num'>{value:.{1 if name == 'score' else 2}f}</td>")
                else:
                    cells.append(f"<td>{_safe_html(value, secrets)}</td>")
            css = " class='flagged'" if r.flags else ""
            body.append(f"<tr{css}>{''.join(cells)}</tr>")
        return f"<table class='grades'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"

    def to_html(self) -> str:
        """Render the full report: gradebook, findings per file, flag glossary, rubric.

        Returns
        -------
        str
            A standalone HTML page; every string from a log is escaped.
        """
        esc = html.escape
        secrets = secret_env_values(os.environ)
        findings = "".join(
            f"<tr class='{esc(f.severity)}'><td>{_safe_html(f.file, secrets)}</td><td>{esc(f.severity)}</td>"
            f"<td>{esc(f.code)}</td>"
            f"<td>{_safe_html(f.message, secrets)}</td></tr>"
            for f in sorted(self.findings, key=lambda f: (f.file, _SEVERITY_ORDER[f.severity], f.code))
        )
        penalties, caps = self.rubric["penalties"], self.rubric["caps"]
        glossary = "".join(
            f"<tr><td>{esc(code)}</td><td>{esc(cat)}</td><td>{esc(sev)}</td><td>{penalties.get(code, 0)}</td>"
            f"<td>{caps.get(code, '')}</td><td>{esc(text)}</td></tr>"
            for code, (cat, sev, text) in FINDING_CODES.items()
        )
        scores = [r.score for r in self.rows]
        mean = f"{sum(scores) / len(scores):.1f}" if scores else "n/a"
        weights = ", ".join(f"{k} {v}" for k, v in self.rubric["weights"].items() if k in _CATEGORIES)
        return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>labkit gradebook</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }} table {{ border-collapse: collapse; margin-bottom: 2em; }}
td, th {{ border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }}
td.num {{ text-align: right; }} tr.flagged td {{ background: #fff4e5; }} tr.error td {{ color: #a40000; }}
tr.info td {{ color: #666; }} abbr {{ text-decoration: underline dotted; }}
</style></head><body>
<h1>Gradebook</h1>
<p>Folder: {_safe_html(self.source, secrets)} &middot; graded {esc(self.graded_at)} &middot;
{len(self.rows)} rows &middot; mean score {mean} &middot; {sum(1 for r in self.rows if r.flags)} flagged &middot;
rubric {esc(self.rubric.source)} (weights: {esc(weights)}).</p>
<p>Each row is one learner and exercise; scores are 0..1 per category and 0..100 overall. Hover a flag for
its meaning; the glossary below lists penalties and caps.</p>
{self._rows_table()}
<h2>Findings by file</h2>
<table><thead><tr><th>file</th><th>severity</th><th>code</th><th>message</th></tr></thead>
<tbody>{findings}</tbody></table>
<h2>What the flags mean</h2>
<table><thead><tr><th>code</th><th>category</th><th>severity</th><th>penalty</th><th>score cap</th>
<th>meaning</th></tr></thead><tbody>{glossary}</tbody></table>
<h2>Rubric</h2><pre>{esc(json.dumps(self.rubric.to_dict(), indent=2))}</pre>
</body></html>
"""

    def write(self, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
        """Write ``gradebook.csv``, ``findings.csv`` and ``report.html`` into a folder.

        Grading a folder later skips these three files.

        Parameters
        ----------
        out_dir : str or path
            Created if missing.

        Returns
        -------
        dict
            ``{"gradebook": path, "findings": path, "report": path}``.

        Raises
        ------
        GradingError
            If the folder cannot be written.
        """
        out = Path(out_dir)
        paths = {
            "gradebook": out / "gradebook.csv",
            "findings": out / "findings.csv",
            "report": out / "report.html",
        }
        secrets = secret_env_values(os.environ)
        try:
            out.mkdir(parents=True, exist_ok=True)
            with paths["gradebook"].open("w", newline="", encoding="utf-8", errors="backslashreplace") as handle:
                writer = csv.writer(handle)
                writer.writerow(_CSV_COLUMNS)
                for r in self.rows:
                    d = r.to_dict()
                    d["flags"] = ";".join(r.flags)
                    for k in ("completeness", "consistency", "plausibility"):
                        d[k] = round(d[k], 3)
                    d["score"] = round(d["score"], 1)
                    writer.writerow([_csv_safe(d[c], secrets) for c in _CSV_COLUMNS])
            with paths["findings"].open("w", newline="", encoding="utf-8", errors="backslashreplace") as handle:
                writer = csv.writer(handle)
                writer.writerow(("file", "severity", "category", "code", "message"))
                for f in self.findings:
                    row = (f.file, f.severity, f.category, f.code, f.message)
                    writer.writerow([_csv_safe(x, secrets) for x in row])
            paths["report"].write_text(self.to_html(), encoding="utf-8", errors="backslashreplace")
        except OSError as err:
            msg = f"Cannot write the gradebook to '{out}': {err}. Pick a writable --out folder."
            raise GradingError(msg) from None
        return paths
