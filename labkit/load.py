"""Async load generator for any OpenAI-compatible endpoint.

Owns: arrival processes, the request loop, timing, and the JSONL of :class:`RequestRecord`.

Clock: every ``*_s`` time in a record is ``time.perf_counter()`` of the load-generating
process (CLOCK_MONOTONIC on Linux), so records and telemetry samples share one clock.

How the timing is done, and why:

- **Open loop** (``constant``, ``poisson``, ``gamma``): every request has an *intended* send
  time fixed in advance by the arrival process. The scheduler sleeps until that time and starts
  the request; it never waits for a response. ``scheduled_s`` is the intended time, ``sent_s``
  the moment the request actually left (after waiting for a ``max_concurrency`` slot, before
  connecting), so ``e2e_s`` (from ``scheduled_s``) is corrected for coordinated omission as wrk2
  does and ``e2e_uncorrected_s`` (from ``sent_s``) is what most LLM benchmark clients report.
  The difference, ``schedule_lag_s``, is kept for every request.
- **Closed loop** (``closed``): ``users`` clients each send the next request when the previous
  one is done (plus ``think_time_s``); ``scheduled_s`` is the moment the user was ready.
- Tokens come from the server's ``usage`` (``stream_options.include_usage`` is sent), else from
  a tokenizer, else they are left unknown; one stream event is never taken for one token.
  Every gap between two stream events that carry text is one ``itl_s`` sample.
- The HTTP/1.1 client is a small asyncio protocol with keep-alive connections: no task per
  stream event and no JSON parsing of events that carry only text, so one core sustains a few
  thousand streaming requests per second with sub-millisecond schedule lag (see
  ``benchmarks/README-load.md``). On Linux the scheduler wakes on a timerfd at each intended
  send time, so the event loop's millisecond timers do not delay a send by milliseconds; with
  ``short_slice=True`` the loop thread also asks for a short scheduler slice, so that other
  work on a busy core does not either (off by default: it makes the client preempt a server on
  the same cores more often, which can slow a co-located CPU engine). At most
  32 connections are opened at once; other requests take the next free connection (time that
  counts in their latency from the actual send, like connecting does).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import random
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labkit.errors import ConfigError, LoadGenError, MissingDependencyError

__all__ = [
    "ARRIVALS",
    "SERVER_HEADER_NODE",
    "SERVER_HEADER_REPLICA",
    "SERVER_HEADER_SENT_AT",
    "SERVER_HEADER_TIMINGS",
    "LoadConfig",
    "LoadResult",
    "RequestRecord",
    "make_prompts",
    "read_records",
    "register_cli",
    "run_load",
    "run_load_async",
    "run_sweep",
]

# Attribution contract with labkit.serve (headers; the final stream event carries the same
# data under the top-level key "labkit": {"node_id", "replica_id", "timings"}).
SERVER_HEADER_NODE = "x-labkit-node-id"
SERVER_HEADER_REPLICA = "x-labkit-replica-id"
SERVER_HEADER_TIMINGS = "x-labkit-timings"  # JSON object of server timings, seconds
SERVER_HEADER_SENT_AT = "x-labkit-sent-at"  # client -> server: time.time() at send (wall clock)

ARRIVALS = ("constant", "poisson", "gamma", "closed")
APIS = ("completions", "chat")
STATUSES = ("ok", "error", "timeout", "cancelled")

# Without a timerfd (not Linux), the scheduler sleeps on the event loop's timer until this long
# before the intended send time, then yields to the loop (I/O keeps flowing) until the time has
# come: the loop's timers have millisecond granularity, the lag target is under a millisecond.
_SPIN_S = 0.002
# Scheduler slice asked for the loop thread during a run (see _set_sched_slice).
_SLICE_NS = 200_000
# At most this many connections are opened at once; further requests take the next free one.
# Without a cap, a server hiccup at a high rate opens hundreds of connections at once, overflows
# the server's accept queue, and the dropped SYNs come back 1 s later as latency spikes.
_MAX_CONNECTING = 32
# Idle keep-alive connections older than this are not reused (uvicorn closes them after 5 s).
_IDLE_MAX_S = 4.0
# Synthetic prompts are made once and cycled through after this many.
_MAX_PROMPT_POOL = 4096
_PROGRESS_EVERY_S = 0.25

_CONTENT_RE = re.compile(rb'"(?:text|content|reasoning_content)"\s*:\s*"[^"]')
_MARKER_RE = re.compile(rb'"(?:usage"\s*:\s*\{|labkit"\s*:|error"\s*:)')
_WORDS = (  # noqa: SIM905 - a sentence reads better than 100 quoted words
    "the of and to in is that it for on with as was by at be this from or an are not have "
    "but one all were when there can more time which their if will each about how up out "
    "them then many some so these would other into has two like him see could no make than "
    "first been its who now people my made over did down only way find use may water long"
).split()


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
        if (self.first_token_s is None or self.last_token_s is None or self.output_tokens is None
                or self.output_tokens < 2):
            return None
        return (self.last_token_s - self.first_token_s) / (self.output_tokens - 1)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of every field."""
        # Written out instead of dataclasses.asdict: this runs once per request in the hot path.
        return {
            "request_id": self.request_id, "scheduled_s": self.scheduled_s, "sent_s": self.sent_s,
            "done_s": self.done_s, "status": self.status, "warmup": self.warmup,
            "first_token_s": self.first_token_s, "last_token_s": self.last_token_s,
            "http_status": self.http_status, "error": self.error,
            "prompt_tokens": self.prompt_tokens, "output_tokens": self.output_tokens,
            "token_source": self.token_source, "itl_s": list(self.itl_s),
            "node_id": self.node_id, "replica_id": self.replica_id, "server": dict(self.server),
            "extra": dict(self.extra), "timeout_s": self.timeout_s,
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
            msg = (f"Line {k + 1} of '{path}' is not a request record ({err}); "
                   "only the last line may be cut short.")
            raise LoadGenError(msg) from None
    return records


# --------------------------------------------------------------------------- the config
def _f(default: Any = dataclasses.MISSING, help: str = "", **kw: Any) -> Any:  # noqa: A002
    """Dataclass field with a description (``metadata['help']``, also the CLI help)."""
    if default is dataclasses.MISSING:
        return field(metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass(frozen=True)
class LoadConfig:
    """What load to generate, against what, for how long.

    Every field has a description in ``dataclasses.fields(LoadConfig)[i].metadata["help"]``
    (the CLI uses it). Invalid values raise :class:`~labkit.errors.ConfigError` at creation.

    The run ends when the schedule is exhausted (``num_requests`` measured requests, or
    ``duration_s`` of measured schedule, whichever first) and every request has finished or
    timed out; ``hard_stop_s`` after the start, whatever is still running is cancelled and
    recorded as ``cancelled``. Warm-up requests come first, on top of ``num_requests`` /
    ``duration_s``, and are flagged ``warmup=True``.
    """

    url: str = _f(help="Base URL of the server (http://host:port or .../v1) or the full endpoint URL.")
    model: str | None = _f(None, help="Model name sent in requests; None asks the server's /v1/models.")
    api: str = _f("completions", help="'completions' (/v1/completions) or 'chat' (/v1/chat/completions).")
    stream: bool = _f(True, help="Stream tokens (server-sent events); needed for TTFT and gaps.")
    arrival: str = _f("poisson", help="Arrival process: constant, poisson, gamma or closed (N users).")
    rate_rps: float | None = _f(None, help="Offered request rate (open loop), requests per second.")
    burstiness: float = _f(1.0, help="Gamma shape (arrival='gamma'): 1 is Poisson, <1 burstier.")
    ramp_to_rps: float | None = _f(None, help="Ramp the rate linearly from rate_rps to this over duration_s.")
    users: int | None = _f(None, help="Concurrent users for arrival='closed'.")
    think_time_s: float = _f(0.0, help="Closed loop: pause between a user's response and next request.")
    num_requests: int | None = _f(None, help="Measured requests to send (warm-up not included).")
    duration_s: float | None = _f(None, help="Measured schedule length in seconds (warm-up not included).")
    warmup_requests: int = _f(0, help="Requests sent first and flagged warmup=True (excluded from stats).")
    max_tokens: int = _f(16, help="max_tokens of every request.")
    prompt_tokens: int = _f(32, help="Synthetic prompt length, tokens (approximate without tokenizer).")
    prompt_file: str | None = _f(None, help="Prompts: one per line, or JSONL with 'prompt' / 'messages'.")
    tokenizer: str | None = _f(None, help="Tokenizer path or id (transformers) for prompts and token counts.")
    seed: int = _f(0, help="Seed of arrivals and synthetic prompts.")
    timeout_s: float = _f(60.0, help="Per-request time-out from the actual send, seconds.")
    hard_stop_s: float | None = _f(None, help="Cancel everything this long after the start; None: no cap.")
    max_concurrency: int | None = _f(None, help="Open loop: most requests in flight; others wait (and lag).")
    headers: dict[str, str] = _f(help="Extra HTTP headers (values never written out).", default_factory=dict,
                                 hash=False, repr=False)
    api_key: str | None = _f(None, help="Bearer token; never written to records or summaries.", repr=False)
    ignore_eos: bool = _f(False, help="Send ignore_eos=true (vLLM): every response has max_tokens tokens.")
    temperature: float | None = _f(None, help="Sampling temperature to send; None leaves the server default.")
    extra_body: dict[str, Any] = _f(help="Extra fields merged into every request body.",
                                    default_factory=dict, hash=False)
    records_path: str | None = _f(None, help="JSONL file that receives one record per finished request.")
    short_slice: bool = _f(False, help="Linux: ask for a 0.2 ms scheduler slice for the client thread (steadier "
                                       "schedule on a busy machine; may slow a server on the same cores).")

    def __post_init__(self) -> None:
        for name, allowed, fix in self._problems():
            value = getattr(self, name)
            msg = f"LoadConfig.{name}={value!r} is invalid: {allowed}. {fix}"
            raise ConfigError(msg, field=name, value=value)

    def _problems(self) -> Iterator[tuple[str, str, str]]:
        """Yield ``(field, what is allowed, how to fix)`` for each bad value, in field order."""
        if not isinstance(self.url, str) or not re.match(r"^https?://[^/\s]+", self.url):
            yield ("url", "it must start with http:// or https:// and name a host",
                   "Pass e.g. url='http://127.0.0.1:8000'.")
        if self.api not in APIS:
            yield "api", f"allowed values are {list(APIS)}", "Use 'completions' or 'chat'."
        if self.arrival not in ARRIVALS:
            yield "arrival", f"allowed values are {list(ARRIVALS)}", "Pick one of them."
        if self.arrival == "closed":
            if not isinstance(self.users, int) or self.users < 1:
                yield "users", "arrival='closed' needs an integer >= 1", "Pass users=4, for example."
        elif self.rate_rps is None or not (self.rate_rps > 0 and math.isfinite(self.rate_rps)):
            yield ("rate_rps", f"arrival='{self.arrival}' needs a finite rate > 0",
                   "Pass rate_rps=10, or arrival='closed' with users=N.")
        elif self.ramp_to_rps is not None:
            if not (self.ramp_to_rps > 0 and math.isfinite(self.ramp_to_rps)):
                yield "ramp_to_rps", "it must be a finite rate > 0", "Pass ramp_to_rps=50."
            elif self.duration_s is None:
                yield "ramp_to_rps", "a ramp needs duration_s (it spans the duration)", "Pass duration_s too."
        if not (self.burstiness > 0 and math.isfinite(self.burstiness)):
            yield "burstiness", "it must be a finite number > 0", "1.0 is Poisson."
        if self.num_requests is None and self.duration_s is None:
            yield ("num_requests", "num_requests and duration_s are both None, the run would not end",
                   "Pass num_requests=..., duration_s=..., or both.")
        n = self.num_requests
        if n is not None and (not isinstance(n, int) or n < 1):
            yield "num_requests", "it must be an integer >= 1", "Pass num_requests=100."
        if self.duration_s is not None and not (self.duration_s > 0 and math.isfinite(self.duration_s)):
            yield "duration_s", "it must be a finite number of seconds > 0", "Pass duration_s=30."
        for name, example in (("warmup_requests", 0), ("max_tokens", 16), ("prompt_tokens", 32)):
            value, least = getattr(self, name), 0 if name == "warmup_requests" else 1
            if not isinstance(value, int) or value < least:
                yield name, f"it must be an integer >= {least}", f"Pass {name}={example}."
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            yield "timeout_s", "it must be a finite number of seconds > 0", "Pass timeout_s=60."
        if self.hard_stop_s is not None and not self.hard_stop_s > 0:
            yield "hard_stop_s", "it must be None or seconds > 0", "Pass hard_stop_s=120."
        if self.think_time_s < 0:
            yield "think_time_s", "it must be >= 0 seconds", "Pass think_time_s=0."
        if self.max_concurrency is not None and (not isinstance(self.max_concurrency, int)
                                                 or self.max_concurrency < 1):
            yield "max_concurrency", "it must be None or an integer >= 1", "Pass max_concurrency=64."
        if self.prompt_file is not None and not Path(self.prompt_file).is_file():
            yield "prompt_file", "no such file", "Pass the path of an existing prompts file."

    @property
    def endpoint_url(self) -> str:
        """The full URL requests are POSTed to."""
        url = self.url.rstrip("/")
        if url.endswith("/completions"):
            return url
        suffix = "/chat/completions" if self.api == "chat" else "/completions"
        return url + suffix if url.endswith("/v1") else url + "/v1" + suffix

    @property
    def offered_rate_rps(self) -> float | None:
        """Mean offered rate of the measured schedule (None for a closed loop)."""
        if self.arrival == "closed":
            return None
        if self.ramp_to_rps is not None:
            return (self.rate_rps + self.ramp_to_rps) / 2  # type: ignore[operator]
        return self.rate_rps

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict; header values and the API key are redacted."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["headers"] = {k: "<redacted>" for k in self.headers}
        data["api_key"] = "<redacted>" if self.api_key else None
        data["extra_body"] = dict(self.extra_body)
        return data


# --------------------------------------------------------------------------- prompts
def _load_tokenizer(name_or_path: str) -> Any:
    """Load a Hugging Face tokenizer (transformers is heavy: imported only here)."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        msg = "Counting or making tokens needs transformers. Run pip install transformers"
        raise MissingDependencyError(msg) from None
    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        msg = f"Cannot load tokenizer '{name_or_path}': {err}. Pass a local tokenizer directory."
        raise LoadGenError(msg) from None


def _read_prompt_file(path: str) -> list[str | list[dict[str, Any]]]:
    prompts: list[str | list[dict[str, Any]]] = []
    is_jsonl = path.endswith((".jsonl", ".json"))
    with open(path, encoding="utf-8") as fh:
        for k, line in enumerate(fh):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if not is_jsonl:
                prompts.append(line)
                continue
            try:
                obj = json.loads(line)
            except ValueError as err:
                msg = (f"Line {k + 1} of prompt file '{path}' is not JSON ({err}). "
                       "Use one JSON object per line.")
                raise LoadGenError(msg) from None
            if isinstance(obj, str):
                prompts.append(obj)
            elif isinstance(obj, dict) and isinstance(obj.get("messages"), list):
                prompts.append(obj["messages"])
            elif isinstance(obj, dict) and isinstance(obj.get("prompt", obj.get("text")), str):
                prompts.append(obj.get("prompt", obj.get("text")))
            else:
                msg = (f"Line {k + 1} of prompt file '{path}' has neither 'prompt', 'text' nor 'messages'. "
                       "Write {\"prompt\": \"...\"} per line.")
                raise LoadGenError(msg)
    if not prompts:
        msg = f"Prompt file '{path}' holds no prompts. Write one prompt per line."
        raise LoadGenError(msg)
    return prompts


def make_prompts(config: LoadConfig, count: int, *,
                 tokenizer: Any = None) -> list[str | list[dict[str, Any]]]:
    """Make the prompts of a run, deterministic under ``config.seed``.

    Parameters
    ----------
    config : LoadConfig
        ``prompt_file`` (read in order, cycled), else synthetic prompts of
        ``prompt_tokens`` tokens: random token ids of ``config.tokenizer`` decoded to text
        and re-encoded to the exact length, or, with no tokenizer, random common English
        words (about one token each for BPE tokenizers).
    count : int
        How many prompts; at most 4096 distinct synthetic prompts are made (then reused).
    tokenizer : object, optional
        An already loaded tokenizer (``encode`` / ``decode`` / ``vocab_size``).

    Returns
    -------
    list
        Strings, or chat message lists from a JSONL prompt file.

    Raises
    ------
    LoadGenError
        The prompt file is empty or malformed, or the tokenizer cannot be loaded.
    """
    if config.prompt_file is not None:
        return _read_prompt_file(config.prompt_file)
    rng = random.Random(config.seed)
    n = config.prompt_tokens
    count = max(1, min(count, _MAX_PROMPT_POOL))
    if tokenizer is None and config.tokenizer is not None:
        tokenizer = _load_tokenizer(config.tokenizer)
    if tokenizer is None:
        return [" ".join(rng.choices(_WORDS, k=n)) for _ in range(count)]
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    vocab = [i for i in range(int(tokenizer.vocab_size)) if i not in special]
    prompts: list[str | list[dict[str, Any]]] = []
    for _ in range(count):
        ids = [rng.choice(vocab) for _ in range(n)]
        text = tokenizer.decode(ids)
        for _attempt in range(4):  # decode/encode is not an identity: nudge to the exact length
            ids = tokenizer.encode(text, add_special_tokens=False)
            if len(ids) == n:
                break
            ids = ids[:n] if len(ids) > n else ids + [rng.choice(vocab) for _ in range(n - len(ids))]
            text = tokenizer.decode(ids)
        prompts.append(text)
    return prompts


# --------------------------------------------------------------------------- arrivals
def _arrival_offsets(config: LoadConfig) -> Iterator[tuple[int, float]]:
    """Yield ``(index, offset_s)`` of every open-loop request, warm-up first.

    Each request advances an "operational clock" by a unit-mean increment (1 for constant,
    Exp(1) for Poisson, Gamma(k, 1/k) for gamma); the offset is the time at which the
    cumulative rate reaches that clock, so a ramp only changes the mapping.
    """
    rng = random.Random(config.seed)
    kind, k = config.arrival, config.burstiness
    r0 = float(config.rate_rps)  # type: ignore[arg-type]
    r1 = float(config.ramp_to_rps) if config.ramp_to_rps is not None else r0
    w, n_max, dur = config.warmup_requests, config.num_requests, config.duration_s

    def step() -> float:
        if kind == "constant":
            return 1.0
        if kind == "poisson":
            return rng.expovariate(1.0)
        return rng.gammavariate(k, 1.0 / k)

    u = 0.0
    for i in range(w):  # warm-up at the start rate; the first request goes at once
        yield i, u / r0
        u += step()
    start = u / r0
    slope = (r1 - r0) / dur if (dur and r1 != r0) else 0.0
    m = 0
    u = 0.0
    while n_max is None or m < n_max:
        if slope == 0.0:
            t = u / r0
        else:  # invert r0 t + slope t^2 / 2 = u; constant r1 after the ramp
            t_ramp = dur  # type: ignore[assignment]
            u_ramp = r0 * t_ramp + slope * t_ramp * t_ramp / 2
            t = ((-r0 + math.sqrt(r0 * r0 + 2 * slope * u)) / slope if u <= u_ramp
                 else t_ramp + (u - u_ramp) / r1)
        if dur is not None and t >= dur:
            return
        yield w + m, start + t
        m += 1
        u += step()


# --------------------------------------------------------------------------- HTTP client
class _Req:
    """Mutable state of one request while it is in flight."""

    __slots__ = ("index", "scheduled_s", "sent_s", "warmup", "user", "first_token_s", "last_token_s",
                 "itl", "usage", "labkit", "node_id", "replica_id", "server", "http_status", "error",
                 "texts", "timer", "conn", "done", "retried", "saw_done")

    def __init__(self, index: int, scheduled_s: float, warmup: bool, user: int | None) -> None:
        self.index = index
        self.scheduled_s = scheduled_s
        self.sent_s = scheduled_s
        self.warmup = warmup
        self.user = user
        self.first_token_s: float | None = None
        self.last_token_s: float | None = None
        self.itl: list[float] = []
        self.usage: dict[str, Any] | None = None
        self.labkit: dict[str, Any] | None = None
        self.node_id: str | None = None
        self.replica_id: str | None = None
        self.server: dict[str, float] = {}
        self.http_status: int | None = None
        self.error: str | None = None
        self.texts: list[bytes] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.conn: _Conn | None = None
        self.done = False
        self.retried = False
        self.saw_done = False


_HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER = range(6)
_MODE_LENGTH, _MODE_CHUNKED, _MODE_EOF = range(3)


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; parses responses and SSE events as bytes arrive."""

    def __init__(self, runner: _Runner) -> None:
        self.runner = runner
        self.transport: asyncio.Transport | None = None
        self.req: _Req | None = None
        self.idle_since = 0.0
        self.closed = False
        self.served = 0  # responses completed on this connection
        self._reset()

    def _reset(self) -> None:
        self.state = _HEAD
        self.buf = b""
        self.sse_buf = b""
        self.mode = _MODE_EOF
        self.remaining = 0
        self.keep_alive = True
        self.sse = False
        self.body: list[bytes] = []
        self.got_bytes = False

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        req = self.req
        if req is None:
            return
        self.req = None
        if req.done:
            return
        if self.state == _BODY and self.mode == _MODE_EOF and exc is None:
            self.runner._complete(self, req, time.perf_counter())
            return
        self.runner._lost(self, req, self.got_bytes, exc)

    def send(self, req: _Req, data: bytes) -> None:
        self.req = req
        req.conn = self
        self._reset()
        self.transport.write(data)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self._received(data)
        # A send may have come due while the loop worked through a batch of responses: start it
        # now rather than after the batch and the timer's own turn (the p99 lag at high rates).
        nxt = self.runner.next_arrival
        if nxt is not None and nxt[1] <= time.perf_counter():
            self.runner._tick()

    def _received(self, data: bytes) -> None:
        t = time.perf_counter()
        req = self.req
        if req is None or req.done:
            self.transport.abort()  # type: ignore[union-attr]  # bytes nobody asked for
            return
        self.got_bytes = True
        if self.state == _HEAD:
            buf = self.buf + data if self.buf else data
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                self.buf = buf
                return
            self.buf = b""
            data = buf[i + 4:]
            if not self._head(buf[:i], req):  # 1xx: a real head follows
                if data:
                    self._received(data)
                return
            if self.mode == _MODE_LENGTH and self.remaining == 0:
                self.runner._complete(self, req, t)
                return
            if not data:
                return
        if self.mode == _MODE_CHUNKED:
            self._chunked(data, req, t)
        elif self.mode == _MODE_LENGTH:
            take = data[: self.remaining]
            self.remaining -= len(take)
            self._payload(take, req, t)
            if self.remaining <= 0:
                self.runner._complete(self, req, t)
        else:
            self._payload(data, req, t)

    # parsing
    def _head(self, head: bytes, req: _Req) -> bool:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if 100 <= status < 200:
            return False
        req.http_status = status
        headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self.mode = _MODE_CHUNKED
            self.state = _CHUNK_SIZE
        elif "content-length" in headers:
            self.mode = _MODE_LENGTH
            self.remaining = int(headers["content-length"])
            self.state = _BODY
        else:
            self.mode = _MODE_EOF
            self.state = _BODY
            self.keep_alive = False
        if headers.get("connection", "").lower() == "close":
            self.keep_alive = False
        self.sse = status == 200 and self.runner.stream and "json" not in headers.get("content-type", "")
        node = headers.get(SERVER_HEADER_NODE)
        if node is not None:
            req.node_id = node
        replica = headers.get(SERVER_HEADER_REPLICA)
        if replica is not None:
            req.replica_id = replica
        timings = headers.get(SERVER_HEADER_TIMINGS)
        if timings:
            with contextlib.suppress(ValueError, TypeError):
                req.server.update({k: float(v) for k, v in json.loads(timings).items() if v is not None})
        return True

    def _chunked(self, data: bytes, req: _Req, t: float) -> None:
        """Decode chunked transfer encoding; hand every payload of this read over at once."""
        buf = self.buf + data if self.buf else data
        pos, n = 0, len(buf)
        state = self.state
        out = []
        find = buf.find
        while pos < n:
            if state == _CHUNK_SIZE:
                i = find(b"\r\n", pos)
                if i < 0:
                    break
                try:
                    size = int(buf[pos:i], 16)
                except ValueError:  # chunk extensions: "1a;name=value"
                    size = int(buf[pos:i].split(b";", 1)[0], 16)
                pos = i + 2
                if size == 0:
                    state = _TRAILER
                    continue
                end = pos + size
                if end + 2 <= n:  # the whole chunk and its CRLF are here (the usual case)
                    out.append(buf[pos:end])
                    pos = end + 2
                else:
                    self.remaining = size
                    state = _CHUNK_DATA
            elif state == _CHUNK_DATA:
                end = min(n, pos + self.remaining)
                out.append(buf[pos:end])
                self.remaining -= end - pos
                pos = end
                if self.remaining == 0:
                    state = _CHUNK_CRLF
            elif state == _CHUNK_CRLF:
                if n - pos < 2:
                    break
                pos += 2
                state = _CHUNK_SIZE
            else:  # _TRAILER: lines until an empty one
                i = find(b"\r\n", pos)
                if i < 0:
                    break
                line_empty = i == pos
                pos = i + 2
                if line_empty:
                    self.buf = b""
                    self.state = state
                    if out:
                        self._payload(b"".join(out), req, t)
                    self.runner._complete(self, req, t)
                    return
        self.state = state
        self.buf = buf[pos:]
        if out:
            self._payload(out[0] if len(out) == 1 else b"".join(out), req, t)

    def _payload(self, data: bytes, req: _Req, t: float) -> None:
        if not self.sse:
            self.body.append(data)
            return
        buf = self.sse_buf + data if self.sse_buf else data
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        end = buf.rfind(b"\n\n")
        if end < 0:
            self.sse_buf = buf
            return
        end += 2
        self.sse_buf = buf[end:]
        block = buf[:end] if end < len(buf) else buf
        n_events = block.count(b"\n\n")
        if (block.count(b"\n") == 2 * n_events and block.count(b"data:") == n_events
                and block.startswith(b"data:")):
            self._events_fast(block, n_events, req, t)
        else:
            self._events_slow(block, req, t)

    def _events_fast(self, block: bytes, n_events: int, req: _Req, t: float) -> None:
        """Every event is one ``data:`` line: count text events and find markers in C."""
        k = len(_CONTENT_RE.findall(block))
        if k > n_events:  # an event with two text fields: count them one by one
            self._events_slow(block, req, t)
            return
        if k:
            if req.first_token_s is None:
                req.first_token_s = t
                if k > 1:
                    req.itl.extend([0.0] * (k - 1))
            else:
                req.itl.append(t - req.last_token_s)  # type: ignore[operator]
                if k > 1:
                    req.itl.extend([0.0] * (k - 1))
            req.last_token_s = t
        if b"[DONE]" in block:
            req.saw_done = True
        texts = req.texts
        if texts is not None:
            texts.extend(p for p in (line[5:].strip() for line in block.split(b"\n") if line)
                         if _CONTENT_RE.search(p) is not None)
        last_line = -1
        for m in _MARKER_RE.finditer(block):  # usually one: the final usage / labkit event
            start = block.rfind(b"\n", 0, m.start()) + 1
            if start == last_line:
                continue
            last_line = start
            self.runner._parse_event(req, block[start + 5:block.find(b"\n", m.end())].strip())

    def _events_slow(self, block: bytes, req: _Req, t: float) -> None:
        """Any SSE: multi-line data, comments, event: and id: fields."""
        for event in block.split(b"\n\n"):
            payload = b"\n".join(line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:"))
            if not payload:
                continue  # comment, event: or id: lines only
            if payload == b"[DONE]":
                req.saw_done = True
                continue
            if _CONTENT_RE.search(payload) is not None:
                if req.first_token_s is None:
                    req.first_token_s = t
                else:
                    req.itl.append(t - req.last_token_s)  # type: ignore[operator]
                req.last_token_s = t
                if req.texts is not None:
                    req.texts.append(payload)
            if _MARKER_RE.search(payload) is not None:
                self.runner._parse_event(req, payload)


def _set_sched_slice(slice_ns: int) -> bool:
    """Ask Linux (EEVDF, 6.12+) for a scheduler slice of ``slice_ns`` for the calling thread.

    A short slice lets the kernel run this thread as soon as its timer fires instead of after
    the slice of whatever else runs on the core (about 3 ms by default): on a busy machine that
    is the difference between a schedule lag p99 of 0.1 ms and of 3 ms. It changes neither the
    thread's priority nor its share of the CPU and needs no privilege; 0 restores the default.
    Returns False where it is not supported (other systems, older kernels).
    """
    numbers = {"x86_64": 314, "aarch64": 274}  # sched_setattr
    import platform

    nr = numbers.get(platform.machine())
    if nr is None or not sys.platform.startswith("linux"):
        return False
    import ctypes  # only where the syscall exists
    import os

    class _SchedAttr(ctypes.Structure):
        _fields_ = [("size", ctypes.c_uint32), ("policy", ctypes.c_uint32), ("flags", ctypes.c_uint64),
                    ("nice", ctypes.c_int32), ("priority", ctypes.c_uint32), ("runtime", ctypes.c_uint64),
                    ("deadline", ctypes.c_uint64), ("period", ctypes.c_uint64),
                    ("util_min", ctypes.c_uint32), ("util_max", ctypes.c_uint32)]

    try:
        if os.sched_getscheduler(0) != os.SCHED_OTHER:
            return False  # leave real-time or batch policies alone
        attr = _SchedAttr(size=ctypes.sizeof(_SchedAttr), policy=os.SCHED_OTHER,
                          nice=os.getpriority(os.PRIO_PROCESS, 0), runtime=slice_ns)
        return ctypes.CDLL(None, use_errno=True).syscall(nr, 0, ctypes.byref(attr), 0) == 0
    except (OSError, AttributeError):
        return False


class _TimerFd:
    """A Linux timerfd armed at absolute CLOCK_MONOTONIC times (``time.perf_counter()``).

    The event loop's own timers have millisecond granularity; a timerfd wakes the loop within
    tens of microseconds of the intended time without spinning (a spinning client is a CPU hog
    that the kernel preempts for milliseconds on a shared machine). ctypes over libc, because
    ``os.timerfd_create`` only exists from Python 3.13. :meth:`create` returns None where
    timerfd is unavailable (not Linux); the scheduler then uses the loop's timers.
    """

    def __init__(self, libc: Any, fd: int, spec: Any, loop: asyncio.AbstractEventLoop,
                 callback: Callable[[], None], byref: Callable[[Any], Any]) -> None:
        self.libc, self.fd, self.spec, self.loop, self.callback = libc, fd, spec, loop, callback
        self.settime, self.spec_ref = libc.timerfd_settime, byref(spec)
        loop.add_reader(fd, self._ready)

    @classmethod
    def create(cls, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> _TimerFd | None:
        if not sys.platform.startswith("linux"):
            return None
        import ctypes  # only where a timerfd can exist

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.timerfd_create(1, 0o4000 | 0o2000000)  # CLOCK_MONOTONIC, NONBLOCK | CLOEXEC
        except (OSError, AttributeError):
            return None
        if fd < 0 or time.get_clock_info("perf_counter").implementation != "clock_gettime(CLOCK_MONOTONIC)":
            return None

        class _Spec(ctypes.Structure):
            _fields_ = [("i_sec", ctypes.c_long), ("i_nsec", ctypes.c_long),
                        ("v_sec", ctypes.c_long), ("v_nsec", ctypes.c_long)]

        with contextlib.suppress(OSError, AttributeError):  # a finer timer slack for this thread
            libc.prctl(29, 1000, 0, 0, 0)  # PR_SET_TIMERSLACK, 1 us (default 50 us)
        try:
            return cls(libc, fd, _Spec(), loop, callback, ctypes.byref)
        except (NotImplementedError, OSError):  # a loop without add_reader
            import os

            os.close(fd)
            return None

    def arm(self, when_s: float) -> None:
        sec = int(when_s)
        self.spec.v_sec, self.spec.v_nsec = sec, max(1, int((when_s - sec) * 1e9))
        self.settime(self.fd, 1, self.spec_ref, None)  # TFD_TIMER_ABSTIME

    def _ready(self) -> None:
        import os

        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 8)
        self.callback()

    def close(self) -> None:
        import os

        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.fd)
        with contextlib.suppress(OSError):
            os.close(self.fd)


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


class _Progress:
    """tqdm in terminals, the tqdm.auto widget in notebooks; silently absent without tqdm."""

    def __init__(self, enabled: bool, total: int | None, desc: str) -> None:
        self.bar = None
        if not enabled:
            return
        try:  # tqdm is optional; tqdm.auto picks the notebook widget when ipywidgets works
            from tqdm.auto import tqdm
        except ImportError:
            try:
                from tqdm import tqdm
            except ImportError:
                return
        try:
            self.bar = tqdm(total=total, desc=desc, unit="req", leave=True, mininterval=0.5)
        except Exception:  # noqa: BLE001 - a widget that cannot render (papermill) must not stop a run
            try:
                from tqdm import tqdm as text_tqdm

                self.bar = text_tqdm(total=total, desc=desc, unit="req", leave=True, mininterval=0.5)
            except Exception:  # noqa: BLE001
                self.bar = None

    def update(self, n: int) -> None:
        if self.bar is not None and n:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Runner:
    """One run: schedules requests, owns the connection pool, turns responses into records."""

    def __init__(self, config: LoadConfig, *, records_path: str | None, progress: bool,
                 on_record: Callable[[RequestRecord], None] | None, tokenizer: Any = None) -> None:
        from urllib.parse import urlsplit

        self.config = config
        self.stream = config.stream
        self.on_record = on_record
        self.records: list[RequestRecord] = []
        self.writer = _RecordWriter(None)  # opened once the endpoint answers
        self.records_path = records_path
        self.progress_enabled = progress
        self.tokenizer = tokenizer
        self.notes: list[str] = []
        parts = urlsplit(config.endpoint_url)
        self.host = parts.hostname or "127.0.0.1"
        self.ssl = parts.scheme == "https"
        self.port = parts.port or (443 if self.ssl else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.idle: list[_Conn] = []
        self.conns: set[_Conn] = set()
        self.pending: deque[_Req] = deque()
        self.inflight: set[_Req] = set()
        self.tasks: set[asyncio.Task] = set()
        self.connecting = 0  # connections being opened
        self.conn_waiters: deque[_Req] = deque()  # started requests waiting for a connection
        self.launched = 0
        self.thinking = 0
        self.schedule_done = False
        self.stopping = False
        self.measure_start: float | None = None
        self.emitted = 0
        self.shown = 0
        self.callback_error: BaseException | None = None
        self.timer: _TimerFd | None = None
        self.next_arrival: tuple[int, float] | None = None  # open loop: the next (index, intended time)
        self.tick_handle: asyncio.Handle | None = None  # the scheduler's wake-up without a timerfd
        self.handles: list[asyncio.TimerHandle] = []  # hard stop, progress (the last one)
        self.need_texts = False
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.finished: asyncio.Future = None  # type: ignore[assignment]

    # ------------------------------------------------------------ setup
    def _build_requests(self, model: str) -> None:
        cfg = self.config
        total = (cfg.warmup_requests + (cfg.num_requests or 0)) if cfg.num_requests else _MAX_PROMPT_POOL
        if cfg.duration_s is not None and cfg.rate_rps:
            peak_rps = max(cfg.rate_rps, cfg.ramp_to_rps or 0)
            total = min(total, cfg.warmup_requests + int(cfg.duration_s * peak_rps) + 1)
        prompts = make_prompts(cfg, total, tokenizer=self.tokenizer)
        host = self.host if self.port in (80, 443) else f"{self.host}:{self.port}"
        head = [f"POST {self.path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json",
                "User-Agent: labkit-load",
                "Accept: text/event-stream" if cfg.stream else "Accept: application/json"]
        if cfg.api_key:
            head.append(f"Authorization: Bearer {cfg.api_key}")
        head += [f"{k}: {v}" for k, v in cfg.headers.items()]
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        for prompt in prompts:
            body: dict[str, Any] = {"model": model, "max_tokens": cfg.max_tokens, "stream": cfg.stream}
            if cfg.api == "chat":
                body["messages"] = (prompt if isinstance(prompt, list)
                                    else [{"role": "user", "content": prompt}])
            else:
                body["prompt"] = (prompt if isinstance(prompt, str)
                                  else "\n".join(str(m.get("content", "")) for m in prompt))
            if cfg.stream:
                body["stream_options"] = {"include_usage": True}
            if cfg.ignore_eos:
                body["ignore_eos"] = True
            if cfg.temperature is not None:
                body["temperature"] = cfg.temperature
            body.update(cfg.extra_body)
            data = json.dumps(body, separators=(",", ":")).encode()
            self.bodies.append(data)
            self.heads.append(("\r\n".join([*head, f"Content-Length: {len(data)}"]) + "\r\n").encode())

    async def _get_json(self, url: str) -> Any:
        import urllib.request

        headers = dict(self.config.headers)
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        request = urllib.request.Request(url, headers=headers)

        def _get() -> Any:
            with urllib.request.urlopen(request, timeout=min(self.config.timeout_s, 30)) as resp:  # noqa: S310
                return json.loads(resp.read())

        return await self.loop.run_in_executor(None, _get)

    async def _resolve_model(self) -> str:
        if self.config.model is not None:
            return self.config.model
        base = self.config.endpoint_url.rsplit("/v1/", 1)[0]
        url = base + "/v1/models"
        try:
            data = await self._get_json(url)
            return str(data["data"][0]["id"])
        except Exception as err:  # noqa: BLE001 - any failure means the same: name the model
            msg = f"Cannot learn the model name from {url} ({err}). Pass model='<served model name>'."
            raise LoadGenError(msg, url=url) from None

    async def _preflight(self) -> None:
        """Open one connection before the clock starts: a wrong URL fails here, not 1000 times."""
        try:
            _, conn = await asyncio.wait_for(self.loop.create_connection(
                lambda: _Conn(self), self.host, self.port, ssl=self.ssl or None),
                timeout=min(self.config.timeout_s, 10.0))
        except (OSError, asyncio.TimeoutError) as err:
            msg = (f"Cannot connect to {self.config.endpoint_url} ({err or type(err).__name__}). "
                   "Is the server running, and is url right (http://host:port)?")
            raise LoadGenError(msg, url=self.config.endpoint_url) from None
        self.conns.add(conn)
        conn.idle_since = time.perf_counter()
        self.idle.append(conn)

    # ------------------------------------------------------------ the run
    async def run(self) -> LoadResult:
        cfg = self.config
        self.loop = asyncio.get_running_loop()
        self.finished = self.loop.create_future()
        if cfg.tokenizer is not None and self.tokenizer is None:
            self.tokenizer = await self.loop.run_in_executor(None, _load_tokenizer, cfg.tokenizer)
        self.need_texts = self.tokenizer is not None
        model = await self._resolve_model()
        self._build_requests(model)
        await self._preflight()
        self.writer = _RecordWriter(self.records_path)
        total = cfg.warmup_requests + cfg.num_requests if cfg.num_requests else None
        bar = _Progress(self.progress_enabled, total, f"load {cfg.arrival}")
        self.bar = bar
        import gc

        # A full collection walks every record kept so far: a schedule stall of many ms in a long
        # run. Young generations are still collected; full ones wait for the end of the run.
        thresholds = gc.get_threshold()
        gc.set_threshold(thresholds[0], thresholds[1], 2**30)
        short_slice = cfg.short_slice and _set_sched_slice(_SLICE_NS)
        self.start_s = time.perf_counter()
        self.end_s = self.start_s
        try:
            if cfg.hard_stop_s is not None:
                self.handles.append(self.loop.call_later(cfg.hard_stop_s, self._stop, "cancelled",
                                                         f"hard stop after {cfg.hard_stop_s} s"))
            self.handles.append(self.loop.call_later(_PROGRESS_EVERY_S, self._show_progress))
            if cfg.arrival == "closed":
                self._start_closed()
            else:
                self.timer = _TimerFd.create(self.loop, self._tick)
                self.arrivals = ((i, self.start_s + off) for i, off in _arrival_offsets(cfg))
                self.next_arrival = next(self.arrivals, None)
                self._tick()
            await self.finished
        except asyncio.CancelledError:
            self._stop("cancelled", "interrupted")
            raise
        finally:
            self.end_s = time.perf_counter()
            self.stopping = True
            for handle in self.handles:
                handle.cancel()
            if self.timer is not None:
                self.timer.close()
            for conn in list(self.conns):
                if conn.transport is not None:
                    conn.transport.close()
            for task in list(self.tasks):
                task.cancel()
            self.writer.close()
            bar.update(self.emitted - self.shown)
            bar.close()
            gc.set_threshold(*thresholds)
            if short_slice:
                _set_sched_slice(0)
        if self.callback_error is not None:
            raise self.callback_error
        unknown = sum(1 for r in self.records if r.ok and r.output_tokens is None)
        if unknown:
            self.notes.append(f"output_tokens unknown for {unknown} requests: the server sent no usage "
                              "and no tokenizer was given (pass tokenizer=...).")
        return LoadResult(config=cfg, records=self.records, start_s=self.start_s, end_s=self.end_s,
                          records_path=self.records_path, notes=self.notes)

    def _show_progress(self) -> None:
        if self.stopping:
            return
        self.bar.update(self.emitted - self.shown)
        self.shown = self.emitted
        self.handles[-1] = self.loop.call_later(_PROGRESS_EVERY_S, self._show_progress)

    def _in_bounds(self, index: int, scheduled_s: float) -> bool:
        cfg = self.config
        if index < cfg.warmup_requests:
            return True
        if cfg.num_requests is not None and index - cfg.warmup_requests >= cfg.num_requests:
            return False
        if self.measure_start is None:
            self.measure_start = scheduled_s
        return cfg.duration_s is None or scheduled_s < self.measure_start + cfg.duration_s

    def _tick(self) -> None:
        """Open loop: start every request whose intended time has come, then sleep until the next."""
        if self.stopping:
            return
        nxt = self.next_arrival
        now = time.perf_counter()
        while nxt is not None and nxt[1] <= now:
            self._launch(nxt[0], nxt[1], None)
            nxt = next(self.arrivals, None)
            now = time.perf_counter()
        self.next_arrival = nxt
        if nxt is None:
            self.schedule_done = True
            self._maybe_finish()
            return
        if self.timer is not None:
            self.timer.arm(nxt[1])
            return
        if self.tick_handle is not None:  # one pending wake-up: _tick is also called between responses
            self.tick_handle.cancel()
        delay = nxt[1] - now
        if delay > _SPIN_S:
            self.tick_handle = self.loop.call_later(delay - _SPIN_S, self._tick)
        else:
            self.tick_handle = self.loop.call_soon(self._tick)

    def _start_closed(self) -> None:
        for user in range(self.config.users):  # type: ignore[arg-type]
            self._next_for_user(user, self.start_s)

    def _next_for_user(self, user: int, ready_s: float) -> None:
        if self.stopping:
            return
        index = self.launched
        if not self._in_bounds(index, ready_s):
            self.schedule_done = True
            return
        self.launched += 1
        think = self.config.think_time_s
        if think > 0:
            self.thinking += 1
            self.loop.call_later(think, self._launch_thought, index, ready_s + think, user)
        else:
            self._launch(index, ready_s, user, counted=True)

    def _launch_thought(self, index: int, scheduled_s: float, user: int) -> None:
        self.thinking -= 1
        if self.stopping:
            self._maybe_finish()
            return
        self._launch(index, scheduled_s, user, counted=True)

    def _launch(self, index: int, scheduled_s: float, user: int | None, counted: bool = False) -> None:
        if not counted:
            if not self._in_bounds(index, scheduled_s):
                return
            self.launched += 1
        req = _Req(index, scheduled_s, index < self.config.warmup_requests, user)
        limit = self.config.max_concurrency
        if user is None and limit is not None and len(self.inflight) >= limit:
            self.pending.append(req)
            return
        self._start(req)

    def _start(self, req: _Req) -> None:
        self.inflight.add(req)
        req.sent_s = time.perf_counter()
        req.timer = self.loop.call_later(self.config.timeout_s, self._timeout, req)
        if req.texts is None and self.need_texts:
            req.texts = []
        conn = self._take_idle(req.sent_s)
        if conn is not None:
            self._send(conn, req)
        else:
            self._connect(req)

    def _connect(self, req: _Req) -> None:
        """Open a connection for ``req``, or queue it for the next free one when enough are opening."""
        if self.connecting >= _MAX_CONNECTING:
            self.conn_waiters.append(req)
            return
        self.connecting += 1
        task = self.loop.create_task(self._connect_and_send(req))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _release(self, conn: _Conn | None, t: float) -> None:
        """A connection is free (or, None, lost): hand it to the oldest waiting request, else keep it."""
        while self.conn_waiters:
            req = self.conn_waiters.popleft()
            if req.done:
                continue
            if conn is None:
                self._connect(req)
            else:
                self._send(conn, req)
            return
        if conn is not None:
            conn.idle_since = t
            self.idle.append(conn)

    def _send(self, conn: _Conn, req: _Req) -> None:
        i = req.index % len(self.bodies)
        conn.send(req, b"%s%s: %.6f\r\n\r\n%s" % (self.heads[i], SERVER_HEADER_SENT_AT.encode(),
                                                     time.time(), self.bodies[i]))

    def _take_idle(self, now: float) -> _Conn | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if now - conn.idle_since > _IDLE_MAX_S:
                conn.transport.close()  # type: ignore[union-attr]
                continue
            return conn
        return None

    async def _connect_and_send(self, req: _Req) -> None:
        try:
            _, conn = await self.loop.create_connection(lambda: _Conn(self), self.host, self.port,
                                                        ssl=self.ssl or None)
        except OSError as err:
            self.connecting -= 1
            if not req.done:
                self._finish(req, time.perf_counter(), "error",
                             f"connect to {self.host}:{self.port} failed: {err}")
            if not self.stopping:
                self._release(None, 0.0)
            return
        except asyncio.CancelledError:
            self.connecting -= 1
            raise
        self.connecting -= 1
        self.conns.add(conn)
        if req.done or self.stopping:  # timed out or stopped while connecting
            self._release(conn, time.perf_counter())
            return
        self._send(conn, req)
        while self.conn_waiters and self.connecting < _MAX_CONNECTING:  # keep the pool growing
            waiter = self.conn_waiters.popleft()
            if not waiter.done:
                self._connect(waiter)

    # ------------------------------------------------------------ responses
    def _parse_event(self, req: _Req, payload: bytes) -> None:
        try:
            obj = json.loads(payload)
        except ValueError:
            return
        if isinstance(obj, dict):
            self._apply(req, obj)

    @staticmethod
    def _apply(req: _Req, obj: dict[str, Any]) -> None:
        usage = obj.get("usage")
        if isinstance(usage, dict):
            req.usage = usage
        attribution = obj.get("labkit")
        if isinstance(attribution, dict):
            req.labkit = attribution
        err = obj.get("error")
        if err:
            req.error = str(err.get("message", err) if isinstance(err, dict) else err)[:500]

    def _complete(self, conn: _Conn, req: _Req, t: float) -> None:
        """The response is complete (its last byte arrived at ``t``)."""
        reusable = conn.keep_alive and conn.mode != _MODE_EOF
        body = b"".join(conn.body) if conn.body else b""
        sse = conn.sse
        conn.req = None
        conn.served += 1
        if reusable and not self.stopping:
            self._release(conn, t)  # before _finish: the next request of a closed-loop user reuses it
        else:
            if conn.transport is not None:
                conn.transport.close()
            if not self.stopping:
                self._release(None, t)
        status = "ok"
        if req.http_status != 200:
            status = "error"
            req.error = f"HTTP {req.http_status}: {body[:300].decode('utf-8', 'replace')}"
        elif not sse:
            try:
                obj = json.loads(body)
            except ValueError:
                obj = None
            if not isinstance(obj, dict):
                status, req.error = "error", f"response is not a JSON object: {body[:200]!r}"
            else:
                self._apply(req, obj)
                if req.error is not None:
                    status = "error"
                elif self.need_texts:
                    req.texts = [body]
        elif req.error is not None:
            status = "error"
        self._finish(req, t, status, req.error)

    def _lost(self, conn: _Conn, req: _Req, got_bytes: bool, exc: Exception | None) -> None:
        """The connection closed before the response was complete."""
        if not got_bytes and not req.retried and conn.served and not self.stopping:
            # A keep-alive connection the server had just closed: send once more, on a new one.
            req.retried = True
            self._connect(req)
            return
        why = f": {exc}" if exc else ""
        self._finish(req, time.perf_counter(), "error",
                     f"connection closed before the response was complete{why}")
        if not self.stopping:
            self._release(None, 0.0)  # a connection fewer: open one for a waiting request

    def _timeout(self, req: _Req) -> None:
        conn = req.conn
        lost = conn is not None and conn.req is req
        if lost:
            conn.req = None
            conn.transport.abort()  # type: ignore[union-attr]
        self._finish(req, time.perf_counter(), "timeout",
                     f"no complete response within timeout_s={self.config.timeout_s}")
        if lost and not self.stopping:
            self._release(None, 0.0)

    def _stop(self, status: str, why: str) -> None:
        """Hard stop or interrupt: every request still waiting or in flight becomes a record."""
        if self.stopping:
            return
        self.stopping = True
        self.schedule_done = True
        now = time.perf_counter()
        while self.pending:
            req = self.pending.popleft()
            req.sent_s = now  # never sent: its lag is at least this
            self._finish(req, now, status, f"{why} before it was sent")
        for req in list(self.inflight):
            conn = req.conn
            if conn is not None and conn.req is req:
                conn.req = None
                conn.transport.abort()  # type: ignore[union-attr]
            self._finish(req, now, status, why)
        if not self.finished.done():
            self.finished.set_result(None)

    def _finish(self, req: _Req, t: float, status: str, error: str | None) -> None:
        if req.done:
            return
        req.done = True
        if req.timer is not None:
            req.timer.cancel()
        self.inflight.discard(req)
        record = self._record(req, t, status, error)
        self.records.append(record)
        self.emitted += 1
        try:
            self.writer.write(record)
            if self.on_record is not None:
                self.on_record(record)
        except Exception as err:  # noqa: BLE001 - stop the run and raise it from run_load_async
            self.callback_error = err
            self._stop("cancelled", f"on_record or writing the records failed: {err!r}")
            return
        if self.stopping:
            return
        if req.user is not None:
            self._next_for_user(req.user, t)
        elif self.pending:
            limit = self.config.max_concurrency
            while self.pending and (limit is None or len(self.inflight) < limit):
                self._start(self.pending.popleft())
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if (self.schedule_done and not self.inflight and not self.pending and not self.thinking
                and not self.finished.done()):
            self.finished.set_result(None)

    def _record(self, req: _Req, t: float, status: str, error: str | None) -> RequestRecord:
        usage = req.usage
        prompt_tokens = output_tokens = source = None
        if usage is not None:
            prompt_tokens = usage.get("prompt_tokens")
            output_tokens = usage.get("completion_tokens")
            if output_tokens is not None:
                source = "usage"
        if output_tokens is None and status == "ok" and self.tokenizer is not None and req.texts is not None:
            output_tokens = self._count_tokens(req.texts)
            source = "tokenizer"
        node_id, replica_id, server = req.node_id, req.replica_id, req.server
        lab = req.labkit
        if lab is not None:  # the final event wins over headers
            node_id = lab.get("node_id") or node_id
            replica_id = lab.get("replica_id") or replica_id
            timings = lab.get("timings")
            if isinstance(timings, dict):
                numeric = {k: float(v) for k, v in timings.items() if isinstance(v, (int, float))}
                server = {**server, **numeric}
        extra: dict[str, Any] = {}
        if req.user is not None:
            extra["user"] = req.user
        if req.retried:
            extra["retried"] = True
        return RequestRecord(
            request_id=f"req-{req.index:06d}", scheduled_s=req.scheduled_s, sent_s=req.sent_s, done_s=t,
            status=status, warmup=req.warmup, first_token_s=req.first_token_s, last_token_s=req.last_token_s,
            http_status=req.http_status, error=error, prompt_tokens=prompt_tokens,
            output_tokens=output_tokens, token_source=source, itl_s=req.itl, node_id=node_id,
            replica_id=replica_id, server=server, extra=extra, timeout_s=self.config.timeout_s)

    def _count_tokens(self, payloads: list[bytes]) -> int | None:
        parts = []
        for payload in payloads:
            with contextlib.suppress(ValueError, TypeError, KeyError, IndexError):
                obj = json.loads(payload)
                for choice in obj.get("choices") or []:
                    parts.append(choice.get("text") or (choice.get("delta") or {}).get("content")
                                 or (choice.get("message") or {}).get("content") or "")
        try:
            return len(self.tokenizer.encode("".join(parts), add_special_tokens=False))
        except TypeError:
            return len(self.tokenizer.encode("".join(parts)))


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
            "config": self.config.to_dict(), "start_s": self.start_s, "end_s": self.end_s,
            "duration_s": self.duration_s, "requests": len(self.measured),
            "warmup_requests": len(self.records) - len(self.measured), "statuses": statuses,
            "offered_rate_rps": self.offered_rate_rps, "achieved_rate_rps": self.achieved_rate_rps,
            "records_path": self.records_path, "notes": list(self.notes),
        }
        if include_records:
            data["records"] = [r.to_dict() for r in self.records]
        return data

    def __repr__(self) -> str:
        d = self.to_dict()
        rate = f"{d['achieved_rate_rps']:.1f}" if d["achieved_rate_rps"] else "n/a"
        offered = f"{d['offered_rate_rps']:.1f}" if d["offered_rate_rps"] else "closed loop"
        return (f"LoadResult({d['requests']} requests + {d['warmup_requests']} warm-up, "
                f"{d['statuses']}, offered {offered} req/s, achieved {rate} req/s, "
                f"{d['duration_s']:.2f} s, records={self.records_path!r})")

    def _repr_html_(self) -> str:
        import html

        d = self.to_dict()
        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
                       f"<td>{html.escape(str(v))}</td></tr>"
                       for k, v in d.items() if k != "config")
        return f"<table><caption>LoadResult ({html.escape(self.config.arrival)})</caption>{rows}</table>"


# --------------------------------------------------------------------------- entry points
async def run_load_async(config: LoadConfig, *, records_path: str | None = None, progress: bool = True,
                         on_record: Callable[[RequestRecord], None] | None = None) -> LoadResult:
    """Run one load test on the running event loop.

    Parameters
    ----------
    config : LoadConfig
        The workload.
    records_path : str, optional
        JSONL file to append records to (overrides ``config.records_path``).
    progress : bool
        Show a progress bar (tqdm; a widget in notebooks).
    on_record : callable, optional
        Called with each :class:`RequestRecord` as its request finishes.

    Returns
    -------
    LoadResult
        Every request's record, warm-up included (flagged).

    Raises
    ------
    LoadGenError
        The endpoint cannot be reached, the model cannot be named, or prompts are bad.
    """
    path = records_path if records_path is not None else config.records_path
    runner = _Runner(config, records_path=path, progress=progress, on_record=on_record)
    return await runner.run()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:  # uvloop is optional: about twice the I/O throughput of the default loop
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _run_here(coro_factory: Callable[[], Any]) -> Any:
    """Run on a fresh loop in this thread; Ctrl-C cancels the run, which keeps its records."""
    runner_cls = getattr(asyncio, "Runner", None)
    if runner_cls is None:  # Python 3.10
        return asyncio.run(coro_factory())
    with runner_cls(loop_factory=_new_loop) as runner:
        return runner.run(coro_factory())


def _run_coro(coro_factory: Callable[[], Any]) -> Any:
    """Run a coroutine to completion; in a worker thread when a loop already runs (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_here(coro_factory)
    box: dict[str, Any] = {}

    async def _main() -> Any:
        box["loop"], box["task"] = asyncio.get_running_loop(), asyncio.current_task()
        return await coro_factory()

    def _worker() -> None:
        try:
            box["result"] = _run_here(_main)
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = err

    thread = threading.Thread(target=_worker, name="labkit-load", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.1)
    except KeyboardInterrupt:  # the notebook's stop button: cancel the run, keep its records
        if "task" in box:
            box["loop"].call_soon_threadsafe(box["task"].cancel)
        thread.join()
        raise
    if "error" in box:
        raise box["error"]
    return box["result"]


def run_load(config: LoadConfig, *, records_path: str | None = None, progress: bool = True,
             on_record: Callable[[RequestRecord], None] | None = None) -> LoadResult:
    """Run one load test and wait for it (works in scripts and inside Jupyter).

    Parameters
    ----------
    config : LoadConfig
        The workload.
    records_path : str, optional
        JSONL file to append records to (overrides ``config.records_path``).
    progress : bool
        Show a progress bar (tqdm; a widget in notebooks).
    on_record : callable, optional
        Called with each :class:`RequestRecord` as its request finishes (in the loop's thread).

    Returns
    -------
    LoadResult
        Every request's record, warm-up included (flagged).

    Raises
    ------
    LoadGenError
        The endpoint cannot be reached, the model cannot be named, or prompts are bad.
    """
    return _run_coro(lambda: run_load_async(config, records_path=records_path, progress=progress,
                                            on_record=on_record))


def _sweep_path(path: str | None, rate: float) -> str | None:
    if path is None:
        return None
    p = Path(path)
    return str(p.with_name(f"{p.stem}.rate-{rate:g}{p.suffix or '.jsonl'}"))


def run_sweep(config: LoadConfig, rates_rps: Sequence[float], *, records_path: str | None = None,
              progress: bool = True,
              on_record: Callable[[RequestRecord], None] | None = None) -> list[LoadResult]:
    """Run the same open-loop workload at several rates, one after the other.

    Parameters
    ----------
    config : LoadConfig
        The workload; its ``rate_rps`` is replaced by each rate in turn.
    rates_rps : sequence of float
        Offered rates, requests per second.
    records_path : str, optional
        Base JSONL path; each rate writes ``<stem>.rate-<rate>.jsonl`` next to it.
    progress : bool
        Show a progress bar per rate.
    on_record : callable, optional
        Called with each record as its request finishes.

    Returns
    -------
    list of LoadResult
        One result per rate, in the order given.

    Raises
    ------
    ConfigError
        No rates, or a closed-loop config.
    """
    if config.arrival == "closed" or not rates_rps:
        msg = (f"run_sweep needs an open-loop config and at least one rate; got arrival={config.arrival!r}, "
               f"rates_rps={list(rates_rps)!r}. Use arrival='poisson' and rates_rps=[1, 2, 4].")
        raise ConfigError(msg, field="rates_rps", value=list(rates_rps))
    base = records_path if records_path is not None else config.records_path
    results = []
    for rate in rates_rps:
        cfg = dataclasses.replace(config, rate_rps=float(rate), records_path=_sweep_path(base, float(rate)))
        results.append(run_load(cfg, progress=progress, on_record=on_record))
    return results


# --------------------------------------------------------------------------- CLI
def register_cli(subparsers: Any) -> None:
    """Add the ``load`` subcommand.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        From ``parser.add_subparsers()``.
    """
    helps = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(LoadConfig)}
    p = subparsers.add_parser("load", help="Generate load against an OpenAI-compatible endpoint.",
                              description="Generate load; write records (JSONL) and a summary (JSON).")
    p.add_argument("--url", required=True, help=helps["url"])
    p.add_argument("--model", default=None, help=helps["model"])
    p.add_argument("--api", choices=APIS, default="completions", help=helps["api"])
    p.add_argument("--no-stream", dest="stream", action="store_false", help="Do not stream (no TTFT).")
    p.add_argument("--arrival", choices=ARRIVALS, default="poisson", help=helps["arrival"])
    p.add_argument("--rate", dest="rate_rps", type=float, default=None, help=helps["rate_rps"])
    p.add_argument("--burstiness", type=float, default=1.0, help=helps["burstiness"])
    p.add_argument("--ramp-to", dest="ramp_to_rps", type=float, default=None, help=helps["ramp_to_rps"])
    p.add_argument("--sweep", default=None, help="Comma-separated rates: run once per rate (e.g. 1,2,4).")
    p.add_argument("--users", type=int, default=None, help=helps["users"])
    p.add_argument("--think-time", dest="think_time_s", type=float, default=0.0, help=helps["think_time_s"])
    p.add_argument("--num-requests", type=int, default=None, help=helps["num_requests"])
    p.add_argument("--duration", dest="duration_s", type=float, default=None, help=helps["duration_s"])
    p.add_argument("--warmup", dest="warmup_requests", type=int, default=0, help=helps["warmup_requests"])
    p.add_argument("--max-tokens", type=int, default=16, help=helps["max_tokens"])
    p.add_argument("--prompt-tokens", type=int, default=32, help=helps["prompt_tokens"])
    p.add_argument("--prompt-file", default=None, help=helps["prompt_file"])
    p.add_argument("--tokenizer", default=None, help=helps["tokenizer"])
    p.add_argument("--seed", type=int, default=0, help=helps["seed"])
    p.add_argument("--timeout", dest="timeout_s", type=float, default=60.0, help=helps["timeout_s"])
    p.add_argument("--hard-stop", dest="hard_stop_s", type=float, default=None, help=helps["hard_stop_s"])
    p.add_argument("--max-concurrency", type=int, default=None, help=helps["max_concurrency"])
    p.add_argument("--header", action="append", default=[], metavar="NAME:VALUE", help=helps["headers"])
    p.add_argument("--ignore-eos", action="store_true", help=helps["ignore_eos"])
    p.add_argument("--temperature", type=float, default=None, help=helps["temperature"])
    p.add_argument("--short-slice", action="store_true", help=helps["short_slice"])
    p.add_argument("--out", default="load-results", help="Output folder for records.jsonl and summary.json.")
    p.add_argument("--slo-ttft", type=float, default=None, help="TTFT objective (s) for goodput.")
    p.add_argument("--slo-e2e", type=float, default=None, help="End-to-end objective (s) for goodput.")
    p.add_argument("--slo-tpot", type=float, default=None, help="TPOT objective (s) for goodput.")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="No progress bar.")
    p.set_defaults(func=_cmd_load)


def _config_from_args(args: Any, records_path: str) -> LoadConfig:
    headers = {}
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            msg = f"--header {item!r} is not NAME:VALUE. Write e.g. --header 'X-Team: blue'."
            raise ConfigError(msg, field="headers", value=item)
        headers[name.strip()] = value.strip()
    names = {f.name for f in dataclasses.fields(LoadConfig)}
    kwargs = {k: v for k, v in vars(args).items() if k in names and k != "headers"}
    return LoadConfig(**kwargs, headers=headers, records_path=records_path)


def _cmd_load(args: Any) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rates = [float(r) for r in args.sweep.split(",")] if args.sweep else None
    if rates:
        args.rate_rps = rates[0]
    config = _config_from_args(args, str(out / "records.jsonl"))
    slo = {k: v for k, v in (("ttft_s", args.slo_ttft), ("e2e_s", args.slo_e2e), ("tpot_s", args.slo_tpot))
           if v is not None} or None
    try:
        results = (run_sweep(config, rates, progress=args.progress) if rates
                   else [run_load(config, progress=args.progress)])
    except KeyboardInterrupt:
        print(f"labkit load: interrupted; finished requests are in {out}", file=sys.stderr)
        return 130
    summaries = []
    for result in results:
        summary = result.summary(slo=slo)
        summaries.append({"run": result.to_dict(), "summary": summary.to_dict()})
        print(_table(result, summary))
    doc = summaries[0] if len(summaries) == 1 else {"sweep": summaries}
    (out / "summary.json").write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"records: {', '.join(str(r.records_path) for r in results)}\nsummary: {out / 'summary.json'}")
    return 0


def _table(result: LoadResult, summary: Any) -> str:
    """A short fixed-width table of one run (milliseconds)."""
    d = summary.to_dict()
    offered = f"{result.offered_rate_rps:.1f}" if result.offered_rate_rps else "closed"
    achieved = f"{result.achieved_rate_rps:.1f}" if result.achieved_rate_rps else "n/a"
    lines = [f"requests {d['requests']}  ok {d['ok']}  errors {d['errors']}  "
             f"offered {offered} req/s  achieved {achieved} req/s",
             f"{'metric (ms)':<18}{'count':>8}{'p50':>10}{'p90':>10}{'p99':>10}{'p99.9':>10}"]
    for name, m in d["metrics"].items():
        p = m["percentiles"]

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v * 1e3:.2f}"

        lines.append(f"{name:<18}{m['count']:>8}{ms(p.get('p50')):>10}{ms(p.get('p90')):>10}"
                     f"{ms(p.get('p99')):>10}{ms(p.get('p99.9')):>10}")
    return "\n".join(lines)
