"""One load run: the scheduler loop, the connection pool, and responses turned into records.

Owns :class:`_Runner`, which starts every request at its intended time (:mod:`~labkit.load.schedule`),
sends it over a pooled connection (:mod:`~labkit.load.client`) and writes a
:class:`~labkit.load.records.RequestRecord` as it finishes. Its entry points are in
:mod:`labkit.load.api`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from labkit.errors import LoadGenError
from labkit.load.client import _MODE_EOF, SERVER_HEADER_SENT_AT, _Conn, _Req
from labkit.load.config import LoadConfig
from labkit.load.progress import _PROGRESS_EVERY_S, _Progress
from labkit.load.prompts import _MAX_PROMPT_POOL, _load_tokenizer, make_prompts
from labkit.load.records import LoadResult, RequestRecord, _RecordWriter
from labkit.load.schedule import _SLICE_NS, _SPIN_S, _arrival_offsets, _set_sched_slice, _TimerFd

# At most this many connections are opened at once; further requests take the next free one.
#: Most per-chunk flush stamps a record keeps from a server's final event (labkit.stats.hops).
_MAX_CHUNK_STAMPS = 4096
# Without a cap, a server hiccup at a high rate opens hundreds of connections at once, overflows
# the server's accept queue, and the dropped SYNs come back 1 s later as latency spikes.
_MAX_CONNECTING = 32
# Idle keep-alive connections older than this are not reused (uvicorn closes them after 5 s).
_IDLE_MAX_S = 4.0


class _Runner:
    """One run: schedules requests, owns the connection pool, turns responses into records."""

    def __init__(
        self,
        config: LoadConfig,
        *,
        records_path: str | None,
        progress: bool,
        on_record: Callable[[RequestRecord], None] | None,
        tokenizer: Any = None,
    ) -> None:
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
        head = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {host}",
            "Content-Type: application/json",
            "User-Agent: labkit-load",
            "Accept: text/event-stream" if cfg.stream else "Accept: application/json",
        ]
        if cfg.api_key:
            head.append(f"Authorization: Bearer {cfg.api_key}")
        head += [f"{k}: {v}" for k, v in cfg.headers.items()]
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        for prompt in prompts:
            body: dict[str, Any] = {"model": model, "max_tokens": cfg.max_tokens, "stream": cfg.stream}
            if cfg.api == "chat":
                body["messages"] = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            else:
                body["prompt"] = (
                    prompt if isinstance(prompt, str) else "\n".join(str(m.get("content", "")) for m in prompt)
                )
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
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: _Conn(self), self.host, self.port, ssl=self.ssl or None),
                timeout=min(self.config.timeout_s, 10.0),
            )
        except (OSError, asyncio.TimeoutError) as err:
            msg = (
                f"Cannot connect to {self.config.endpoint_url} ({err or type(err).__name__}). "
                "Is the server running, and is url right (http://host:port)?"
            )
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
        desc = f"load {cfg.arrival}"
        if cfg.warmup_requests:  # the bar counts them; the statistics leave them out
            desc += f" (first {cfg.warmup_requests} are warm-up, not in the statistics)"
        bar = _Progress(self.progress_enabled, total, desc)
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
                self.handles.append(
                    self.loop.call_later(
                        cfg.hard_stop_s, self._stop, "cancelled", f"hard stop after {cfg.hard_stop_s} s"
                    )
                )
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
            self.notes.append(
                f"output_tokens unknown for {unknown} requests: the server sent no usage "
                "and no tokenizer was given (pass tokenizer=...)."
            )
        return LoadResult(
            config=cfg,
            records=self.records,
            start_s=self.start_s,
            end_s=self.end_s,
            records_path=self.records_path,
            notes=self.notes,
        )

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
        # The wall clock of req.sent_s (the actual send, before any connect): the servers' hop stamps
        # count from it, so a connection's set-up lands in the first hop, not the last.
        sent_wall = time.time() - (time.perf_counter() - req.sent_s)
        conn.send(
            req, b"%s%s: %.6f\r\n\r\n%s" % (self.heads[i], SERVER_HEADER_SENT_AT.encode(), sent_wall, self.bodies[i])
        )

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
            _, conn = await self.loop.create_connection(lambda: _Conn(self), self.host, self.port, ssl=self.ssl or None)
        except OSError as err:
            self.connecting -= 1
            if not req.done:
                self._finish(req, time.perf_counter(), "error", f"connect to {self.host}:{self.port} failed: {err}")
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
        self._finish(req, time.perf_counter(), "error", f"connection closed before the response was complete{why}")
        if not self.stopping:
            self._release(None, 0.0)  # a connection fewer: open one for a waiting request

    def _timeout(self, req: _Req) -> None:
        conn = req.conn
        lost = conn is not None and conn.req is req
        if lost and conn is not None:  # lost implies conn; the check narrows its type
            conn.req = None
            conn.transport.abort()  # type: ignore[union-attr]
        self._finish(
            req, time.perf_counter(), "timeout", f"no complete response within timeout_s={self.config.timeout_s}"
        )
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
        if (
            self.schedule_done
            and not self.inflight
            and not self.pending
            and not self.thinking
            and not self.finished.done()
        ):
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
        if lab is not None:
            chunks = lab.get("chunks_at_s")
            if isinstance(chunks, list) and len(chunks) <= _MAX_CHUNK_STAMPS:
                stamps = [float(v) for v in chunks if isinstance(v, (int, float))]
                if len(stamps) == len(chunks):
                    extra["chunks_at_s"] = stamps  # each text chunk's flush at the replica, after the send
        if req.user is not None:
            extra["user"] = req.user
        if req.retried:
            extra["retried"] = True
        return RequestRecord(
            request_id=f"req-{req.index:06d}",
            scheduled_s=req.scheduled_s,
            sent_s=req.sent_s,
            done_s=t,
            status=status,
            warmup=req.warmup,
            first_token_s=req.first_token_s,
            last_token_s=req.last_token_s,
            http_status=req.http_status,
            error=error,
            prompt_tokens=prompt_tokens,
            output_tokens=output_tokens,
            token_source=source,
            itl_s=req.itl,
            node_id=node_id,
            replica_id=replica_id,
            server=server,
            extra=extra,
            timeout_s=self.config.timeout_s,
        )

    def _count_tokens(self, payloads: list[bytes]) -> int | None:
        parts = []
        for payload in payloads:
            with contextlib.suppress(ValueError, TypeError, KeyError, IndexError):
                obj = json.loads(payload)
                for choice in obj.get("choices") or []:
                    parts.append(
                        choice.get("text")
                        or (choice.get("delta") or {}).get("content")
                        or (choice.get("message") or {}).get("content")
                        or ""
                    )
        try:
            return len(self.tokenizer.encode("".join(parts), add_special_tokens=False))
        except TypeError:
            return len(self.tokenizer.encode("".join(parts)))
