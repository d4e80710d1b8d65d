"""Distribution primitives: percentiles, their confidence intervals, histogram bins.

Owns: :data:`DEFAULT_PERCENTILES`, :func:`percentile_label`, :func:`percentiles` (identical to
``numpy.percentile``), the percentile bootstrap and the order-statistic interval behind
:func:`bootstrap_ci`, and :func:`histogram_bins`. Works on plain samples; what a sample is (and
how failures count) is :mod:`labkit.stats.latency`'s business.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from labkit.errors import ConfigError

__all__ = [
    "DEFAULT_PERCENTILES",
    "bootstrap_ci",
    "histogram_bins",
    "percentile_label",
    "percentile_supported",
    "percentiles",
]

DEFAULT_PERCENTILES = (50, 90, 95, 99, 99.9)


def _np() -> Any:
    import numpy  # heavy-ish: imported on first use, not with labkit

    return numpy


def percentile_supported(q: float, n: int) -> bool:
    """Whether ``n`` samples have at least one above their q-th percentile (n >= 100 for p99, 20 for p95).

    Below that the "q-th percentile" is the maximum, one request: the kit neither reports nor draws it.
    """
    return n * (100.0 - q) / 100.0 >= 1.0 - 1e-9


def percentile_label(q: float) -> str:
    """Name a percentile: 50 -> ``"p50"``, 99.9 -> ``"p99.9"``.

    Parameters
    ----------
    q : float
        Percentile in [0, 100].

    Returns
    -------
    str
        The label used as key in every summary.
    """
    return f"p{float(q):g}"


# --------------------------------------------------------------------------- primitives
def percentiles(values: Iterable[float], qs: Sequence[float] = DEFAULT_PERCENTILES) -> dict[str, float]:
    """Percentiles of ``values``, identical to ``numpy.percentile`` (linear interpolation).

    Parameters
    ----------
    values : iterable of float
        Samples.
    qs : sequence of float
        Percentiles in [0, 100].

    Returns
    -------
    dict
        ``{"p50": ..., "p99.9": ...}``; NaN for every q when ``values`` is empty.

    Raises
    ------
    ConfigError
        A q outside [0, 100].
    """
    np = _np()
    for q in qs:
        if not 0 <= q <= 100:
            msg = f"Percentile {q!r} is outside [0, 100]. Pass qs like (50, 99, 99.9)."
            raise ConfigError(msg, field="qs", value=q)
    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0:
        return {percentile_label(q): math.nan for q in qs}
    res = np.percentile(arr, list(qs))
    return {percentile_label(q): float(v) for q, v in zip(qs, res, strict=True)}


def _bootstrap_many(arr: Any, qs: Sequence[float], n_boot: int, confidence: float, seed: int) -> dict:
    np = _np()
    n = arr.size
    if n == 0:
        return {percentile_label(q): (math.nan, math.nan) for q in qs}
    if n == 1:
        return {percentile_label(q): (float(arr[0]), float(arr[0])) for q in qs}
    rng = np.random.default_rng(seed)
    rows = max(1, 4_000_000 // n)  # resample in blocks of ~4M values to bound memory
    stats = []
    done = 0
    while done < n_boot:
        b = min(rows, n_boot - done)
        sample = arr[rng.integers(0, n, size=(b, n))]
        stats.append(np.percentile(sample, list(qs), axis=1).T)  # (b, len(qs))
        done += b
    all_stats = np.concatenate(stats, axis=0)
    alpha = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(all_stats, [alpha, 100 - alpha], axis=0)
    return {percentile_label(q): (float(lo[k]), float(hi[k])) for k, q in enumerate(qs)}


def _order_statistic_ci(arr: Any, qs: Sequence[float], confidence: float) -> dict:
    from statistics import NormalDist

    np = _np()
    s = np.sort(arr)
    n = s.size
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    out = {}
    for q in qs:
        p = q / 100
        half = z * math.sqrt(n * p * (1 - p))
        lo = min(max(int(math.floor(n * p - half)) - 1, 0), n - 1)
        hi = min(max(int(math.ceil(n * p + half)), 0), n - 1)
        out[percentile_label(q)] = (float(s[lo]), float(s[hi]))
    return out


def bootstrap_ci(
    values: Iterable[float], q: float, *, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the q-th percentile.

    Parameters
    ----------
    values : iterable of float
        Samples.
    q : float
        Percentile in [0, 100].
    n_boot : int
        Resamples.
    confidence : float
        Coverage in (0, 1).
    seed : int
        Seed of the resampling (the interval is deterministic).

    Returns
    -------
    tuple of float
        ``(low, high)``; NaN for no samples, ``(v, v)`` for one.

    Raises
    ------
    ConfigError
        ``q``, ``n_boot`` or ``confidence`` out of range.
    """
    if not 0 <= q <= 100 or n_boot < 1 or not 0 < confidence < 1:
        msg = (
            f"bootstrap_ci needs 0 <= q <= 100, n_boot >= 1, 0 < confidence < 1; got q={q!r}, "
            f"n_boot={n_boot!r}, confidence={confidence!r}."
        )
        raise ConfigError(msg, field="q", value=q)
    arr = _np().asarray(list(values), dtype=float)
    return _bootstrap_many(arr, [q], n_boot, confidence, seed)[percentile_label(q)]


def histogram_bins(values: Iterable[float], *, bins: int = 40, log: bool = False) -> Any:
    """Bin edges for a latency histogram, linear or log-spaced.

    Parameters
    ----------
    values : iterable of float
        Samples; non-finite ones (and, with ``log``, non-positive ones) are ignored.
    bins : int
        Number of bins (edges = bins + 1).
    log : bool
        Log-spaced edges (``numpy.geomspace``), for tails spanning decades.

    Returns
    -------
    numpy.ndarray
        ``bins + 1`` increasing edges covering every used value; ``[0, 1]`` split evenly when
        there is nothing to bin. Pass to ``numpy.histogram`` or ``plt.hist(..., bins=edges)``.

    Raises
    ------
    ConfigError
        ``bins`` < 1.
    """
    np = _np()
    if not isinstance(bins, int) or bins < 1:
        msg = f"histogram_bins needs bins >= 1, got {bins!r}. Pass bins=40."
        raise ConfigError(msg, field="bins", value=bins)
    arr = np.asarray(list(values), dtype=float)
    arr = arr[np.isfinite(arr)]
    if log:
        arr = arr[arr > 0]
    if arr.size == 0:
        return np.geomspace(1e-3, 1.0, bins + 1) if log else np.linspace(0.0, 1.0, bins + 1)
    lo, hi = float(arr.min()), float(arr.max())
    if log:
        if hi <= lo:
            lo, hi = lo / 1.1, hi * 1.1
        return np.geomspace(lo, hi, bins + 1)
    if hi <= lo:
        pad = abs(lo) * 0.05 or 0.5
        lo, hi = lo - pad, hi + pad
    return np.linspace(lo, hi, bins + 1)
