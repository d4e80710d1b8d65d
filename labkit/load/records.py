"""Results of a load run: :class:`RequestRecord`, the JSONL file of records, :class:`LoadResult`.

Owns the record format (one JSON object per line, written and flushed as each request finishes,
read back by :func:`read_records`) and the result of one run with its text and HTML views.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labkit.errors import LoadGenError
from labkit.load.config import LoadConfig

__all__ = ["LoadResult", "RequestRecord", "read_records"]

STATUSES = ("ok", "error", "timeout", "cancelled")


# --------------------------------------------------------------------------- the record
@dataclass
class RequestRecord:
    """One request, as the load generator saw it.

    Times are seconds on the load generator's monotonic clock. ``server`` holds the server
    timings (seconds) when the server sends them, keys:
    ``client_to_replica_s`` (client send -> replica arrival, wall clocks; includes proxy,
    router and coordinator), ``coordinator_wait_s`` (waiting for a gating coordinator slot),
    ``replica_wait_s`` (replica arrival -> engine submit), ``engine_queue_s`` (inside the
    engine before it is scheduled), ``engine_ttft_s`` (engine submit -> first token),
    ``engine_total_s`` (engine submit -> last token).

    ``itl_s`` holds every gap between two stream events that carried text. ``timeout_s`` is
    the request's time-out budget (what a failure counts as in latency percentiles, see
    :mod:`labkit.stats`). For a non-streaming request ``first_token_s`` is None (the client
    cannot see the first token) and only end-to-end latencies exist.
    """

    request_id: str
    scheduled_s: float
    sent_s: float
    done_s: float
    status: str = "ok"  # "ok" | "error" | "timeout" | "cancelled"
    warmup: bool = False
    first_token_s: float | None = None
    last_token_s: float | None = None
    http_status: int | None = None
    error: str | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    token_source: str | None = None  # "usage" | "tokenizer"
    itl_s: list[float] = field(default_factory=list)
    node_id: str | None = None
    replica_id: str | None = None
    server: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None

    @property
    def ok(self) -> bool:
        """True when the request completed without error."""
        return self.status == "ok"

    @property
    def schedule_lag_s(self) -> float:
        """Actual send minus intended send: how late the client was."""
        return self.sent_s - self.scheduled_s

    @property
    def e2e_s(self) -> float:
        """End-to-end latency from the intended send time (corrected for coordinated omission)."""
        return self.done_s - self.scheduled_s

    @property
    def e2e_uncorrected_s(self) -> float:
        """End-to-end latency from the actual send time."""
        return self.done_s - self.sent_s

    @property
    def ttft_s(self) -> float | None:
        """Time to first token from the intended send time; None without a first token."""
        return None if self.first_token_s is None else self.first_token_s - self.scheduled_s

    @property
    def ttft_uncorrected_s(self) -> float | None:
        """Time to first token from the actual send time; None without a first token."""
        return None if self.first_token_s is None else self.first_token_s - self.sent_s

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first: ``(last - first) / (output_tokens - 1)``."""
        if (
            self.first_token_s is None
            or self.last_token_s is None
            or self.output_tokens is None
            or self.output_tokens < 2
        ):
            return None
        return (self.last_token_s - self.first_token_s) / (self.output_tokens - 1)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of every field."""
        # Written out instead of dataclasses.asdict: this runs once per request in the hot path.
        return {
            "request_id": self.request_id,
            "scheduled_s": self.scheduled_s,
            "sent_s": self.sent_s,
            "done_s": self.done_s,
            "status": self.status,
            "warmup": self.warmup,
            "first_token_s": self.first_token_s,
            "last_token_s": self.last_token_s,
            "http_status": self.http_status,
            "error": self.error,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "token_source": self.token_source,
            "itl_s": list(self.itl_s),
            "node_id": self.node_id,
            "replica_id": self.replica_id,
            "server": dict(self.server),
            "extra": dict(self.extra),
            "timeout_s": self.timeout_s,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestRecord:
        """Build a record from :meth:`to_dict` output, ignoring unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


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
