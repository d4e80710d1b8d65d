"""The HTTP/1.1 client: one asyncio protocol per keep-alive connection, parsing SSE events as bytes arrive.

Owns the attribution headers shared with :mod:`labkit.serve` (``SERVER_HEADER_*``), the in-flight
state of one request (:class:`_Req`) and the connection (:class:`_Conn`), which hands every
complete or lost response back to its :class:`~labkit.load.runner._Runner`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from typing import TYPE_CHECKING, Any

from labkit.contracts import HEADER_NODE, HEADER_REPLICA, HEADER_SENT_AT, HEADER_TIMINGS

if TYPE_CHECKING:  # the runner imports this module; the connection only calls back into it
    from labkit.load.runner import _Runner

__all__ = ["SERVER_HEADER_NODE", "SERVER_HEADER_REPLICA", "SERVER_HEADER_SENT_AT", "SERVER_HEADER_TIMINGS"]

# Attribution contract with labkit.serve, defined in labkit.contracts (headers; the final stream
# event carries the same data under the top-level key "labkit": {"node_id", "replica_id", "timings"}).
SERVER_HEADER_NODE = HEADER_NODE
SERVER_HEADER_REPLICA = HEADER_REPLICA
SERVER_HEADER_TIMINGS = HEADER_TIMINGS  # JSON object of server timings, seconds
SERVER_HEADER_SENT_AT = HEADER_SENT_AT  # client -> server: time.time() at send (wall clock)

_CONTENT_RE = re.compile(rb'"(?:text|content|reasoning_content)"\s*:\s*"[^"]')
_MARKER_RE = re.compile(rb'"(?:usage"\s*:\s*\{|labkit"\s*:|error"\s*:)')


# --------------------------------------------------------------------------- HTTP client
class _Req:
    """Mutable state of one request while it is in flight."""

    __slots__ = (
        "index",
        "scheduled_s",
        "sent_s",
        "warmup",
        "user",
        "first_token_s",
        "last_token_s",
        "itl",
        "usage",
        "labkit",
        "node_id",
        "replica_id",
        "server",
        "http_status",
        "error",
        "texts",
        "timer",
        "conn",
        "done",
        "retried",
        "saw_done",
    )

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
            data = buf[i + 4 :]
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
        if block.count(b"\n") == 2 * n_events and block.count(b"data:") == n_events and block.startswith(b"data:"):
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
            texts.extend(
                p
                for p in (line[5:].strip() for line in block.split(b"\n") if line)
                if _CONTENT_RE.search(p) is not None
            )
        last_line = -1
        for m in _MARKER_RE.finditer(block):  # usually one: the final usage / labkit event
            start = block.rfind(b"\n", 0, m.start()) + 1
            if start == last_line:
                continue
            last_line = start
            self.runner._parse_event(req, block[start + 5 : block.find(b"\n", m.end())].strip())

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
