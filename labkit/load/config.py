"""Configuration of a load run: :class:`LoadConfig`, its field descriptions and its validation.

Owns the allowed arrival processes (``ARRIVALS``) and APIs (``APIS``). An invalid value raises
:class:`~labkit.errors.ConfigError` when the config is created, naming the field and the fix.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labkit.errors import ConfigError

__all__ = ["ARRIVALS", "LoadConfig"]

ARRIVALS = ("constant", "poisson", "gamma", "closed")
APIS = ("completions", "chat")


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
    headers: dict[str, str] = _f(
        help="Extra HTTP headers (values never written out).", default_factory=dict, hash=False, repr=False
    )
    api_key: str | None = _f(None, help="Bearer token; never written to records or summaries.", repr=False)
    ignore_eos: bool = _f(False, help="Send ignore_eos=true (vLLM): every response has max_tokens tokens.")
    temperature: float | None = _f(None, help="Sampling temperature to send; None leaves the server default.")
    extra_body: dict[str, Any] = _f(
        help="Extra fields merged into every request body.", default_factory=dict, hash=False
    )
    records_path: str | None = _f(None, help="JSONL file that receives one record per finished request.")
    short_slice: bool = _f(
        False,
        help="Linux: ask for a 0.2 ms scheduler slice for the client thread (steadier "
        "schedule on a busy machine; may slow a server on the same cores).",
    )

    def __post_init__(self) -> None:
        for name, allowed, fix in self._problems():
            value = getattr(self, name)
            msg = f"LoadConfig.{name}={value!r} is invalid: {allowed}. {fix}"
            raise ConfigError(msg, field=name, value=value)

    def _problems(self) -> Iterator[tuple[str, str, str]]:
        """Yield ``(field, what is allowed, how to fix)`` for each bad value, in field order."""
        if not isinstance(self.url, str) or not re.match(r"^https?://[^/\s]+", self.url):
            yield (
                "url",
                "it must start with http:// or https:// and name a host",
                "Pass e.g. url='http://127.0.0.1:8000'.",
            )
        if self.api not in APIS:
            yield "api", f"allowed values are {list(APIS)}", "Use 'completions' or 'chat'."
        if self.arrival not in ARRIVALS:
            yield "arrival", f"allowed values are {list(ARRIVALS)}", "Pick one of them."
        if self.arrival == "closed":
            if not isinstance(self.users, int) or self.users < 1:
                yield "users", "arrival='closed' needs an integer >= 1", "Pass users=4, for example."
        elif self.rate_rps is None or not (self.rate_rps > 0 and math.isfinite(self.rate_rps)):
            yield (
                "rate_rps",
                f"arrival='{self.arrival}' needs a finite rate > 0",
                "Pass rate_rps=10, or arrival='closed' with users=N.",
            )
        elif self.ramp_to_rps is not None:
            if not (self.ramp_to_rps > 0 and math.isfinite(self.ramp_to_rps)):
                yield "ramp_to_rps", "it must be a finite rate > 0", "Pass ramp_to_rps=50."
            elif self.duration_s is None:
                yield "ramp_to_rps", "a ramp needs duration_s (it spans the duration)", "Pass duration_s too."
        if not (self.burstiness > 0 and math.isfinite(self.burstiness)):
            yield "burstiness", "it must be a finite number > 0", "1.0 is Poisson."
        if self.num_requests is None and self.duration_s is None:
            yield (
                "num_requests",
                "num_requests and duration_s are both None, the run would not end",
                "Pass num_requests=..., duration_s=..., or both.",
            )
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
        if self.max_concurrency is not None and (not isinstance(self.max_concurrency, int) or self.max_concurrency < 1):
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
