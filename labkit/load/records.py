"""Results of a load run: :class:`RequestRecord`, the JSONL file of records, :class:`LoadResult`.

Owns the record format (one JSON object per line, written and flushed as each request finishes,
read back by :func:`read_records`) and the result of one run with its text and HTML views.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labkit.contracts import STATUSES, RequestRecord
from labkit.errors import LoadGenError
from labkit.load.config import LoadConfig

__all__ = ["STATUSES", "LoadResult", "RequestRecord", "read_records"]  # the record itself: labkit.contracts


def read_records(path: str | Path) -> list[RequestRecord]:
    """Read a JSONL file of records, tolerating a truncated last line.

    Parameters
    ----------
    path : str or Path
        A file written by :func:`run_load` (one JSON object per line).

    Returns
    -------
    list of RequestRecord
        Every complete record, in file order. A last line cut short by an interrupted run
        is skipped; a broken line anywhere else is an error.

    Raises
    ------
    LoadGenError
        The file does not exist, or a line other than the last is not a JSON record.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        msg = f"Cannot read records file '{path}': {err}. Pass the path that run_load wrote."
        raise LoadGenError(msg) from None
    lines = text.split("\n")
    records = []
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(RequestRecord.from_dict(json.loads(line)))
        except (ValueError, TypeError) as err:
            if k >= len(lines) - 1:  # last line, no newline after it: cut short by an interrupt
                break
            msg = f"Line {k + 1} of '{path}' is not a request record ({err}); only the last line may be cut short."
            raise LoadGenError(msg) from None
    return records


class _RecordWriter:
    """Writes one JSON line per record as it comes and flushes it: an interrupt loses nothing.

    The file is started afresh by each run.
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.fh = None
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, record: RequestRecord) -> None:
        if self.fh is not None:
            self.fh.write(json.dumps(record.to_dict(), separators=(",", ":")) + "\n")
            self.fh.flush()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


# --------------------------------------------------------------------------- results
@dataclass
class LoadResult:
    """What one run produced: its records (warm-up included, flagged) and its clock bounds.

    ``start_s`` / ``end_s`` are on the records' clock (``time.perf_counter()``).
    """

    config: LoadConfig
    records: list[RequestRecord]
    start_s: float
    end_s: float
    records_path: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def measured(self) -> list[RequestRecord]:
        """Records of the measured requests (warm-up excluded)."""
        return [r for r in self.records if not r.warmup]

    @property
    def duration_s(self) -> float:
        """Wall time of the whole run."""
        return self.end_s - self.start_s

    @property
    def offered_rate_rps(self) -> float | None:
        """The configured mean rate (None for a closed loop)."""
        return self.config.offered_rate_rps

    @property
    def achieved_rate_rps(self) -> float | None:
        """Measured requests actually sent per second, over the span of their sends."""
        sent = sorted(r.sent_s for r in self.measured)
        if len(sent) < 2 or sent[-1] <= sent[0]:
            return None
        return (len(sent) - 1) / (sent[-1] - sent[0])

    def summary(self, *, slo: dict[str, float] | None = None) -> Any:
        """Summarize the measured records (:func:`labkit.stats.summarize_run`).

        Parameters
        ----------
        slo : dict, optional
            Latency objectives for goodput, e.g. ``{"ttft_s": 0.5, "e2e_s": 2.0}``.

        Returns
        -------
        labkit.stats.RunSummary
            Percentiles, rates, goodput, shares and decomposition.
        """
        from labkit.stats import summarize_run

        return summarize_run(self.records, offered_rate_rps=self.offered_rate_rps, slo=slo)

    def to_dict(self, *, include_records: bool = False) -> dict[str, Any]:
        """Return a JSON-ready dict (records only when asked: they can be many)."""
        statuses: dict[str, int] = {}
        for r in self.measured:
            statuses[r.status] = statuses.get(r.status, 0) + 1
        data: dict[str, Any] = {
            "config": self.config.to_dict(),
            "start_s": self.start_s,
            "end_s": self.end_s,
            "duration_s": self.duration_s,
            "requests": len(self.measured),
            "warmup_requests": len(self.records) - len(self.measured),
            "statuses": statuses,
            "offered_rate_rps": self.offered_rate_rps,
            "achieved_rate_rps": self.achieved_rate_rps,
            "records_path": self.records_path,
            "notes": list(self.notes),
        }
        if include_records:
            data["records"] = [r.to_dict() for r in self.records]
        return data

    def __repr__(self) -> str:
        d = self.to_dict()
        rate = f"{d['achieved_rate_rps']:.1f}" if d["achieved_rate_rps"] else "n/a"
        offered = f"{d['offered_rate_rps']:.1f}" if d["offered_rate_rps"] else "closed loop"
        return (
            f"LoadResult({d['requests']} requests + {d['warmup_requests']} warm-up, "
            f"{d['statuses']}, offered {offered} req/s, achieved {rate} req/s, "
            f"{d['duration_s']:.2f} s, records={self.records_path!r})"
        )

    def _repr_html_(self) -> str:
        import html

        d = self.to_dict()
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in d.items()
            if k != "config"
        )
        return f"<table><caption>LoadResult ({html.escape(self.config.arrival)})</caption>{rows}</table>"
