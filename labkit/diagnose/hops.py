"""Which hop grew: two or more runs compared hop by hop, in sentences built from the numbers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from labkit import stats
from labkit.diagnose.evidence import _as_records

__all__ = ["HopComparison", "compare_hops"]

#: A hop "grew" when its percentile rose by at least this much (seconds) and this factor.
MIN_GROWTH_S = 0.001
MIN_GROWTH_FACTOR = 1.2
_ENGINE_HOPS = ("engine_first", "decode")


@dataclass(frozen=True)
class HopComparison:
    """Percentiles of every hop per run, and what changed against the baseline run."""

    baseline: str
    quantile: float
    table: dict[str, dict[str, float | None]]  # hop -> run -> seconds at the quantile
    counts: dict[str, dict[str, int]]
    growth: dict[str, dict[str, float]] = field(default_factory=dict)  # run -> hop -> seconds gained

    def largest_growth(self, run: str) -> tuple[str, float] | None:
        """Return the hop that grew most in ``run`` against the baseline, if one grew enough."""
        grown = self.growth.get(run) or {}
        if not grown:
            return None
        hop = max(grown, key=lambda h: grown[h])
        return hop, grown[hop]

    def sentences(self) -> list[str]:
        """One sentence per run against the baseline, each from the table's numbers."""
        label = stats.percentile_label(self.quantile)
        out = []
        for run in self._runs():
            if run == self.baseline:
                continue
            top = self.largest_growth(run)
            if top is None:
                out.append(
                    f"{run}: no hop's {label} grew by {MIN_GROWTH_S * 1000:g} ms and {MIN_GROWTH_FACTOR:g}x "
                    f"over {self.baseline}'s."
                )
                continue
            hop, gained = top
            before, after = self.table[hop][self.baseline], self.table[hop][run]
            where = "inside the engine" if hop in _ENGINE_HOPS else "before or after the engine, not in it"
            text = (
                f"{run}: the hop that grew most at {label} is '{stats_label(hop)}' ({where}): "
                f"{_ms(before)} -> {_ms(after)} (+{gained * 1000:.1f} ms) over {self.baseline}."
            )
            engine = [h for h in _ENGINE_HOPS if h != hop and h in self.table]
            if engine:
                h = engine[0]
                text += f" '{stats_label(h)}' went {_ms(self.table[h][self.baseline])} -> {_ms(self.table[h][run])}."
            out.append(text)
        return out

    def _runs(self) -> list[str]:
        runs: list[str] = []
        for row in self.table.values():
            runs.extend(r for r in row if r not in runs)
        return runs

    def to_markdown(self) -> str:
        """The table (milliseconds) and the sentences."""
        runs = self._runs()
        label = stats.percentile_label(self.quantile)
        lines = [f"| hop ({label}, ms) | " + " | ".join(runs) + " |", "|---|" + "---:|" * len(runs)]
        for hop, row in self.table.items():
            lines.append(f"| {stats_label(hop)} | " + " | ".join(_ms(row.get(r)) for r in runs) + " |")
        return "\n".join(lines) + "\n\n" + "\n".join(f"- {s}" for s in self.sentences())

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "baseline": self.baseline,
            "quantile": self.quantile,
            "table": self.table,
            "counts": self.counts,
            "growth": self.growth,
            "sentences": self.sentences(),
        }


def stats_label(hop: str) -> str:
    """The hop's name as the figure writes it."""
    return stats.HOP_LABELS.get(hop, hop)


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.1f} ms"


def compare_hops(
    runs: Mapping[str, Any],
    *,
    baseline: str | None = None,
    quantile: float = 99,
    offsets: Mapping[str, float] | None = None,
) -> HopComparison:
    """Compare every hop of several runs at one percentile, against a baseline run.

    Parameters
    ----------
    runs : mapping
        ``{name: records or LoadResult}``.
    baseline : str, optional
        The run the others are measured against; default the first.
    quantile : float
        The percentile compared. Where a run has too few samples of a hop for it (100 for p99), the
        highest of p95 / p50 that every run supports is used for the whole comparison instead.
    offsets : mapping, optional
        Clock offsets (see :func:`labkit.stats.hop_times`).

    Returns
    -------
    HopComparison
        Table, counts, the growth of each hop (only hops that grew by at least
        :data:`MIN_GROWTH_S` and :data:`MIN_GROWTH_FACTOR`), and sentences.
    """
    names = list(runs)
    if not names:
        msg = "compare_hops needs at least one run."
        raise ValueError(msg)
    base = baseline if baseline is not None else names[0]
    if base not in runs:
        msg = f"baseline={base!r} is not one of the runs {names}."
        raise ValueError(msg)
    breakdowns = {name: stats.hop_breakdown(_as_records(data), offsets=offsets) for name, data in runs.items()}
    hops = [h for h in stats.HOPS if h != "send_lag" and any(h in b for b in breakdowns.values())]
    fewest = min((b[h]["count"] for b in breakdowns.values() for h in hops if h in b), default=0)
    q = next((c for c in (quantile, 95, 50) if c <= quantile and stats.percentile_supported(c, fewest)), 50)
    table: dict[str, dict[str, float | None]] = {}
    counts: dict[str, dict[str, int]] = {}
    for hop in hops:
        table[hop] = {}
        counts[hop] = {}
        for name, b in breakdowns.items():
            values = b[hop]["values"] if hop in b else []
            table[hop][name] = stats.percentiles(values, [q])[stats.percentile_label(q)] if values else None
            counts[hop][name] = len(values)
    growth: dict[str, dict[str, float]] = {}
    for name in names:
        if name == base:
            continue
        grown = {}
        for hop in hops:
            before, after = table[hop].get(base), table[hop].get(name)
            if before is None or after is None:
                continue
            if after - before >= MIN_GROWTH_S and after >= MIN_GROWTH_FACTOR * max(before, 0.0):
                grown[hop] = after - before
        growth[name] = grown
    return HopComparison(baseline=base, quantile=q, table=table, counts=counts, growth=growth)
