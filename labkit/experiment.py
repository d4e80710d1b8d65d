"""The lesson's experiment: the same offered load through two doors to the same engines.

Owns running one load test with telemetry and a diagnosis (:func:`run_topology`), comparing
topologies at one offered load (:func:`compare_topologies`) and sweeping the load
(:func:`sweep_topologies`). The claim under test: with a single gating coordinator the tail
(p99 / p50) grows at least twice as much as through the distributed proxies, while the engines
are *not* busier; the diagnosis names the coordinator for the gated door only.

The tail is measured on **time to first token** by default: a coordinator adds its wait before
the first token, while the decode time after it is the engine's. End-to-end ratios are reported
beside it. On a 2-core CPU box the engines' decode time also varies with CPU contention, which
blurs an end-to-end comparison; TTFT isolates what the coordinator does.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labkit.errors import ConfigError
from labkit.stats import percentile_supported

__all__ = [
    "DecodeRun",
    "ExperimentResult",
    "RegimeResult",
    "TopologyRun",
    "compare_decode",
    "compare_topologies",
    "describe_serve_overhead",
    "load_panel",
    "measure_decode",
    "run_regimes",
    "run_topology",
    "sweep_topologies",
]

# The claim's numbers, named once (the notebook prints them beside the result).
TAIL_RATIO_FACTOR = 2.0  # gated p99/p50 must be >= this x the distributed one's
ACTIVITY_TOLERANCE = 0.15  # "not higher": gated engine activity in the tail <= (1 + this) x distributed

# The workload that shows the effect on the embedded CPU default (2 cores, tiny model): long answers
# (so the coordinator's one slot is held long), an offered load well under one engine's capacity
# (so the median request never waits), Poisson arrivals (so a few requests arrive together and wait).
LESSON_WORKLOAD = {"rate_rps": 1.2, "max_tokens": 48, "duration_s": 60.0, "coordinator_max_concurrency": 1}

# The three regimes of notebook 02 and the verdict each must get.
REGIMES = {
    "healthy": "healthy",
    "coordinator-bound": "coordinator_bottleneck",
    "engine-bound": "engine_saturation",
}
E2E_SPIKE_FACTOR = 2.0  # the gate's e2e p99 must be at least this x the healthy door's (same load)


@dataclass
class TopologyRun:
    """One load test through one door: records, telemetry, summary and diagnosis."""

    name: str
    url: str
    result: Any
    telemetry: Any
    summary: Any
    diagnosis: Any

    def tail_ratio(self, metric: str = "ttft") -> float | None:
        """Return p99 / p50 of a latency metric (``ttft`` or ``e2e``, from the intended send time).

        Parameters
        ----------
        metric : str
            A metric of :func:`labkit.stats.summarize_run`.

        Returns
        -------
        float or None
            The ratio; None when the metric has no samples.
        """
        summary = self.summary.metrics.get(metric)
        if summary is None:
            return None
        p = summary.percentiles
        return p["p99"] / p["p50"] if p.get("p50") else None

    @property
    def engine_activity(self) -> float | None:
        """Mean running + waiting requests per engine while the tail requests were in flight.

        Read from the diagnosis evidence (``engine_active_mean_tail``): telemetry samples of every
        replica taken during the lifetimes of the requests above p95. This is the chapter's
        question: when the tail happens, are the engines busier?
        """
        return self.diagnosis.evidence.get("engine_active_mean_tail")

    @property
    def engine_activity_overall(self) -> float | None:
        """Mean running + waiting requests per engine over the whole run."""
        return self.diagnosis.evidence.get("engine_active_mean_all")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (summary, diagnosis, telemetry summary; records not included)."""
        return {
            "name": self.name,
            "url": self.url,
            "tail_ratio_ttft": self.tail_ratio("ttft"),
            "tail_ratio_e2e": self.tail_ratio("e2e"),
            "engine_activity_tail": self.engine_activity,
            "engine_activity_overall": self.engine_activity_overall,
            "summary": self.summary.to_dict(),
            "diagnosis": self.diagnosis.to_dict(),
            "telemetry_notes": list(getattr(self.telemetry, "notes", []) or []),
        }


def run_topology(
    name: str,
    url: str,
    *,
    model: str | None = None,
    rate_rps: float = 6.0,
    duration_s: float = 20.0,
    max_tokens: int = 24,
    prompt_tokens: int = 32,
    tokenizer: str | None = None,
    arrival: str = "poisson",
    burstiness: float = 1.0,
    warmup_requests: int = 4,
    seed: int = 0,
    records_dir: str | Path | None = None,
    telemetry: bool = True,
    progress: bool = True,
    timeout_s: float = 60.0,
    users: int | None = None,
    expected_replicas: int | None = None,
    num_requests: int | None = None,
) -> TopologyRun:
    """Drive one door with open-loop load while recording telemetry; summarize and diagnose.

    Parameters
    ----------
    name : str
        Configuration name (titles, records file name).
    url : str
        Base URL of the door (``http://127.0.0.1:8000`` or ``.../gated``).
    model : str, optional
        Model name; asked from the server when omitted.
    rate_rps : float
        Offered rate.
    duration_s : float
        Measured schedule length.
    max_tokens, prompt_tokens : int
        Request shape (``ignore_eos`` makes every answer ``max_tokens`` long).
    tokenizer : str, optional
        Tokenizer path or id: prompts are then exactly ``prompt_tokens`` tokens of it. Without
        one, prompts are ``prompt_tokens`` plain words (about twice as many tokens).
    arrival : str
        ``poisson``, ``constant`` or ``gamma``.
    burstiness : float
        Gamma shape for ``arrival="gamma"`` (below 1: burstier than Poisson).
    warmup_requests : int
        Requests sent first and left out of the statistics.
    seed : int
        Seed of arrivals and prompts.
    records_dir : str or Path, optional
        Where the JSONL of records goes (``<name>.jsonl``).
    telemetry : bool
        Record engine / process / GPU activity (needs the Ray connection).
    progress : bool
        Show a progress bar.
    timeout_s : float
        Per-request time-out.
    users : int, optional
        Run a closed loop instead: this many users, each sending its next request as soon as
        the last one ends (``rate_rps`` is then ignored). More users than the engines have
        slots keep the engines full whatever their speed.
    expected_replicas : int, optional
        Replicas behind the door: one that served nothing then counts as a share of 0.
    num_requests : int, optional
        End after this many measured requests (or ``duration_s``, whichever comes first): a count
        that does not depend on the machine's speed.

    Returns
    -------
    TopologyRun
        Everything about the run.
    """
    from labkit.diagnose import diagnose
    from labkit.load import LoadConfig, run_load
    from labkit.telemetry import TelemetryRecorder

    records_path = None
    if records_dir is not None:
        Path(records_dir).mkdir(parents=True, exist_ok=True)
        load = f"{users}users" if users else f"{rate_rps:g}rps"
        stamp = time.strftime("%Y%m%dT%H%M%S")
        records_path = str(Path(records_dir) / f"{name}-{load}-{stamp}.jsonl")  # never overwrites a run
    config = LoadConfig(
        url=url,
        model=model,
        arrival="closed" if users else arrival,
        burstiness=burstiness,
        rate_rps=None if users else rate_rps,
        users=users,
        duration_s=duration_s,
        num_requests=num_requests,
        max_tokens=max_tokens,
        prompt_tokens=prompt_tokens,
        tokenizer=tokenizer,
        warmup_requests=warmup_requests,
        seed=seed,
        ignore_eos=True,
        temperature=0.0,
        timeout_s=timeout_s,
        hard_stop_s=duration_s * 3 + 60,
    )
    recorder = TelemetryRecorder(processes="serve", name=name) if telemetry else None
    if recorder is not None:
        with recorder:
            result = run_load(config, records_path=records_path, progress=progress)
    else:
        result = run_load(config, records_path=records_path, progress=progress)
    summary = result.summary()
    verdict = diagnose(result, recorder, name=name, expected_replicas=expected_replicas)
    return TopologyRun(name=name, url=url, result=result, telemetry=recorder, summary=summary, diagnosis=verdict)


@dataclass
class ExperimentResult:
    """Runs of several doors at one offered load, and whether the lesson's claim held."""

    runs: dict[str, TopologyRun]
    rate_rps: float
    gated: str = "gated"
    baseline: str = "distributed"
    metric: str = "ttft"
    notes: list[str] = field(default_factory=list)

    def claim(self) -> dict[str, Any]:
        """Check the claim and return each part with its numbers.

        Returns
        -------
        dict
            ``tail_ratio_gated``, ``tail_ratio_baseline``, ``tail_factor`` (their ratio),
            ``activity_gated``, ``activity_baseline``, verdicts, and booleans
            ``tail_grew``, ``engines_not_busier``, ``diagnosis_right`` and ``holds``.
        """
        gated, base = self.runs[self.gated], self.runs[self.baseline]
        tg, tb = gated.tail_ratio(self.metric), base.tail_ratio(self.metric)
        ag, ab = gated.engine_activity, base.engine_activity
        factor = tg / tb if tg and tb else None
        tail_grew = factor is not None and factor >= TAIL_RATIO_FACTOR
        not_busier = ag is not None and ab is not None and ag <= ab * (1 + ACTIVITY_TOLERANCE)
        right = (
            gated.diagnosis.verdict == "coordinator_bottleneck" and base.diagnosis.verdict != "coordinator_bottleneck"
        )
        return {
            "rate_rps": self.rate_rps,
            "metric": self.metric,
            "tail_ratio_gated": tg,
            "tail_ratio_baseline": tb,
            "tail_factor": factor,
            "tail_factor_min": TAIL_RATIO_FACTOR,
            "activity_gated": ag,
            "activity_baseline": ab,
            "activity_tolerance": ACTIVITY_TOLERANCE,
            "verdict_gated": gated.diagnosis.verdict,
            "verdict_baseline": base.diagnosis.verdict,
            "e2e_tail_ratio_gated": gated.tail_ratio("e2e"),
            "e2e_tail_ratio_baseline": base.tail_ratio("e2e"),
            "tail_grew": tail_grew,
            "engines_not_busier": not_busier,
            "diagnosis_right": right,
            "holds": bool(tail_grew and not_busier and right),
        }

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "rate_rps": self.rate_rps,
            "claim": self.claim(),
            "runs": {k: v.to_dict() for k, v in self.runs.items()},
            "notes": self.notes,
        }

    def __repr__(self) -> str:
        c = self.claim()

        def fmt(x: Any) -> str:
            return "n/a" if x is None else f"{x:.2f}"

        return (
            f"ExperimentResult at {self.rate_rps:g} req/s: {self.metric} p99/p50 "
            f"{self.gated} {fmt(c['tail_ratio_gated'])} vs "
            f"{self.baseline} {fmt(c['tail_ratio_baseline'])} (x{fmt(c['tail_factor'])}, needs >= "
            f"{TAIL_RATIO_FACTOR:g}); engine activity {fmt(c['activity_gated'])} vs {fmt(c['activity_baseline'])}; "
            f"verdicts {c['verdict_gated']} / {c['verdict_baseline']}; claim holds: {c['holds']}"
        )

    def _repr_html_(self) -> str:
        c = self.claim()
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td>"
            f"<td>{html.escape(str(v if not isinstance(v, float) else round(v, 3)))}</td></tr>"
            for k, v in c.items()
        )
        return f"<table><tr><th>claim</th><th>value</th></tr>{rows}</table>"


def compare_topologies(
    doors: Mapping[str, str],
    *,
    rate_rps: float,
    gated: str = "gated",
    baseline: str = "distributed",
    metric: str = "ttft",
    **kwargs: Any,
) -> ExperimentResult:
    """Drive each door in turn at the same offered load and check the lesson's claim.

    Parameters
    ----------
    doors : mapping of str to str
        ``{name: base_url}``; must hold ``gated`` and ``baseline``.
    rate_rps : float
        The offered load, the same for every door.
    gated, baseline : str
        Names of the doors the claim compares.
    metric : str
        Latency metric of the tail ratio (``ttft`` or ``e2e``).
    **kwargs
        Passed to :func:`run_topology` (duration_s, max_tokens, seed, records_dir...).

    Returns
    -------
    ExperimentResult
        The runs and the claim.

    Raises
    ------
    ConfigError
        If ``gated`` or ``baseline`` is not among the doors.
    """
    for key in (gated, baseline):
        if key not in doors:
            msg = f"Door '{key}' is missing. Given: {sorted(doors)}; pass gated=... / baseline=... to pick others."
            raise ConfigError(msg, field="doors", value=sorted(doors))
    runs = {name: run_topology(name, url, rate_rps=rate_rps, **kwargs) for name, url in doors.items()}
    return ExperimentResult(runs=runs, rate_rps=rate_rps, gated=gated, baseline=baseline, metric=metric)


@dataclass
class RegimeResult:
    """The three regimes on the same engines: healthy, coordinator-bound and engine-bound."""

    runs: dict[str, TopologyRun]
    loads: dict[str, str]
    notes: list[str] = field(default_factory=list)

    def row(self, regime: str) -> dict[str, Any]:
        """Return one regime's numbers: latency percentiles (with n), engine occupancy, verdict."""
        run = self.runs[regime]
        ev = run.diagnosis.evidence
        out: dict[str, Any] = {"regime": regime, "door": run.name, "load": self.loads.get(regime, "")}
        for metric in ("ttft", "e2e"):
            summary = run.summary.metrics.get(metric)
            n = int(summary.count) if summary is not None else 0
            out[f"{metric}_n"] = n
            for q in (50, 95, 99):
                value = summary.percentiles.get(f"p{q}") if summary is not None else None
                out[f"{metric}_p{q}_s"] = value if value is not None and percentile_supported(q, n) else None
            ci = (summary.ci or {}).get("p99") if summary is not None else None
            out[f"{metric}_p99_ci_s"] = list(ci) if ci and percentile_supported(99, n) else None
        out["p99_supported"] = percentile_supported(99, out["e2e_n"])
        out["engine_waiting_mean"] = ev.get("engine_waiting_mean_all")
        out["engine_slots_in_use"] = ev.get("engine_running_fraction_all")
        out["engine_active_mean"] = ev.get("engine_active_mean_all")
        out["output_tokens_per_s"] = run.summary.output_tokens_per_s
        out["gpu_util_mean_percent"] = ev.get("gpu_util_mean_all")  # None where no GPU was sampled
        out["verdict"] = run.diagnosis.verdict
        out["expected"] = REGIMES.get(regime)
        out["right"] = out["verdict"] == out["expected"]
        return out

    def table(self) -> list[dict[str, Any]]:
        """Return :meth:`row` of every regime, in the lesson's order."""
        return [self.row(r) for r in REGIMES if r in self.runs]

    def claim(self) -> dict[str, Any]:
        """Check the lesson: each regime diagnosed right, and the gate's spike visible end to end.

        Returns
        -------
        dict
            ``verdicts`` (regime -> verdict), ``verdicts_right``, ``e2e_p99_healthy_s``,
            ``e2e_p99_coordinator_s``, ``e2e_p99_factor`` (their ratio), ``e2e_spike_visible``
            (factor >= :data:`E2E_SPIKE_FACTOR`), ``engine_waiting`` per regime, and ``holds``.
        """
        rows = {r["regime"]: r for r in self.table()}
        verdicts = {k: v["verdict"] for k, v in rows.items()}
        right = all(v["right"] for v in rows.values()) and len(rows) == len(REGIMES)

        def p99(regime: str) -> float | None:
            run = self.runs.get(regime)
            summary = run.summary.metrics.get("e2e") if run is not None else None
            return summary.percentiles.get("p99") if summary is not None else None

        healthy, gated = p99("healthy"), p99("coordinator-bound")
        factor = gated / healthy if healthy and gated else None
        return {
            "verdicts": verdicts,
            "verdicts_right": right,
            "e2e_p99_healthy_s": healthy,
            "e2e_p99_coordinator_s": gated,
            "e2e_p99_factor": factor,
            "e2e_p99_factor_min": E2E_SPIKE_FACTOR,
            "e2e_spike_visible": factor is not None and factor >= E2E_SPIKE_FACTOR,
            "e2e_n": {k: v["e2e_n"] for k, v in rows.items()},
            "engine_waiting": {k: v["engine_waiting_mean"] for k, v in rows.items()},
            "engine_slots_in_use": {k: v["engine_slots_in_use"] for k, v in rows.items()},
            "holds": bool(right and factor is not None and factor >= E2E_SPIKE_FACTOR),
        }

    def comparison(self) -> ExperimentResult:
        """Return the healthy and the coordinator-bound run as the two-door comparison (same load)."""
        return ExperimentResult(
            runs={"distributed": self.runs["healthy"], "gated": self.runs["coordinator-bound"]},
            rate_rps=float(getattr(self.runs["healthy"].result.config, "rate_rps", 0.0) or 0.0),
        )

    def sentence(self) -> str:
        """Say what the runs showed, from their numbers only."""
        c = self.claim()
        parts = []
        for regime, verdict in c["verdicts"].items():
            expected = REGIMES[regime]
            parts.append(f"{regime}: {verdict}" + ("" if verdict == expected else f" (the lesson expects {expected})"))
        text = " ".join(self.notes) + (" " if self.notes else "") + "Verdicts: " + "; ".join(parts) + "."
        if c["e2e_p99_factor"] is not None:
            text += (
                f" Behind the gate end-to-end p99 was {c['e2e_p99_coordinator_s']:.3f} s against "
                f"{c['e2e_p99_healthy_s']:.3f} s through the distributed door at the same load "
                f"({c['e2e_p99_factor']:.1f}x; the lesson looks for >= {E2E_SPIKE_FACTOR:g}x)."
            )
        small = [k for k, n in c["e2e_n"].items() if not percentile_supported(99, n)]
        if small:
            text += f" p99 is not reported for {', '.join(small)}: fewer than 100 requests."
        return text

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (claim, table, each run's summary and diagnosis)."""
        return {
            "claim": self.claim(),
            "table": self.table(),
            "loads": dict(self.loads),
            "runs": {k: v.to_dict() for k, v in self.runs.items()},
            "notes": list(self.notes),
        }

    def __repr__(self) -> str:
        return f"RegimeResult({', '.join(self.runs)}): {self.sentence()}"

    def _repr_html_(self) -> str:
        def cell(value: Any, scale: float = 1.0, digits: int = 3) -> str:
            if value is None:
                return "<td>&ndash;</td>"
            if isinstance(value, float):
                return f"<td>{value * scale:.{digits}g}</td>"
            return f"<td>{html.escape(str(value))}</td>"

        rows = self.table()
        gpu = any(r["gpu_util_mean_percent"] is not None for r in rows)  # a GPU column only where one was sampled
        head = (
            "<tr><th>regime</th><th>door</th><th>load</th><th>n</th><th>TTFT p50 ms</th><th>TTFT p99 ms</th>"
            "<th>e2e p50 s</th><th>e2e p99 s</th><th>e2e p99 95% CI s</th><th>waiting / engine</th>"
            "<th>slots in use</th><th>output tok/s</th>"
            + ("<th>GPU util %</th>" if gpu else "")
            + "<th>verdict</th></tr>"
        )
        body = ""
        for r in rows:
            ci = r["e2e_p99_ci_s"]
            mark = "&#10003;" if r["right"] else f"&#10007; (expected {html.escape(str(r['expected']))})"
            body += (
                f"<tr><td>{html.escape(r['regime'])}</td><td>{html.escape(r['door'])}</td>"
                f"<td>{html.escape(r['load'])}</td><td>{r['e2e_n']}</td>"
                + cell(r["ttft_p50_s"], 1e3)
                + cell(r["ttft_p99_s"], 1e3)
                + cell(r["e2e_p50_s"])
                + cell(r["e2e_p99_s"])
                + (f"<td>{ci[0]:.3g} &ndash; {ci[1]:.3g}</td>" if ci else "<td>&ndash;</td>")
                + cell(r["engine_waiting_mean"])
                + (
                    f"<td>{r['engine_slots_in_use']:.0%}</td>"
                    if r["engine_slots_in_use"] is not None
                    else "<td>&ndash;</td>"
                )
                + cell(r["output_tokens_per_s"])
                + (cell(r["gpu_util_mean_percent"]) if gpu else "")
                + f"<td>{html.escape(r['verdict'])} {mark}</td></tr>"
            )
        return f"<table>{head}{body}</table><p>{html.escape(self.sentence())}</p>"


def run_regimes(
    doors: Mapping[str, str],
    *,
    rate_rps: float | None = None,
    duration_s: float,
    max_tokens: int,
    engine_users: int,
    engine_duration_s: float | None = None,
    expected_replicas: int | None = None,
    gate_utilization: float = 0.8,
    gate_slots: int = 1,
    **kwargs: Any,
) -> RegimeResult:
    """Produce the three regimes on the same engines and diagnose each.

    * **healthy**: the distributed door at ``rate_rps`` (open loop, Poisson);
    * **coordinator-bound**: the gated door at the same offered load;
    * **engine-bound**: the distributed door with ``engine_users`` closed-loop users, more
      requests in flight than the engines have slots, so requests wait inside the engines.

    Parameters
    ----------
    doors : mapping of str to str
        Must hold ``"distributed"`` and ``"gated"`` (base URLs of the same engines).
    rate_rps : float, optional
        Offered load of the healthy and coordinator-bound runs. None: ``gate_utilization`` x the
        gate's capacity, which is measured first: ``gate_slots`` / the time one answer of
        ``max_tokens`` takes alone (the median of 3, through the distributed door). The same
        utilization then means the same queue behind the gate on a laptop or a GPU.
    duration_s : float
        Measured seconds of those two runs.
    gate_utilization : float
        Share of the gate's capacity offered when ``rate_rps`` is None (0.8: the gate is busy 80% of
        the time, so requests that arrive together queue before it; the engines stay mostly idle).
    gate_slots : int
        Requests the gate lets through at once (the coordinator's ``max_concurrency``).
    max_tokens : int
        Tokens per answer (every answer this long).
    engine_users : int
        Closed-loop users of the engine-bound run; more than replicas x ``max_num_seqs``.
    engine_duration_s : float, optional
        Measured seconds of the engine-bound run (default ``duration_s``).
    expected_replicas : int, optional
        Replicas behind the doors (an idle one counts as a share of 0).
    **kwargs
        Passed to :func:`run_topology` (seed, records_dir, progress...).

    Returns
    -------
    RegimeResult
        The runs, the table and the claim.

    Raises
    ------
    ConfigError
        A door is missing, or ``engine_users`` < 1.
    """
    for key in ("distributed", "gated"):
        if key not in doors:
            msg = f"Door '{key}' is missing. Given: {sorted(doors)}; run_regimes needs 'distributed' and 'gated'."
            raise ConfigError(msg, field="doors", value=sorted(doors))
    if engine_users < 1:
        msg = f"engine_users={engine_users!r} must be >= 1 (more than replicas x max_num_seqs to fill the engines)."
        raise ConfigError(msg, field="engine_users", value=engine_users)
    if not 0 < gate_utilization < 1:
        msg = f"gate_utilization={gate_utilization!r} must be in (0, 1): at 1 or more the gate's queue never drains."
        raise ConfigError(msg, field="gate_utilization", value=gate_utilization)
    notes: list[str] = []
    if rate_rps is None:
        alone = measure_decode("alone", doors["distributed"], requests=3, max_tokens=max_tokens, warmup_requests=1)
        if not alone.e2e_p50_s:
            msg = f"Could not time one answer through {doors['distributed']}: no request succeeded."
            raise ConfigError(msg, field="doors", value=doors["distributed"])
        rate_rps = round(gate_utilization * gate_slots / alone.e2e_p50_s, 2)
        notes.append(
            f"One answer of {max_tokens} tokens took {alone.e2e_p50_s:.3f} s alone (median of {alone.n}), so the "
            f"gate's {gate_slots} slot(s) serve about {gate_slots / alone.e2e_p50_s:.2f} req/s; offered "
            f"{rate_rps:g} req/s ({gate_utilization:.0%} of that)."
        )
    common = {"max_tokens": max_tokens, "expected_replicas": expected_replicas, **kwargs}
    runs = {
        "healthy": run_topology(
            "distributed", doors["distributed"], rate_rps=rate_rps, duration_s=duration_s, **common
        ),
        "coordinator-bound": run_topology("gated", doors["gated"], rate_rps=rate_rps, duration_s=duration_s, **common),
        "engine-bound": run_topology(
            "distributed",
            doors["distributed"],
            users=engine_users,
            duration_s=engine_duration_s or duration_s,
            **common,
        ),
    }
    loads = {
        "healthy": f"{rate_rps:g} req/s",
        "coordinator-bound": f"{rate_rps:g} req/s",
        "engine-bound": f"{engine_users} users",
    }
    return RegimeResult(runs=runs, loads=loads, notes=notes)


def sweep_topologies(doors: Mapping[str, str], rates_rps: Sequence[float], **kwargs: Any) -> dict[str, list[Any]]:
    """Run every door at every offered rate (low to high) to find each knee.

    Parameters
    ----------
    doors : mapping of str to str
        ``{name: base_url}``.
    rates_rps : sequence of float
        Offered rates.
    **kwargs
        Passed to :func:`run_topology` (telemetry defaults to off here: the knee is in the
        latencies).

    Returns
    -------
    dict
        ``{name: [LoadResult, ...]}`` in rate order, ready for ``plot_percentiles_vs_load``.
    """
    kwargs.setdefault("telemetry", False)
    out: dict[str, list[Any]] = {}
    for name, url in doors.items():
        out[name] = [run_topology(name, url, rate_rps=rate, **kwargs).result for rate in sorted(rates_rps)]
    return out


@dataclass
class DecodeRun:
    """Time per output token of one deployment, one request at a time (no queueing, no batching)."""

    name: str
    result: Any
    tpot_p50_s: float | None
    tpot_p95_s: float | None
    ttft_p50_s: float | None
    tokens_per_s: float | None
    n: int
    e2e_p50_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (records not included)."""
        return {
            "name": self.name,
            "n": self.n,
            "tpot_p50_s": self.tpot_p50_s,
            "tpot_p95_s": self.tpot_p95_s,
            "ttft_p50_s": self.ttft_p50_s,
            "e2e_p50_s": self.e2e_p50_s,
            "tokens_per_s": self.tokens_per_s,
        }


def measure_decode(
    name: str,
    url: str,
    *,
    requests: int = 6,
    max_tokens: int = 64,
    prompt_tokens: int = 32,
    warmup_requests: int = 1,
    timeout_s: float = 120.0,
) -> DecodeRun:
    """Measure time per output token with one request at a time (a closed loop of one user).

    One request in flight means no batching and no queue: the time between streamed tokens is
    the engine's own step time, plus, for a replica split with PP, the hop between stages.

    Parameters
    ----------
    name : str
        Label of the deployment (``"PP 2"``...).
    url : str
        Base URL of the deployment.
    requests : int
        Measured requests (after ``warmup_requests``).
    max_tokens, prompt_tokens : int
        Request shape; every answer is ``max_tokens`` long (``ignore_eos``).
    warmup_requests : int
        Requests sent first and left out.
    timeout_s : float
        Per-request time-out.

    Returns
    -------
    DecodeRun
        p50 / p95 time per output token, p50 time to first token, and the tokens per second of one
        request at the p50 (``1 / tpot_p50``).

    Raises
    ------
    ConfigError
        If ``requests`` < 1 or ``max_tokens`` < 2 (one token has no time between tokens).
    """
    if requests < 1 or max_tokens < 2:
        msg = f"requests={requests!r} must be >= 1 and max_tokens={max_tokens!r} >= 2 to time tokens."
        raise ConfigError(msg, field="requests" if requests < 1 else "max_tokens", value=min(requests, max_tokens))
    from labkit.load import LoadConfig, run_load

    config = LoadConfig(
        url=url,
        arrival="closed",
        users=1,
        num_requests=requests,
        warmup_requests=warmup_requests,
        max_tokens=max_tokens,
        prompt_tokens=prompt_tokens,
        ignore_eos=True,
        temperature=0.0,
        timeout_s=timeout_s,
        hard_stop_s=(requests + warmup_requests) * timeout_s,
    )
    result = run_load(config, progress=False)
    summary = result.summary()

    def pct(metric: str, q: str) -> float | None:
        m = summary.metrics.get(metric)
        value = m.percentiles.get(q) if m is not None else None
        return float(value) if value is not None and value == value else None

    tpot = pct("tpot", "p50")
    return DecodeRun(
        name=name,
        result=result,
        tpot_p50_s=tpot,
        tpot_p95_s=pct("tpot", "p95"),
        ttft_p50_s=pct("ttft", "p50"),
        tokens_per_s=(1.0 / tpot) if tpot else None,
        n=sum(1 for r in result.records if not r.warmup and r.status == "ok"),
        e2e_p50_s=pct("e2e", "p50"),
    )


def compare_decode(split: DecodeRun, whole: DecodeRun) -> dict[str, Any]:
    """Compare the time per output token of a split replica with a one-process replica.

    Parameters
    ----------
    split, whole : DecodeRun
        The replica split over nodes, and one on a single node.

    Returns
    -------
    dict
        ``ratio`` (split / whole p50), ``added_ms`` (per token) and ``sentence``: what the numbers
        say, and only that.
    """
    a, b = split.tpot_p50_s, whole.tpot_p50_s
    if not a or not b:
        return {"ratio": None, "added_ms": None, "sentence": "Time per output token was not measured for both."}
    ratio, added = a / b, (a - b) * 1e3
    if ratio >= 1.05:
        what = f"{added:.1f} ms more per output token ({ratio:.2f}x): the hop between the stages and the work split"
        what += " over two processes cost more than they saved"
    elif ratio <= 0.95:
        what = f"{-added:.1f} ms less per output token ({ratio:.2f}x): splitting the layers saved more than"
        what += " the hop cost"
    else:
        what = f"about the same time per output token ({ratio:.2f}x, within 5%)"
    sentence = (
        f"{split.name} took {a * 1e3:.1f} ms per output token (p50 of {split.n} requests) and {whole.name} "
        f"{b * 1e3:.1f} ms (p50 of {whole.n}): {what}."
    )
    return {"ratio": ratio, "added_ms": added, "sentence": sentence}


def _door_down(url: str, timeout_s: float = 3.0) -> str | None:
    """Return why a door does not answer ``GET /v1/models``, or None when it does."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url.rstrip("/") + "/v1/models", timeout=timeout_s):  # noqa: S310 - local door
            return None
    except urllib.error.HTTPError:
        return None  # it answered
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", err))


def load_panel(
    doors: Mapping[str, str],
    *,
    rate_rps: float | None = 6.0,
    duration_s: float = 10.0,
    max_tokens: int = 24,
    max_rate_rps: float = 30.0,
) -> Any:
    """Return an ipywidgets panel: pick a door, a rate and a duration, run, see the histogram.

    Parameters
    ----------
    doors : mapping of str to str
        ``{name: base_url}`` to choose from.
    rate_rps, duration_s : float
        Initial values of the sliders.
    max_tokens : int
        Tokens per request.
    max_rate_rps : float
        Upper end of the rate slider.

    Returns
    -------
    ipywidgets.VBox
        The panel (display it as a cell's last expression).

    Raises
    ------
    MissingDependencyError
        If ipywidgets is not installed.
    """
    try:
        import ipywidgets as widgets  # notebook-only dependency
    except ImportError as err:
        from labkit.errors import MissingDependencyError

        msg = "The panel needs ipywidgets: pip install ipywidgets (it is in requirements/cpu.txt)."
        raise MissingDependencyError(msg) from err
    from IPython.display import display

    rate_rps = float(rate_rps or 1.0)  # a notebook may hold None ("measure it"): start the slider at 1 req/s
    door = widgets.Dropdown(options=list(doors), value=next(iter(doors)), description="topology")
    rate = widgets.FloatSlider(
        value=rate_rps,
        min=0.1,
        max=max(max_rate_rps, rate_rps),
        step=0.1,
        description="rate req/s",
        readout_format=".1f",
    )
    duration = widgets.FloatSlider(value=duration_s, min=2.0, max=60.0, step=1.0, description="duration s")
    button = widgets.Button(description="Run", button_style="primary", icon="play")
    status = widgets.HTML(value="<i>ready</i>")
    output = widgets.Output()

    def on_click(_: Any) -> None:
        from labkit.plots import plot_latency_histogram

        button.disabled = True
        status.value = f"running {door.value} at {rate.value:g} req/s for {duration.value:g} s..."
        output.clear_output()
        try:
            url = doors[door.value]
            reason = _door_down(url)
            if reason:
                status.value = (
                    f"<span style='color:#D55E00'>The {html.escape(door.value)} door does not answer "
                    f"({html.escape(reason)}): the cluster was stopped, e.g. by the notebook's last cell. "
                    "Run the notebook from the top (Run All stops the cluster at the end: run the cells "
                    "down to the panel instead) and press Run again.</span>"
                )
                return
            with output:
                run = run_topology(
                    door.value,
                    url,
                    rate_rps=rate.value,
                    duration_s=duration.value,
                    max_tokens=max_tokens,
                    telemetry=False,
                    warmup_requests=2,
                    progress=False,
                )
                display(run.summary)
                name = f"{door.value} @ {rate.value:.1f} req/s"
                display(plot_latency_histogram(run.result, "ttft", name=name, log_x=True))
                display(plot_latency_histogram(run.result, "e2e", name=name))
            status.value = f"done: verdict <b>{html.escape(run.diagnosis.verdict)}</b>"
        except Exception as err:  # noqa: BLE001 - show the error in the panel instead of a dead button
            status.value = f"<span style='color:#D55E00'>failed: {html.escape(str(err))}</span>"
        finally:
            button.disabled = False

    button.on_click(on_click)
    panel = widgets.VBox([widgets.HBox([door, rate, duration, button]), status, output])
    panel.add_class("labkit-load-panel")
    return panel


# -- Serve's own knobs, measured by benchmarks/bench_serve_overhead.py ------------------------------
#: What each topology of the overhead benchmark changes, in one clause.
SERVE_KNOBS = {
    "distributed": "a Serve HTTP proxy on every node (proxy_location='EveryNode'), the default",
    "head-proxy": "one proxy, on the head (proxy_location='HeadOnly'): every request enters through one process",
    "gated": "the head's proxy plus the kit's coordinator in front, with as many slots as the engine "
    "(coordinator=True): one more process and one more handle call on the path, but no queue",
    "direct-ingress": "Serve's throughput-optimized mode (RAY_SERVE_THROUGHPUT_OPTIMIZED=1, "
    "throughput_optimized=True): no proxy, the client connects to the replica's own HTTP server, "
    "gRPC between deployments",
}
OVERHEAD_RESULT = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "serve_overhead.json"


def describe_serve_overhead(result: Mapping[str, Any] | str | Path | None = None) -> list[str]:
    """One sentence per Serve topology, with its measured cost against vLLM alone.

    Parameters
    ----------
    result : mapping, path or None
        The JSON of ``benchmarks/bench_serve_overhead.py`` (default: the one in the kit's checkout).

    Returns
    -------
    list of str
        A sentence per topology: what it changes, its TTFT p50 and e2e p99 as multiples of vLLM
        alone at each rate, and its two hops through Serve against the default topology's. A first
        sentence says where and when the numbers were measured; without a result file, one sentence
        that says so.
    """
    import json

    if result is None or isinstance(result, (str, Path)):
        path = Path(result) if result is not None else OVERHEAD_RESULT
        if not path.is_file():
            return [f"No overhead benchmark result at {path.name}: run benchmarks/bench_serve_overhead.py."]
        loaded: Mapping[str, Any] = json.loads(path.read_text())
    else:
        loaded = result
    result = loaded
    topologies = result.get("topologies") or {}
    hops = result.get("hop_p50_s") or {}
    rates = [str(r) for r in result.get("rates_rps") or []]
    out = [
        f"Measured by bench_serve_overhead.py ({result.get('when', 'date unknown')}): one replica of the tiny "
        f"model, {result.get('max_tokens')}-token streamed answers, {_per_rate(result)} of Poisson arrivals per "
        "rate, each topology run back to back with vLLM's own server on the same engine settings."
    ]

    def ratios(name: str, key: str) -> str:
        cells = topologies[name]["rates"]
        values = [cells[r]["ratio"].get(key) for r in rates if r in cells]
        return "/".join("n/a" if v is None else f"{v:.2f}x" for v in values)

    def mid_hop(name: str, hop: str) -> float | None:
        per_rate = hops.get(name) or {}
        mid = rates[len(rates) // 2] if rates else None
        value = (per_rate.get(mid) or {}).get(hop) if mid else None
        return None if value is None else float(value)

    at = "/".join(f"{float(r):g}" for r in rates)
    for name in topologies:
        base_name, _, variant = name.partition("+")
        what = SERVE_KNOBS.get(base_name, base_name)
        if variant == "nice0":
            what += (
                ", with Ray's worker processes (proxies, replicas, engines) at niceness 0 "
                "(ClusterConfig.worker_niceness=0) instead of Ray's default 15, the priority vLLM alone has"
            )
        text = (
            f"{name}: {what}. Against vLLM alone at {at} req/s: TTFT p50 {ratios(name, 'ttft_p50')}, "
            f"e2e p99 {ratios(name, 'e2e_p99')}."
        )
        parts = []
        for hop, label in (("routing", "ingress -> replica"), ("chunk_return", "each chunk back to the client")):
            mine, base = mid_hop(name, hop), mid_hop("distributed", hop)
            if mine is None:
                continue
            if name == "distributed" or base is None:
                parts.append(f"{label} {mine * 1000:.2f} ms")
            else:
                parts.append(f"{label} {mine * 1000:.2f} ms (distributed: {base * 1000:.2f} ms)")
        if parts and rates:
            text += f" Hop p50 at {float(rates[len(rates) // 2]):g} req/s: " + ", ".join(parts) + "."
        out.append(text)
    scored: dict[str, tuple[float, float]] = {}
    for name in topologies:
        ttft_worst, e2e_worst = _worst_ratios(topologies[name]["rates"], rates)
        if ttft_worst is not None and e2e_worst is not None:
            scored[name] = (ttft_worst, e2e_worst)
    if scored:
        best = min(scored, key=lambda n: max(scored[n][0] / TTFT_TARGET, scored[n][1] / E2E_P99_TARGET))
        ttft, e2e = scored[best]
        met = ttft <= TTFT_TARGET and e2e <= E2E_P99_TARGET
        out.append(
            f"Closest to vLLM alone: {best}, at worst {ttft:.2f}x its TTFT p50 and {e2e:.2f}x its e2e p99 over "
            f"these rates; the kit's target ({TTFT_TARGET:g}x and {E2E_P99_TARGET:g}x) is "
            f"{'met' if met else 'not met'}."
        )
    return out


def _per_rate(result: Mapping[str, Any]) -> str:
    if result.get("requests_per_rate"):
        return f"{result['requests_per_rate']} requests"
    return f"{result.get('duration_s', 0):g} s"


#: The kit's targets for its best topology against vLLM alone (TTFT p50, e2e p99).
TTFT_TARGET = 1.25
E2E_P99_TARGET = 1.2


def _worst_ratios(cells: Mapping[str, Any], rates: Sequence[str]) -> tuple[float | None, float | None]:
    ttft = [cells[r]["ratio"].get("ttft_p50") for r in rates if r in cells]
    e2e = [cells[r]["ratio"].get("e2e_p99") for r in rates if r in cells]
    if not ttft or None in ttft or None in e2e:
        return None, None
    return max(ttft), max(e2e)
