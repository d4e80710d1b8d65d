"""Names and records that two processes or two stages of the kit must agree on, defined once.

Imports nothing heavy, and every stage may import it. The cluster advertises what the serve stage
reserves; the serve stage sets what vLLM's processes read back; the replicas send the ``x-labkit-*``
headers the load generator reads (and the tests' fake server sends them too); the load generator
writes :class:`RequestRecord`, which stats, diagnose, plots and record read without importing it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "COORDINATOR_RESOURCE",
    "CPU_DEVICE_RESOURCE",
    "CPU_RAY_ENV",
    "HEADER_COORD_ID",
    "HEADER_COORD_WAIT",
    "HEADER_COORD_AT",
    "HEADER_NODE",
    "HEADER_PROXY_AT",
    "HEADER_REPLICA",
    "HEADER_SENT_AT",
    "HEADER_TIMINGS",
    "LLM_DEPLOYMENT",
    "STATUSES",
    "RequestRecord",
    "worker_host_ip",
]

# -- the headers between the replicas and the load generator -------------------------------------
#: Replica -> client: the node the answering replica runs on.
HEADER_NODE = "x-labkit-node-id"
#: Replica -> client: the answering replica's id.
HEADER_REPLICA = "x-labkit-replica-id"
#: Replica -> client: JSON object of server timings in seconds (``RequestRecord.server``).
HEADER_TIMINGS = "x-labkit-timings"
#: Client -> server: ``time.time()`` when the request was sent (wall clock).
HEADER_SENT_AT = "x-labkit-sent-at"
#: Coordinator -> replica: seconds the request waited for a gate slot.
HEADER_COORD_WAIT = "x-labkit-coordinator-wait"
#: Coordinator -> replica: which coordinator passed the request on.
HEADER_COORD_ID = "x-labkit-coordinator-id"
#: Coordinator -> replica: ``time.time()`` when the coordinator received the request.
HEADER_COORD_AT = "x-labkit-coordinator-at"
#: Serve proxy -> replica: ``time.time()`` when the proxy received the request (labkit.serve.hops).
HEADER_PROXY_AT = "x-labkit-proxy-at"

# -- deployment names -----------------------------------------------------------------------------
#: Serve deployment name of the kit's engine replicas (telemetry and the placement proof find them by it).
LLM_DEPLOYMENT = "LLMServer"
#: Custom resource only the head advertises: the coordinator (and nothing else) is pinned to it.
COORDINATOR_RESOURCE = "labkit_head"

#: Custom resource of one CPU "device slot": a TP x PP rank of a CPU replica takes one, as a GPU
#: rank takes one GPU. Each embedded worker node advertises ``cpu_devices_per_node`` of them.
CPU_DEVICE_RESOURCE = "labkit_cpu_device"

#: Set to ``1`` in a CPU replica's runtime env to run its vLLM ranks as Ray actors
#: (the platform plugin in :mod:`labkit.serve.cpu_ray` activates on it).
CPU_RAY_ENV = "LABKIT_VLLM_CPU_RAY"


def worker_host_ip(index: int) -> str:
    """Return the loopback address the embedded cluster's worker ``index`` (1-based) gives vLLM.

    Parameters
    ----------
    index : int
        Worker number (``worker-1`` is 1).

    Returns
    -------
    str
        ``127.0.0.<index + 1>``; the head keeps the host's address.
    """
    return f"127.0.0.{index + 1}"


# -- the request record ----------------------------------------------------------------------------
STATUSES = ("ok", "error", "timeout", "cancelled")


@dataclass
class RequestRecord:
    """One request, as the load generator saw it.

    Times are seconds on the load generator's monotonic clock. ``server`` holds the server
    timings (seconds) when the server sends them, keys:
    ``client_to_replica_s`` (client send -> replica arrival, wall clocks; includes proxy,
    router and coordinator), ``coordinator_wait_s`` (waiting for a gating coordinator slot),
    ``replica_wait_s`` (replica arrival -> engine submit), ``engine_queue_s`` (inside the
    engine before it is scheduled), ``engine_ttft_s`` (engine submit -> first token),
    ``engine_total_s`` (engine submit -> last token). Hop stamps, seconds after the client's send
    on the stamping host's clock (see :mod:`labkit.stats.hops`): ``proxy_at_s`` (the HTTP ingress
    received it), ``coordinator_at_s``, ``replica_at_s``, ``submit_at_s``, ``first_token_at_s``,
    ``last_token_at_s``; ``extra["chunks_at_s"]`` lists each text chunk's flush at the replica.

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
