"""Every hop of a request, from the intended send to the last token at the client.

The load generator notes its own times (intended send, actual send, each text chunk's arrival) on
its monotonic clock. The kit's servers stamp theirs as seconds after the client's send (the
client sends its wall clock in ``x-labkit-sent-at``; each stamp is the server's wall clock minus
it): the Serve proxy (``proxy_at_s``), the coordinator (``coordinator_at_s``), the replica
(``replica_at_s``), the engine submit (``submit_at_s``), the first and last token at the replica
(``first_token_at_s``, ``last_token_at_s``) and every text chunk's flush (``chunks_at_s`` in the
record's ``extra``). On one host these are one clock. Across hosts a server's stamps are off by
its clock's offset; :func:`hop_times` subtracts the offsets it is given (measured with
:func:`labkit.serve.measure_clock_offsets`).

Hops of the time to first token, in order (seconds; they add up to the TTFT from the intended send):

==================  ==========================================================================
``send_lag``        intended send -> actual send (the load generator)
``to_ingress``      actual send -> the first server that stamps it (proxy, else coordinator, else
                    replica): connection, HTTP parsing
``routing``         that stamp -> replica receive, less any gate wait: Serve's router choice and
                    the handle call(s), through the coordinator when there is one
``coordinator_wait`` waiting for a gate slot (0 without a coordinator)
``replica``         replica receive -> engine submit (request parsing, chat template)
``engine_first``    engine submit -> first token at the replica (queue + prefill)
``first_return``    first token at the replica -> first token at the client (the stream path back)
==================  ==========================================================================

After the first token: ``decode`` (first -> last token at the replica), ``last_return`` (last token
at the replica -> at the client) and ``chunk_return`` (every text chunk: flush at the replica ->
arrival at the client; one sample per chunk). ``engine_queue`` (inside ``engine_first``: waiting in
vLLM's scheduler) comes from the engine's own clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import accumulate
from typing import Any

from labkit.contracts import RequestRecord
from labkit.stats.distribution import percentile_supported, percentiles

__all__ = ["HOPS", "HOP_LABELS", "TTFT_HOPS", "hop_breakdown", "hop_times"]

#: Hops whose sum is the time to first token from the intended send.
TTFT_HOPS = ("send_lag", "to_ingress", "routing", "coordinator_wait", "replica", "engine_first", "first_return")
#: Every hop :func:`hop_breakdown` reports, in the request's order.
HOPS = (*TTFT_HOPS[:-1], "engine_queue", "first_return", "decode", "last_return", "chunk_return")

#: What each hop is, as the figure's axes name it.
HOP_LABELS = {
    "send_lag": "client: intended -> actual send",
    "to_ingress": "send -> ingress (proxy) receives",
    "routing": "ingress -> replica (router, handle calls)",
    "coordinator_wait": "waiting for a gate slot",
    "replica": "replica -> engine submit",
    "engine_first": "engine: submit -> first token",
    "engine_queue": "engine: queued before scheduled",
    "first_return": "first token: replica -> client",
    "decode": "engine: first -> last token",
    "last_return": "last token: replica -> client",
    "chunk_return": "every chunk: replica flush -> client",
}


def hop_times(record: RequestRecord, offsets: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Return one request's hops in seconds (``chunk_return`` a list); hops it lacks stamps for are absent.

    Parameters
    ----------
    record : RequestRecord
        One request (its ``server`` stamps come from the kit's replicas).
    offsets : mapping, optional
        Seconds each server's clock is ahead of the client's: keys ``"proxy"``, ``"coordinator"``
        and replica node ids. Missing keys count as 0 (one host).

    Returns
    -------
    dict
        ``{hop: seconds}``; ``{}`` for a request without the replica's stamps.
    """
    out: dict[str, Any] = {"send_lag": record.sent_s - record.scheduled_s}
    s = record.server or {}
    if record.status != "ok" or "replica_at_s" not in s:
        return out
    off = offsets or {}
    node = off.get(record.node_id or "", 0.0)
    replica_at = s["replica_at_s"] - node
    coordinator_at = s["coordinator_at_s"] - off.get("coordinator", 0.0) if "coordinator_at_s" in s else None
    proxy_at = s["proxy_at_s"] - off.get("proxy", 0.0) if "proxy_at_s" in s else None
    ingress = proxy_at if proxy_at is not None else coordinator_at if coordinator_at is not None else replica_at
    wait = s.get("coordinator_wait_s", 0.0)
    out["to_ingress"] = ingress
    out["routing"] = replica_at - ingress - wait
    out["coordinator_wait"] = wait
    if "engine_queue_s" in s:
        out["engine_queue"] = s["engine_queue_s"]
    if "submit_at_s" not in s:
        return out
    submit_at = s["submit_at_s"] - node
    out["replica"] = submit_at - replica_at
    if "first_token_at_s" not in s or record.first_token_s is None:
        return out
    first_at = s["first_token_at_s"] - node
    out["engine_first"] = first_at - submit_at
    out["first_return"] = (record.first_token_s - record.sent_s) - first_at
    if "last_token_at_s" in s and record.last_token_s is not None:
        last_at = s["last_token_at_s"] - node
        out["decode"] = last_at - first_at
        out["last_return"] = (record.last_token_s - record.sent_s) - last_at
    chunks = (record.extra or {}).get("chunks_at_s")
    if isinstance(chunks, list) and chunks and len(chunks) == len(record.itl_s) + 1:
        arrived = accumulate(record.itl_s, initial=record.first_token_s - record.sent_s)
        out["chunk_return"] = [a - (c - node) for a, c in zip(arrived, chunks, strict=True)]
    return out


def hop_breakdown(
    records: Iterable[RequestRecord],
    *,
    offsets: Mapping[str, float] | None = None,
    include_warmup: bool = False,
    qs: tuple[float, ...] = (50, 95, 99),
) -> dict[str, dict[str, Any]]:
    """Summarize every hop over a run: ``{hop: {"count", "mean", "p50", "p95", "p99", "values"}}``.

    Parameters
    ----------
    records : iterable of RequestRecord
        One run.
    offsets : mapping, optional
        Clock offsets, see :func:`hop_times`.
    include_warmup : bool
        Keep warm-up records.
    qs : tuple of float
        Percentiles to report (a percentile the sample count cannot support is left out).

    Returns
    -------
    dict
        Hops in :data:`HOPS` order; a hop no request had stamps for is absent. ``values`` keeps the
        samples (seconds) for histograms; ``chunk_return`` has one sample per text chunk.
    """
    samples: dict[str, list[float]] = {hop: [] for hop in HOPS}
    for record in records:
        if record.warmup and not include_warmup:
            continue
        for hop, value in hop_times(record, offsets).items():
            if isinstance(value, list):
                samples[hop].extend(value)
            else:
                samples[hop].append(value)
    out: dict[str, dict[str, Any]] = {}
    for hop in HOPS:
        values = samples[hop]
        if not values:
            continue
        out[hop] = {
            "count": len(values),
            "mean": sum(values) / len(values),
            **percentiles(values, [q for q in qs if percentile_supported(q, len(values))]),
            "values": values,
        }
    return out
