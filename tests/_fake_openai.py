"""A fake OpenAI-compatible server for the load generator's tests and benchmarks.

Plain asyncio (no web framework) so that it is fast enough to never be the bottleneck of a
client benchmark, and its delays are exactly what the test asks for:

- ``ttft_s`` before the first token, ``itl_s`` between tokens; with both 0 the whole response
  is written at once (the "no-op" server of the fidelity benchmark);
- ``stall_after_requests`` / ``stall_s``: when request number k arrives, every response stops
  emitting for ``stall_s`` seconds (a server-wide stall at a known moment); with
  ``stall_until_request`` = m the stall lasts instead until request number m arrives (it ends
  only if the client keeps sending while no response comes back);
- ``fail_every``: every k-th generation request answers HTTP 500;
- ``tokens_per_chunk`` > 1: several tokens per stream event (usage still counts tokens);
- attribution (node, replica, timings) in response headers and/or the final stream event;
- ``hop_delays``: known delays at the hops of a kit request (``to_ingress``, ``routing``,
  ``replica``, ``chunk_return``; ``ttft_s`` is the engine's first token), with the hop stamps the
  kit's proxy and replica send (``proxy_at_s`` ... ``chunks_at_s``, see ``labkit.stats.hops``).

In a test::

    with FakeOpenAIServer(ttft_s=0.05, itl_s=0.02) as server:
        run_load(LoadConfig(url=server.url, ...))

As a process (benchmarks)::

    python tests/_fake_openai.py --port 0 --output-tokens 16 --cpu 0

prints ``PORT <n>`` and serves until SIGTERM / SIGINT, then prints one JSON line with its CPU
time and request count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import time
from typing import Any

from labkit.contracts import HEADER_NODE, HEADER_REPLICA, HEADER_SENT_AT, HEADER_TIMINGS

_CREATED = 1700000000


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class FakeOpenAIServer:
    """An OpenAI-compatible ``/v1/completions`` and ``/v1/chat/completions`` server.

    Parameters
    ----------
    ttft_s, itl_s : float
        Delay before the first token and between tokens.
    output_tokens : int or None
        Tokens per response; None takes the request's ``max_tokens``.
    tokens_per_chunk : int
        Tokens carried by one stream event.
    usage : bool
        Send ``usage`` (final stream event when ``stream_options.include_usage``; always in a
        non-streaming body).
    stall_after_requests, stall_s : int or None, float
        When generation request number ``stall_after_requests`` (1-based) arrives, hold every
        token write until ``stall_s`` seconds later.
    stall_until_request : int or None
        End the stall when generation request number ``stall_until_request`` arrives instead of
        after ``stall_s`` (that request and every later one are answered at once).
    fail_every : int
        Every k-th generation request gets HTTP 500 (0: never).
    node_id, replica_id, timings : str, str, dict
        Attribution; ``attribution`` says where it goes: "headers", "event", "both", "none".
    event_attribution : dict, optional
        A different ``labkit`` object for the final event (to test that it wins over headers).
    timings_of_writes : bool
        Add ``fake_arrival_pc`` / ``fake_first_write_pc`` / ``fake_last_write_pc``
        (``time.perf_counter()`` when the request arrived and when the first and last token were
        written) to the final event's timings. On Linux ``perf_counter`` is CLOCK_MONOTONIC, one
        clock for every process of the machine.
    spaced_json : bool
        Use ``json.dumps`` default separators (``", "``, ``": "``) instead of compact JSON.
    crlf_events : bool
        End SSE events with ``\\r\\n\\r\\n`` instead of ``\\n\\n``.
    hop_delays : dict, optional
        Seconds to wait at each hop of a streamed request, and stamp it as the kit's servers do.
    """

    def __init__(
        self,
        *,
        ttft_s: float = 0.0,
        itl_s: float = 0.0,
        output_tokens: int | None = 16,
        tokens_per_chunk: int = 1,
        usage: bool = True,
        stall_after_requests: int | None = None,
        stall_s: float = 0.0,
        stall_until_request: int | None = None,
        fail_every: int = 0,
        node_id: str | None = None,
        replica_id: str | None = None,
        timings: dict[str, float] | None = None,
        attribution: str = "both",
        event_attribution: dict[str, Any] | None = None,
        timings_of_writes: bool = False,
        spaced_json: bool = False,
        crlf_events: bool = False,
        hop_delays: dict[str, float] | None = None,
        model: str = "fake-model",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.ttft_s = ttft_s
        self.itl_s = itl_s
        self.output_tokens = output_tokens
        self.tokens_per_chunk = max(1, tokens_per_chunk)
        self.usage = usage
        self.stall_after_requests = stall_after_requests
        self.stall_s = stall_s
        self.stall_until_request = stall_until_request
        self.fail_every = fail_every
        self.node_id = node_id
        self.replica_id = replica_id
        self.timings = timings
        self.attribution = attribution
        self.event_attribution = event_attribution
        self.timings_of_writes = timings_of_writes
        self.spaced_json = spaced_json
        self.sep = b"\r\n\r\n" if crlf_events else b"\n\n"
        self.hop_delays = hop_delays
        self.model = model
        self.host = host
        self.port = port
        self.requests = 0  # generation requests seen
        self.connections = 0
        self.sent_at: list[float] = []  # x-labkit-sent-at values, in arrival order
        self.arrivals: list[float] = []  # time.perf_counter() at arrival of each request
        self.stall_started: float | None = None  # perf_counter when the stall began
        self.stall_ended: float | None = None  # perf_counter when it ended (no token written before)
        self._stall_until = 0.0
        self._cache: dict[tuple, bytes] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._transports: set[asyncio.Transport] = set()
        self._tasks: set[asyncio.Task] = set()

    # ----------------------------------------------------------------- life cycle
    @property
    def url(self) -> str:
        """Base URL, ``http://127.0.0.1:<port>``."""
        return f"http://{self.host}:{self.port}"

    async def start_async(self) -> FakeOpenAIServer:
        """Start listening on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(
            lambda: _Proto(self), self.host, self.port, backlog=4096
        )  # uvicorn: 2048
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop_async(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for tr in list(self._transports):
            tr.abort()
        await asyncio.sleep(0)

    def start(self) -> FakeOpenAIServer:
        """Serve from a daemon thread with its own event loop; return once listening."""
        ready = threading.Event()
        errors: list[BaseException] = []

        def _main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start_async())
            except BaseException as err:  # noqa: BLE001 - handed to the caller
                errors.append(err)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop_async())
            loop.close()

        self._thread = threading.Thread(target=_main, name="fake-openai", daemon=True)
        self._thread.start()
        if not ready.wait(120):  # a hang guard: listening takes milliseconds
            msg = "the fake server did not start listening within 120 s"
            raise RuntimeError(msg)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        """Stop the thread started by :meth:`start`."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- responses
    def _dumps(self, obj: Any) -> bytes:
        if self.spaced_json:
            return json.dumps(obj).encode()
        return json.dumps(obj, separators=(",", ":")).encode()

    def _labkit(self, writes: dict[str, float] | None = None) -> dict[str, Any]:
        if self.event_attribution is not None:
            return self.event_attribution
        return {
            "node_id": self.node_id,
            "replica_id": self.replica_id,
            "timings": {**(self.timings or {}), **(writes or {})},
        }

    def _head(self, status: int, content_type: str, chunked: bool, length: int = 0) -> bytes:
        reason = {200: "OK", 404: "Not Found", 500: "Internal Server Error"}.get(status, "X")
        lines = [f"HTTP/1.1 {status} {reason}", f"content-type: {content_type}"]
        lines.append("transfer-encoding: chunked" if chunked else f"content-length: {length}")
        if self.attribution in ("headers", "both") and status == 200:
            if self.node_id is not None:
                lines.append(f"{HEADER_NODE}: {self.node_id}")
            if self.replica_id is not None:
                lines.append(f"{HEADER_REPLICA}: {self.replica_id}")
            if self.timings is not None:
                lines.append(f"{HEADER_TIMINGS}: {json.dumps(self.timings, separators=(',', ':'))}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def _token_events(self, chat: bool, n_out: int) -> list[bytes]:
        """One SSE event (bytes) per chunk of tokens, the last with finish_reason."""
        events = []
        if chat:
            first = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": _CREATED,
                "model": self.model,
                "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                ],
            }
            events.append(b"data: " + self._dumps(first) + self.sep)
        k = 0
        while k < n_out:
            take = min(self.tokens_per_chunk, n_out - k)
            text = "".join(f" t{k + j}" for j in range(take))
            k += take
            finish = "length" if k >= n_out else None
            if chat:
                obj = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": _CREATED,
                    "model": self.model,
                    "choices": [{"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": finish}],
                }
            else:
                obj = {
                    "id": "cmpl-fake",
                    "object": "text_completion",
                    "created": _CREATED,
                    "model": self.model,
                    "choices": [
                        {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}
                    ],
                }
            events.append(b"data: " + self._dumps(obj) + self.sep)
        return events

    def _final_events(
        self, chat: bool, n_prompt: int, n_out: int, include_usage: bool, writes: dict[str, float] | None = None
    ) -> list[bytes]:
        events = []
        final: dict[str, Any] = {}
        if self.usage and include_usage:
            final["usage"] = {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}
        if self.attribution in ("event", "both"):
            final["labkit"] = self._labkit(writes)
        if final:
            obj = {
                "id": "chatcmpl-fake" if chat else "cmpl-fake",
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": _CREATED,
                "model": self.model,
                "choices": [],
                **final,
            }
            events.append(b"data: " + self._dumps(obj) + self.sep)
        events.append(b"data: [DONE]" + self.sep)
        return events

    def _full_body(self, chat: bool, n_prompt: int, n_out: int) -> bytes:
        text = "".join(f" t{k}" for k in range(n_out))
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "length",
            }
        else:
            choice = {"index": 0, "text": text, "finish_reason": "length"}
        obj: dict[str, Any] = {
            "id": "cmpl-fake",
            "object": "chat.completion" if chat else "text_completion",
            "created": _CREATED,
            "model": self.model,
            "choices": [choice],
        }
        if self.usage:
            obj["usage"] = {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}
        if self.attribution in ("event", "both"):
            obj["labkit"] = self._labkit()
        return self._dumps(obj)

    def _instant(self, chat: bool, stream: bool, include_usage: bool, n_prompt: int, n_out: int) -> bytes:
        key = (chat, stream, include_usage, n_prompt, n_out)
        data = self._cache.get(key)
        if data is None:
            if stream:
                events = self._token_events(chat, n_out) + self._final_events(chat, n_prompt, n_out, include_usage)
                data = (
                    self._head(200, "text/event-stream; charset=utf-8", True)
                    + b"".join(_chunk(e) for e in events)
                    + b"0\r\n\r\n"
                )
            else:
                body = self._full_body(chat, n_prompt, n_out)
                data = self._head(200, "application/json", False, len(body)) + body
            self._cache[key] = data
        return data

    def _simple(self, status: int, obj: Any) -> bytes:
        body = self._dumps(obj)
        return self._head(status, "application/json", False, len(body)) + body

    def handle(self, proto: _Proto, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        """Answer one request on ``proto``'s transport."""
        tr = proto.transport
        now = time.perf_counter()
        if path.endswith("/models") and method == "GET":
            tr.write(self._simple(200, {"object": "list", "data": [{"id": self.model, "object": "model"}]}))
            return
        if path in ("/health", "/v1/health"):
            tr.write(self._simple(200, {}))
            return
        chat = path.endswith("/chat/completions")
        if not (chat or path.endswith("/completions")) or method != "POST":
            tr.write(self._simple(404, {"error": {"message": f"no route {method} {path}"}}))
            return
        self.requests += 1
        self.arrivals.append(now)
        sent_at = headers.get(HEADER_SENT_AT)
        if sent_at is not None:
            self.sent_at.append(float(sent_at))
        if self.stall_after_requests is not None and self.requests == self.stall_after_requests:
            self.stall_started = now
            if self.stall_until_request is None:
                self._stall_until = self.stall_ended = now + self.stall_s
            else:
                self._stall_until = float("inf")
        if self.stall_until_request is not None and self.requests == self.stall_until_request:
            self._stall_until = self.stall_ended = now
        try:
            req = json.loads(body)
        except ValueError:
            tr.write(self._simple(400, {"error": {"message": "body is not JSON"}}))
            return
        if self.fail_every and self.requests % self.fail_every == 0:
            tr.write(self._simple(500, {"error": {"message": "injected failure", "code": 500}}))
            return
        stream = bool(req.get("stream"))
        include_usage = bool((req.get("stream_options") or {}).get("include_usage")) or not stream
        n_out = self.output_tokens if self.output_tokens is not None else int(req.get("max_tokens") or 16)
        if chat:
            prompt = " ".join(str(m.get("content", "")) for m in req.get("messages", []))
        else:
            prompt = str(req.get("prompt", ""))
        n_prompt = len(prompt.split())
        if self.hop_delays is not None and stream and sent_at is not None:
            coro = self._hops(tr, chat, include_usage, n_prompt, n_out, float(sent_at), self.hop_delays)
            task = asyncio.get_running_loop().create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        if self.ttft_s <= 0 and self.itl_s <= 0 and now >= self._stall_until:
            tr.write(self._instant(chat, stream, include_usage, n_prompt, n_out))
            return
        task = asyncio.get_running_loop().create_task(self._slow(tr, chat, stream, include_usage, n_prompt, n_out, now))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wait_stall(self) -> None:
        while True:
            left = self._stall_until - time.perf_counter()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.005))  # a stall ended by a request ends early

    async def _slow(
        self,
        tr: asyncio.Transport,
        chat: bool,
        stream: bool,
        include_usage: bool,
        n_prompt: int,
        n_out: int,
        t_arrival: float,
    ) -> None:
        if self.ttft_s > 0:
            await asyncio.sleep(self.ttft_s)
        await self._wait_stall()
        if not stream:
            if self.itl_s > 0 and n_out > 1:
                await asyncio.sleep(self.itl_s * (n_out - 1))
            await self._wait_stall()
            body = self._full_body(chat, n_prompt, n_out)
            tr.write(self._head(200, "application/json", False, len(body)) + body)
            return
        events = self._token_events(chat, n_out)
        head = self._head(200, "text/event-stream; charset=utf-8", True)
        if chat:  # role chunk goes with the first content chunk
            events = [events[0] + events[1], *events[2:]] if len(events) > 1 else events
        writes = {"fake_arrival_pc": t_arrival}
        for k, event in enumerate(events):
            if k > 0 and self.itl_s > 0:
                await asyncio.sleep(self.itl_s)
                await self._wait_stall()
            if tr.is_closing():
                return
            now = time.perf_counter()
            writes.setdefault("fake_first_write_pc", now)
            writes["fake_last_write_pc"] = now
            tr.write((head if k == 0 else b"") + _chunk(event))
        # When the first and last token were written (perf_counter: the tests' clock, in-process).
        tail = self._final_events(chat, n_prompt, n_out, include_usage, writes if self.timings_of_writes else None)
        if not tr.is_closing():
            tr.write(b"".join(_chunk(e) for e in tail) + b"0\r\n\r\n")


    async def _hops(
        self,
        tr: asyncio.Transport,
        chat: bool,
        include_usage: bool,
        n_prompt: int,
        n_out: int,
        sent: float,
        delays: dict[str, float],
    ) -> None:
        """A streamed answer that waits ``delays[hop]`` at each hop and stamps it like the kit's servers."""
        stamps: dict[str, float] = {}
        chunks_at: list[float] = []
        for hop, stamp in (("to_ingress", "proxy_at_s"), ("routing", "replica_at_s"), ("replica", "submit_at_s")):
            await asyncio.sleep(delays.get(hop, 0.0))
            stamps[stamp] = time.time() - sent
        await asyncio.sleep(self.ttft_s)
        events = self._token_events(chat, n_out)
        if chat:  # role chunk goes with the first content chunk
            events = [events[0] + events[1], *events[2:]] if len(events) > 1 else events
        head = self._head(200, "text/event-stream; charset=utf-8", True)
        for k, event in enumerate(events):
            if k > 0 and self.itl_s > 0:
                await asyncio.sleep(self.itl_s)
            at = time.time() - sent
            stamps.setdefault("first_token_at_s", at)
            stamps["last_token_at_s"] = at
            chunks_at.append(at)
            await asyncio.sleep(delays.get("chunk_return", 0.0))  # between the replica's flush and the client
            if tr.is_closing():
                return
            tr.write((head if k == 0 else b"") + _chunk(event))
        lab = {"node_id": self.node_id, "replica_id": self.replica_id, "timings": stamps, "chunks_at_s": chunks_at}
        final = {"id": "cmpl-fake", "object": "text_completion", "created": _CREATED, "model": self.model}
        final["choices"] = []
        final["labkit"] = lab
        if include_usage:
            final["usage"] = {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}
        tail = [b"data: " + self._dumps(final) + self.sep, b"data: [DONE]" + self.sep]
        if not tr.is_closing():
            tr.write(b"".join(_chunk(e) for e in tail) + b"0\r\n\r\n")


class _Proto(asyncio.Protocol):
    def __init__(self, server: FakeOpenAIServer) -> None:
        self.server = server
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections += 1
        self.server._transports.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._transports.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        while True:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                break
            lines = buf[:i].decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if len(buf) < i + 4 + length:
                break
            body = buf[i + 4 : i + 4 + length]
            buf = buf[i + 4 + length :]
            self.server.handle(self, method, path, headers, body)
        self.buf = buf


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible streaming server.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--output-tokens", type=int, default=16, help="0: the request's max_tokens")
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument("--itl-ms", type=float, default=0.0)
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU")
    parser.add_argument("--uvloop", action="store_true", help="use uvloop when installed")
    parser.add_argument(
        "--timings-of-writes",
        action="store_true",
        help="report when each request arrived and its first and last token were written",
    )
    parser.add_argument(
        "--short-slice",
        action="store_true",
        help="ask the kernel for a 0.2 ms scheduler slice (answer promptly on a busy machine)",
    )
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    if args.short_slice:
        from labkit.load.schedule import _set_sched_slice

        _set_sched_slice(200_000)
    if args.uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    server = FakeOpenAIServer(
        output_tokens=args.output_tokens or None,
        ttft_s=args.ttft_ms / 1e3,
        itl_s=args.itl_ms / 1e3,
        timings_of_writes=args.timings_of_writes,
    )

    async def _serve() -> None:
        await server.start_async()
        print(f"PORT {server.port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop_async()

    asyncio.run(_serve())
    print(
        json.dumps({"requests": server.requests, "connections": server.connections, "cpu_s": _cpu_seconds()}),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
