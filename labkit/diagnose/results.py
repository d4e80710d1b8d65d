"""The named thresholds and the results of a diagnosis: :class:`Thresholds`, :class:`Check`, :class:`Diagnosis`.

Owns :data:`VERDICTS`, the side-by-side table of several runs (:func:`compare`,
:class:`DiagnosisComparison`) and the number formatting that the texts and tables share.
"""

from __future__ import annotations

import dataclasses
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from labkit.errors import ConfigError

__all__ = ["VERDICTS", "Check", "Diagnosis", "DiagnosisComparison", "Thresholds", "compare"]

VERDICTS = ("coordinator_bottleneck", "engine_saturation", "load_imbalance", "healthy", "insufficient_data")


@dataclass(frozen=True)
class Thresholds:
    """The named thresholds of :func:`diagnose`, with the reason for each default.

    Attributes
    ----------
    min_requests : int
        Fewest successful requests to judge at all (20). With fewer, p95 has no request above
        it and "the tail" is a single number. Below 100 requests p99 is close to the maximum,
        which the diagnosis notes.
    tail_ratio_e2e : float
        p99 / p50 of end-to-end latency at or above which the tail "spikes" (2.0). The lab's
        workload has fixed prompt and output lengths, so a run without queueing has nearly
        constant latency (p99/p50 about 1.1 to 1.5); doubling is queueing, not noise. With
        very variable output lengths use TTFT (next field) or raise this.
    tail_ratio_ttft : float
        p99 / p50 of time to first token at or above which the tail spikes (3.0). The TTFT
        median is small (one prefill), so a few milliseconds of jitter move its ratio more.
    pre_engine_share_min : float
        Share of the tail's excess latency spent before the engine (proxy, router,
        coordinator) at or above which the tail "is made of" pre-engine time (0.5: most of it).
    engine_share_min : float
        Share of the tail's excess spent inside the engine (queue plus compute) at or above
        which the tail is made of engine time (0.5).
    flat_activity_ratio_max : float
        Engine activity (running + waiting) in the tail window divided by its mean over the
        run, at or below which the engines count as "flat" (1.25). With a handful of requests
        per replica one more request is +25 % or more, so below this the engines held about
        the same work when the tail happened as on average.
    saturated_waiting_mean : float
        Mean waiting requests per replica at or above which the engines are queueing (1.0).
        vLLM keeps a request waiting only when its batch or KV cache is full, so one waiting
        request on average means requests routinely wait for engine capacity.
    engine_full_fraction : float
        Running requests / engine capacity at or above which an engine is full (0.9). Used
        only when the capacity is known (``engine_capacity`` or a ``capacity`` telemetry
        field): a full engine pushes waiting back into Serve's router, which then looks like
        pre-engine time although the engines are the limit.
    min_balance_index : float
        Jain's fairness index of the per-replica request counts below which the load is
        imbalanced (0.9; 1.0 is perfectly even). For 2 replicas 0.9 is a 66/34 split.
        Balance is judged only with at least ``min_requests`` requests per replica: then an
        even random router stays above 0.9 about 95 % of the time.
    max_send_lag_s : float
        p99 of (actual send - intended send) above which the load generator fell behind
        (0.05 s); latencies measured from the intended send then include its lag (a note).
    max_error_rate : float
        Failed / all requests above which the diagnosis warns that the latencies describe
        only the survivors (0.05).
    """

    min_requests: int = 20
    tail_ratio_e2e: float = 2.0
    tail_ratio_ttft: float = 3.0
    pre_engine_share_min: float = 0.5
    engine_share_min: float = 0.5
    flat_activity_ratio_max: float = 1.25
    saturated_waiting_mean: float = 1.0
    engine_full_fraction: float = 0.9
    min_balance_index: float = 0.9
    max_send_lag_s: float = 0.05
    max_error_rate: float = 0.05

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
                msg = f"Thresholds.{f.name}={value!r} must be a finite number >= 0 (default {f.default!r})."
                raise ConfigError(msg, field=f.name, value=value)

    def to_dict(self) -> dict[str, float]:
        """Return the thresholds as a dict."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Check:
    """One comparison of an evidence number with a named threshold.

    Attributes
    ----------
    evidence : str
        Key in :attr:`Diagnosis.evidence`.
    op : str
        ">=", ">", "<=" or "<".
    threshold : str
        Field of :class:`Thresholds`.
    value : float or None
        The evidence value (None: not measured).
    limit : float
        The threshold value.
    passed : bool or None
        The comparison's outcome (None when the value was not measured).
    """

    evidence: str
    op: str
    threshold: str
    value: float | None
    limit: float
    passed: bool | None

    def __str__(self) -> str:
        mark = {True: "yes", False: "no", None: "n/a"}[self.passed]
        return f"{self.evidence} = {_fmt(self.value)} {self.op} {self.threshold} = {_fmt(self.limit)}: {mark}"


@dataclass(frozen=True)
class Diagnosis:
    """A verdict on one run, its evidence, the checks that decided it and the thresholds.

    Attributes
    ----------
    verdict : str
        One of :data:`VERDICTS`.
    explanation : str
        One or two plain sentences for the learner.
    evidence : dict
        Named numbers (seconds, ratios, shares, counts); None where not measured.
    checks : tuple of Check
        The threshold comparisons, in the order they were made.
    thresholds : Thresholds
        The thresholds used.
    shares : dict
        ``{"replica_id": {id: share}, "node_id": {id: share}}`` of successful requests.
    notes : tuple of str
        Caveats (few requests, errors, a lagging load generator, missing data).
    name : str
        The configuration's name.
    """

    verdict: str
    explanation: str
    evidence: dict[str, float | None]
    checks: tuple[Check, ...]
    thresholds: Thresholds
    shares: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    name: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of the diagnosis."""
        return {
            "name": self.name,
            "verdict": self.verdict,
            "explanation": self.explanation,
            "evidence": dict(self.evidence),
            "checks": [dataclasses.asdict(c) for c in self.checks],
            "thresholds": self.thresholds.to_dict(),
            "shares": self.shares,
            "notes": list(self.notes),
        }

    def __repr__(self) -> str:
        lines = [f"Diagnosis({self.name or 'run'}): {self.verdict}", f"  {self.explanation}"]
        lines += ["  checks:"] + [f"    {c}" for c in self.checks]
        lines += ["  evidence:"] + [f"    {k} = {_fmt(v)}" for k, v in self.evidence.items() if v is not None]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        esc = html.escape
        checks = "".join(
            f"<tr><td>{esc(c.evidence)}</td><td>{esc(_fmt(c.value))}</td><td>{esc(c.op)}</td>"
            f"<td>{esc(c.threshold)} = {esc(_fmt(c.limit))}</td>"
            f"<td>{ {True: '&#10003;', False: '&#10007;', None: 'n/a'}[c.passed] }</td></tr>"
            for c in self.checks
        )
        ev = "".join(
            f"<tr><td>{esc(k)}</td><td>{esc(_fmt(v))}</td></tr>" for k, v in self.evidence.items() if v is not None
        )
        notes = "".join(f"<li>{esc(n)}</li>" for n in self.notes)
        return (
            f"<div><p><b>{esc(self.name or 'run')}: {esc(self.verdict.replace('_', ' '))}</b></p>"
            f"<p>{esc(self.explanation)}</p>"
            f"<table><tr><th>evidence</th><th>value</th><th></th><th>threshold</th><th>met</th></tr>"
            f"{checks}</table>"
            f"<details><summary>all evidence</summary><table>{ev}</table></details>"
            + (f"<ul>{notes}</ul>" if notes else "")
            + "</div>"
        )


# ---------------------------------------------------------------------------------------------
# Side by side
# ---------------------------------------------------------------------------------------------

_COMPARE_KEYS = (
    "n_ok",
    "e2e_p50_s",
    "e2e_p99_s",
    "e2e_p99_p50_ratio",
    "ttft_p99_p50_ratio",
    "tail_excess_s",
    "tail_pre_engine_share",
    "tail_coordinator_wait_share",
    "tail_engine_queue_share",
    "tail_engine_share",
    "engine_active_mean_all",
    "engine_active_mean_tail",
    "engine_waiting_mean_tail",
    "balance_index_replica",
)


@dataclass(frozen=True)
class DiagnosisComparison:
    """Several diagnoses side by side (configurations as columns)."""

    diagnoses: dict[str, Diagnosis]
    keys: tuple[str, ...] = _COMPARE_KEYS

    def rows(self) -> list[tuple[str, list[Any]]]:
        """Return ``[(row name, [value per configuration]), ...]``, verdict first.

        Returns
        -------
        list of tuple
            The table's rows.
        """
        out: list[tuple[str, list[Any]]] = [("verdict", [d.verdict for d in self.diagnoses.values()])]
        out += [(k, [d.evidence.get(k) for d in self.diagnoses.values()]) for k in self.keys]
        return out

    def to_dict(self) -> dict[str, Any]:
        """Return ``{name: diagnosis.to_dict()}``."""
        return {name: d.to_dict() for name, d in self.diagnoses.items()}

    def __repr__(self) -> str:
        names = list(self.diagnoses)
        width = max([len(n) for n in names] + [len(d.verdict) for d in self.diagnoses.values()] + [10])
        lines = [f"{'':<28}" + "".join(f"{n:>{width + 2}}" for n in names)]
        for key, values in self.rows():
            cells = [v if isinstance(v, str) else _fmt(v) for v in values]
            lines.append(f"{key:<28}" + "".join(f"{c:>{width + 2}}" for c in cells))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        esc = html.escape
        head = "".join(f"<th>{esc(n)}</th>" for n in self.diagnoses)
        body = "".join(
            f"<tr><td>{esc(k)}</td>"
            + "".join(f"<td>{esc(v if isinstance(v, str) else _fmt(v))}</td>" for v in values)
            + "</tr>"
            for k, values in self.rows()
        )
        expl = "".join(f"<li><b>{esc(n)}</b>: {esc(d.explanation)}</li>" for n, d in self.diagnoses.items())
        return f"<div><table><tr><th></th>{head}</tr>{body}</table><ul>{expl}</ul></div>"


def compare(diagnoses: Mapping[str, Diagnosis] | Sequence[Diagnosis]) -> DiagnosisComparison:
    """Put several diagnoses side by side.

    Parameters
    ----------
    diagnoses : mapping of name to Diagnosis, or a sequence of Diagnosis
        A sequence is keyed by each diagnosis's ``name``.

    Returns
    -------
    DiagnosisComparison
        Displays as a table (text or HTML); ``to_dict()`` for logs.

    Raises
    ------
    ConfigError
        Empty input, or a sequence whose names are not unique.
    """
    if not isinstance(diagnoses, Mapping):
        items = list(diagnoses)
        names = [d.name or f"run {i + 1}" for i, d in enumerate(items)]
        if len(set(names)) != len(names):
            msg = f"Diagnoses to compare need unique names, got {names}. Pass a dict {{name: diagnosis}}."
            raise ConfigError(msg, field="diagnoses", value=names)
        diagnoses = dict(zip(names, items, strict=True))
    if not diagnoses:
        msg = "compare() got no diagnoses. Pass {name: diagnose(records)} for two or more runs."
        raise ConfigError(msg, field="diagnoses", value=diagnoses)
    return DiagnosisComparison(dict(diagnoses))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value != 0 and abs(value) < 0.01:
            return f"{value:.2g}"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.0f} ms"
