"""Async load generator for any OpenAI-compatible endpoint (skeleton: the record contract).

Owns: arrival processes, the request loop, timing, and the JSONL of :class:`RequestRecord`.

Clock: every ``*_s`` time in a record is ``time.perf_counter()`` of the load-generating
process (CLOCK_MONOTONIC on Linux), so records and telemetry samples share one clock.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SERVER_HEADER_NODE", "SERVER_HEADER_REPLICA", "SERVER_HEADER_SENT_AT",
           "SERVER_HEADER_TIMINGS", "RequestRecord"]

# Attribution contract with labkit.serve (headers; the final stream event carries the same
# data under the top-level key "labkit": {"node_id", "replica_id", "timings"}).
SERVER_HEADER_NODE = "x-labkit-node-id"
SERVER_HEADER_REPLICA = "x-labkit-replica-id"
SERVER_HEADER_TIMINGS = "x-labkit-timings"  # JSON object of server timings, seconds
SERVER_HEADER_SENT_AT = "x-labkit-sent-at"  # client -> server: time.time() at send (wall clock)


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

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestRecord:
        """Build a record from :meth:`to_dict` output, ignoring unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
