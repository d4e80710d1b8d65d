"""Code that runs inside Ray Serve replicas: the vLLM model server and the gating coordinator.

Imported only by :mod:`labkit.serve` when it builds an application (the request validation it
applies lives in :mod:`labkit.serve.protocol`) (ray, starlette and vllm
are imported here at module level on purpose: this module never loads with ``import labkit``).

Protocol between the two: the coordinator calls ``LLMServer.handle_api`` through a streaming
deployment handle; ``handle_api`` yields one ``dict`` (status and headers) and then the body as
``bytes`` chunks. The HTTP path (``__call__``) uses the same generator, so both routes answer
identically.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, cast

from ray import serve
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from labkit.contracts import (
    HEADER_COORD_AT,
    HEADER_COORD_ID,
    HEADER_COORD_WAIT,
    HEADER_NODE,
    HEADER_PROXY_AT,
    HEADER_REPLICA,
    HEADER_SENT_AT,
    HEADER_TIMINGS,
)
from labkit.serve.protocol import BadRequest, parse_request

if TYPE_CHECKING:
    from vllm.tokenizers.protocol import TokenizerLike


#: Most stream chunks whose flush time a final event reports (a bound on its size).
_MAX_CHUNK_STAMPS = 4096


def _header_time(headers: dict[str, str], name: str) -> float | None:
    value = headers.get(name)
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class LLMServer:
    """One Serve replica: a vLLM ``AsyncLLM`` engine behind an OpenAI-compatible API."""

    def __init__(self, settings: dict[str, Any]) -> None:
        import ray
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM
        from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

        self.settings = settings
        self.served_name = settings["served_name"]
        self.limits = settings["limits"]
        self.node_id = ray.get_runtime_context().get_node_id()
        context = serve.get_replica_context()
        self.replica_id = context.replica_id.unique_id if context else uuid.uuid4().hex[:8]
        from labkit.telemetry import EngineActivity

        self.activity = EngineActivity()  # running / waiting, from vLLM's scheduler stats
        self.capacity = int(settings["engine_args"].get("max_num_seqs") or 0)
        self.inflight = 0
        args = AsyncEngineArgs(**settings["engine_args"])
        loggers = [self.activity.stat_logger_factory(), RayPrometheusStatLogger]
        self.engine = AsyncLLM.from_engine_args(args, stat_loggers=loggers)
        self.tokenizer: TokenizerLike | None = None
        self._ranks: list[dict[str, Any]] | None = None
        self._reporter = None
        try:  # telemetry is optional: the server answers without it
            from labkit import telemetry

            start = getattr(telemetry, "start_reporter", None)
            if start is not None and settings.get("telemetry", True):
                self._reporter = start(
                    role="replica", component_id=self.replica_id, node_id=self.node_id, stats_fn=self.engine_stats
                )
        except Exception as err:  # noqa: BLE001 - never fail a replica for telemetry
            logging.getLogger("labkit").warning("labkit: telemetry reporter not started: %r", err)

    def engine_stats(self) -> dict[str, Any]:
        """Return running / waiting / in-flight requests of this replica's engine."""
        # capacity: requests the engine runs at once (vLLM's max_num_seqs); more wait inside it
        return {**self.activity.stats(), "inflight": self.inflight, "capacity": self.capacity}

    async def ranks(self) -> list[dict[str, Any]]:
        """Return each TP x PP rank of this replica's engine, as the rank's own process reports it."""
        if self._ranks is None:
            self._ranks = list(await self.engine.collective_rpc("labkit_rank_info"))
        return self._ranks

    async def _prompt_for(self, req: dict[str, Any]) -> str:
        if "prompt" in req:
            return req["prompt"]
        if self.tokenizer is None:
            self.tokenizer = self.engine.get_tokenizer()
            if asyncio.iscoroutine(self.tokenizer):
                self.tokenizer = await self.tokenizer
        text = self.tokenizer.apply_chat_template(req["messages"], tokenize=False, add_generation_prompt=True)
        return cast(str, text)  # tokenize=False: the template's text, not token ids

    async def handle_api(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> AsyncIterator[Any]:
        """Serve one API call; yield ``{"status", "headers"}`` then body chunks (bytes)."""
        arrival_wall = time.time()
        arrival = time.perf_counter()
        timings: dict[str, float] = {}
        # Hop stamps ("*_at_s"): seconds after the client's send, each on its own host's wall clock
        # minus the client's wall clock at send; labkit.stats.hops corrects measured clock offsets.
        sent = _header_time(headers, HEADER_SENT_AT)
        if sent is not None:
            timings["client_to_replica_s"] = max(0.0, arrival_wall - sent)
            timings["replica_at_s"] = arrival_wall - sent
            for key, header in (("proxy_at_s", HEADER_PROXY_AT), ("coordinator_at_s", HEADER_COORD_AT)):
                stamp = _header_time(headers, header)
                if stamp is not None:
                    timings[key] = stamp - sent
        wait = _header_time(headers, HEADER_COORD_WAIT)
        if wait is not None:
            timings["coordinator_wait_s"] = wait
        base_headers = {HEADER_NODE: self.node_id, HEADER_REPLICA: self.replica_id}
        route = path.rstrip("/")
        if route.endswith("/v1/models") and method == "GET":
            data = {
                "object": "list",
                "data": [
                    {
                        "id": self.served_name,
                        "object": "model",
                        "created": 0,
                        "owned_by": "labkit",
                        "max_model_len": self.settings["max_model_len"],
                    }
                ],
            }
            yield {"status": 200, "headers": base_headers, "media_type": "application/json"}
            yield json.dumps(data).encode()
            return
        if route.endswith("/v1/labkit/placement") and method == "GET":
            yield {"status": 200, "headers": base_headers, "media_type": "application/json"}
            ranks = await self.ranks()
            yield json.dumps({"replica_id": self.replica_id, "node_id": self.node_id, "ranks": ranks}).encode()
            return
        if route.endswith("/healthz") or route.endswith("/health"):
            yield {"status": 200, "headers": base_headers, "media_type": "application/json"}
            health = {"status": "ok", "now": time.time(), "node_id": self.node_id, **self.engine_stats()}
            yield json.dumps(health).encode()
            return
        kind = (
            "chat"
            if route.endswith("/v1/chat/completions")
            else "completions"
            if route.endswith("/v1/completions")
            else None
        )
        if kind is None or method != "POST":
            err = BadRequest(
                404,
                f"No route for {method} {path}. Available: POST /v1/completions, "
                "POST /v1/chat/completions, GET /v1/models.",
            )
            yield {"status": 404, "headers": base_headers, "media_type": "application/json"}
            yield err.body()
            return
        try:
            req = parse_request(body, kind=kind, served_name=self.served_name, limits=self.limits)
            prompt = await self._prompt_for(req)
        except BadRequest as err:
            yield {"status": err.status, "headers": base_headers, "media_type": "application/json"}
            yield err.body()
            return
        async for item in self._generate(kind, req, prompt, arrival, sent, timings, base_headers):
            yield item

    async def _generate(
        self,
        kind: str,
        req: dict[str, Any],
        prompt: str,
        arrival: float,
        sent: float | None,
        timings: dict[str, float],
        base_headers: dict[str, str],
    ) -> AsyncIterator[Any]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        request_id = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        params = SamplingParams(
            max_tokens=req["max_tokens"],
            temperature=req["temperature"],
            top_p=req["top_p"],
            seed=req["seed"],
            stop=req["stop"],
            ignore_eos=req["ignore_eos"],
            output_kind=RequestOutputKind.DELTA,
        )
        created = int(time.time())
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        self.inflight += 1
        submit = time.perf_counter()
        timings["replica_wait_s"] = submit - arrival
        wall = time.time
        sent_wall = sent if sent is not None else wall()  # without the client's stamp: from submit
        if sent is not None:
            timings["submit_at_s"] = wall() - sent_wall
        chunks_at: list[float] = []  # each text chunk's flush from this replica, after the send
        first: float | None = None
        first_wall = last_wall = 0.0
        text_parts: list[str] = []
        prompt_tokens = 0
        output_tokens = 0
        finish = None
        metrics = None
        try:
            stream = self.engine.generate(prompt, params, request_id)
            if req["stream"]:
                yield {"status": 200, "headers": base_headers, "media_type": "text/event-stream"}
                if kind == "chat":
                    yield _sse(
                        {
                            "id": request_id,
                            "object": obj,
                            "created": created,
                            "model": self.served_name,
                            "choices": [
                                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                            ],
                        }
                    )
            async for out in stream:
                completion = out.outputs[0]
                if out.prompt_token_ids is not None:
                    prompt_tokens = len(out.prompt_token_ids)
                output_tokens += len(completion.token_ids)
                if first is None and completion.token_ids:
                    first = time.perf_counter()
                    first_wall = wall()
                if completion.token_ids:
                    last_wall = wall()
                finish = completion.finish_reason
                metrics = out.metrics or metrics
                if req["stream"] and (completion.text or finish):
                    if kind == "chat":
                        choice = {
                            "index": 0,
                            "delta": {"content": completion.text} if completion.text else {},
                            "finish_reason": finish,
                        }
                    else:
                        choice = {"index": 0, "text": completion.text, "logprobs": None, "finish_reason": finish}
                    if completion.text and len(chunks_at) < _MAX_CHUNK_STAMPS:
                        chunks_at.append(round(wall() - sent_wall, 6))
                    yield _sse(
                        {
                            "id": request_id,
                            "object": obj,
                            "created": created,
                            "model": self.served_name,
                            "choices": [choice],
                        }
                    )
                else:
                    text_parts.append(completion.text)
        except asyncio.CancelledError:
            await self.engine.abort(request_id)
            raise
        except Exception as err:  # noqa: BLE001 - engine failure becomes a clear 500/503 for the client
            if req["stream"]:
                yield _sse({"error": {"message": f"engine failed: {err!r}", "type": "server_error"}})
                yield b"data: [DONE]\n\n"
            else:
                yield {"status": 503, "headers": base_headers, "media_type": "application/json"}
                yield json.dumps({"error": {"message": f"engine failed: {err!r}", "type": "server_error"}}).encode()
            return
        finally:
            self.inflight -= 1
        done = time.perf_counter()
        if first is not None:
            timings["engine_ttft_s"] = first - submit
            if sent is not None:
                timings["first_token_at_s"] = first_wall - sent_wall
                timings["last_token_at_s"] = last_wall - sent_wall
        timings["engine_total_s"] = done - submit
        if metrics is not None and getattr(metrics, "scheduled_ts", 0) and getattr(metrics, "queued_ts", 0):  # type: ignore[arg-type]  # mypy types getattr's default from the left of "and"
            timings["engine_queue_s"] = max(0.0, metrics.scheduled_ts - metrics.queued_ts)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": output_tokens,
            "total_tokens": prompt_tokens + output_tokens,
        }
        labkit: dict[str, Any] = {"node_id": self.node_id, "replica_id": self.replica_id, "timings": timings}
        if chunks_at and sent is not None:
            labkit["chunks_at_s"] = chunks_at
        if req["stream"]:
            yield _sse(
                {
                    "id": request_id,
                    "object": obj,
                    "created": created,
                    "model": self.served_name,
                    "choices": [],
                    **({"usage": usage} if req["include_usage"] else {}),
                    "labkit": labkit,
                }
            )
            yield b"data: [DONE]\n\n"
            return
        text = "".join(text_parts)
        if kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
            obj_full = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            obj_full = "text_completion"
        headers = dict(base_headers)
        headers[HEADER_TIMINGS] = json.dumps(timings, separators=(",", ":"))
        yield {"status": 200, "headers": headers, "media_type": "application/json"}
        yield json.dumps(
            {
                "id": request_id,
                "object": obj_full,
                "created": created,
                "model": self.served_name,
                "choices": [choice],
                "usage": usage,
                "labkit": labkit,
            }
        ).encode()

    async def __call__(self, request: Request) -> Response:
        """Answer HTTP directly (the distributed topologies: a proxy routes here)."""
        body = await request.body()
        gen = self.handle_api(request.method, request.url.path, body, dict(request.headers))
        return await _respond(gen)

    def check_health(self) -> None:
        """Serve health check: raise when the engine died so Serve replaces the replica."""
        if getattr(self.engine, "errored", False):
            msg = "vLLM engine is dead"
            raise RuntimeError(msg)


async def _respond(gen: AsyncIterator[Any]) -> Response:
    head = await gen.__anext__()
    if head.get("media_type") == "text/event-stream":
        return StreamingResponse(
            gen, status_code=head["status"], headers=head["headers"], media_type="text/event-stream"
        )
    chunks = [chunk async for chunk in gen]
    return Response(
        b"".join(chunks), status_code=head["status"], headers=head["headers"], media_type=head.get("media_type")
    )


class Coordinator:
    """The chapter's "single node gates requests before distribution": one process on the head.

    Every request waits for one of ``max_concurrency`` slots, then is relayed through a
    deployment handle to a model replica; the wait is reported to the replica, which returns it
    in its timings as ``coordinator_wait_s``.
    """

    def __init__(self, llm_handle: Any, max_concurrency: int, telemetry: bool = True) -> None:
        import ray

        self.handle = llm_handle.options(stream=True)
        self.max_concurrency = max_concurrency
        self.slots = asyncio.Semaphore(max_concurrency)
        self.waiting = 0
        self.inflight = 0
        self.node_id = ray.get_runtime_context().get_node_id()
        context = serve.get_replica_context()
        self.coordinator_id = context.replica_id.unique_id if context else "coordinator"
        self._reporter = None
        try:
            from labkit import telemetry as tel

            start = getattr(tel, "start_reporter", None)
            if start is not None and telemetry:
                self._reporter = start(
                    role="coordinator",
                    component_id=self.coordinator_id,
                    node_id=self.node_id,
                    stats_fn=lambda: {"inflight": self.inflight, "waiting": self.waiting},
                )
        except Exception as err:  # noqa: BLE001 - never fail the coordinator for telemetry
            logging.getLogger("labkit").warning("labkit: telemetry reporter not started: %r", err)

    async def _relay(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> AsyncIterator[Any]:
        received = time.time()
        queued = time.perf_counter()
        self.waiting += 1
        try:
            await self.slots.acquire()
        finally:
            self.waiting -= 1
        self.inflight += 1
        try:
            headers = dict(headers)
            headers[HEADER_COORD_WAIT] = f"{time.perf_counter() - queued:.6f}"
            headers[HEADER_COORD_ID] = self.coordinator_id
            headers[HEADER_COORD_AT] = f"{received:.6f}"
            async for item in self.handle.handle_api.remote(method, path, body, headers):
                yield item
        finally:
            self.inflight -= 1
            self.slots.release()

    async def __call__(self, request: Request) -> Response:
        """Gate, then relay to a model replica."""
        body = await request.body()
        return await _respond(self._relay(request.method, request.url.path, body, dict(request.headers)))
