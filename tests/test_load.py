"""Tests of labkit.load against a fake OpenAI-compatible server with known delays.

Every assertion here holds on any machine, idle or loaded: no upper bound on a delay, a rate or
a loop count. The checks are exact: counts, orderings, "never early" lower bounds (the fake
server runs in this process and stamps what it did with the same clock), and states the client
can only reach by the behaviour under test (a stall that ends only if the client keeps sending).
How close the client's timestamps come to the server's, and how small its schedule lag is, are
measured in ``benchmarks/bench_load_timing.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _fake_openai import FakeOpenAIServer

from labkit.cli import EXIT_LABKIT_ERROR, main
from labkit.errors import ConfigError, LoadGenError
from labkit.load import (
    SERVER_HEADER_SENT_AT,
    LoadConfig,
    LoadResult,
    RequestRecord,
    make_prompts,
    read_records,
    run_load,
    run_load_async,
    run_sweep,
)
from labkit.load.client import _Conn, _Req  # white-box: the HTTP protocol (labkit.load documents the seams)
from labkit.load.runner import _Runner
from labkit.load.schedule import _arrival_offsets
from labkit.stats import summarize_run


def _cfg(url: str, **kw) -> LoadConfig:
    base = {"model": "m", "arrival": "constant", "rate_rps": 50.0, "num_requests": 10, "max_tokens": 8}
    base.update(kw)
    return LoadConfig(url=url, **base)


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"url": "localhost:8000"}, "url"),
        ({"api": "embeddings"}, "api"),
        ({"arrival": "uniform"}, "arrival"),
        ({"rate_rps": None}, "rate_rps"),
        ({"rate_rps": 0}, "rate_rps"),
        ({"rate_rps": float("inf")}, "rate_rps"),
        ({"arrival": "closed", "users": 0}, "users"),
        ({"arrival": "gamma", "burstiness": 0}, "burstiness"),
        ({"num_requests": None, "duration_s": None}, "num_requests"),
        ({"num_requests": 0}, "num_requests"),
        ({"duration_s": -1}, "duration_s"),
        ({"warmup_requests": -1}, "warmup_requests"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"prompt_tokens": 0}, "prompt_tokens"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"hard_stop_s": 0}, "hard_stop_s"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"ramp_to_rps": 10.0}, "ramp_to_rps"),  # a ramp without duration_s
        ({"prompt_file": "/nonexistent/prompts.txt"}, "prompt_file"),
    ],
)
def test_bad_config_names_field_value_and_fix(kwargs, field):
    base = {"url": "http://127.0.0.1:1", "rate_rps": 1.0, "num_requests": 1}
    base.update(kwargs)
    with pytest.raises(ConfigError) as info:
        LoadConfig(**base)
    assert info.value.field == field
    assert f"LoadConfig.{field}=" in str(info.value)
    assert repr(info.value.value) in str(info.value)


@pytest.mark.parametrize(
    ("url", "api", "expected"),
    [
        ("http://h:1", "completions", "http://h:1/v1/completions"),
        ("http://h:1/", "chat", "http://h:1/v1/chat/completions"),
        ("http://h:1/v1", "completions", "http://h:1/v1/completions"),
        ("http://h:1/v1/chat/completions", "chat", "http://h:1/v1/chat/completions"),
        ("https://h/x/v1", "chat", "https://h/x/v1/chat/completions"),
    ],
)
def test_endpoint_url(url, api, expected):
    assert LoadConfig(url=url, api=api, rate_rps=1, num_requests=1).endpoint_url == expected


def test_config_to_dict_redacts_secrets():
    cfg = LoadConfig(url="http://h:1", rate_rps=1, num_requests=1, api_key="sk-secret",
                     headers={"Authorization": "Bearer sk-secret"})
    text = json.dumps(cfg.to_dict())
    assert "sk-secret" not in text and "sk-secret" not in repr(cfg)
    assert cfg.to_dict()["headers"] == {"Authorization": "<redacted>"}


# --------------------------------------------------------------------------- arrivals
def _offsets(**kw):
    cfg = LoadConfig(url="http://h:1", **kw)
    return [t for _, t in _arrival_offsets(cfg)]


def test_constant_arrivals_are_evenly_spaced():
    ts = _offsets(arrival="constant", rate_rps=20, num_requests=100)
    assert len(ts) == 100
    assert all(abs((b - a) - 0.05) < 1e-9 for a, b in zip(ts, ts[1:], strict=False))


@pytest.mark.parametrize(("arrival", "burstiness", "cv"), [("poisson", 1.0, 1.0), ("gamma", 0.25, 2.0),
                                                           ("gamma", 4.0, 0.5)])
def test_random_arrivals_have_the_rate_and_the_burstiness(arrival, burstiness, cv):
    ts = _offsets(arrival=arrival, rate_rps=100, burstiness=burstiness, num_requests=20000, seed=1)
    gaps = [b - a for a, b in zip(ts, ts[1:], strict=False)]
    mean = statistics.fmean(gaps)
    assert mean == pytest.approx(0.01, rel=0.05)
    assert statistics.pstdev(gaps) / mean == pytest.approx(cv, rel=0.1)  # gamma CV = 1/sqrt(shape)


def test_arrivals_are_deterministic_under_a_seed():
    a = _offsets(arrival="poisson", rate_rps=10, num_requests=50, seed=7)
    b = _offsets(arrival="poisson", rate_rps=10, num_requests=50, seed=7)
    c = _offsets(arrival="poisson", rate_rps=10, num_requests=50, seed=8)
    assert a == b and a != c


def test_duration_bounds_the_measured_schedule_after_warmup():
    cfg = LoadConfig(url="http://h:1", arrival="constant", rate_rps=10, duration_s=2.0, warmup_requests=5)
    pairs = list(_arrival_offsets(cfg))
    assert [i for i, _ in pairs] == list(range(25))
    warm_end = pairs[5][1]
    assert warm_end == pytest.approx(0.5)  # 5 warm-ups at 10 req/s
    assert pairs[-1][1] - warm_end < 2.0


def test_count_and_duration_whichever_first():
    assert len(_offsets(arrival="constant", rate_rps=10, duration_s=100, num_requests=7)) == 7
    assert len(_offsets(arrival="constant", rate_rps=10, duration_s=1, num_requests=1000)) == 10


def test_ramp_goes_from_start_to_end_rate():
    ts = _offsets(arrival="constant", rate_rps=10, ramp_to_rps=100, duration_s=10)
    first = sum(1 for t in ts if t < 1.0)
    last = sum(1 for t in ts if t >= 9.0)
    assert len(ts) == pytest.approx(550, abs=2)  # integral of the rate: (10 + 100) / 2 * 10
    assert first == pytest.approx(14.5, abs=1.5) and last == pytest.approx(95.5, abs=1.5)


# --------------------------------------------------------------------------- prompts
class _WordTokenizer:
    """A stand-in tokenizer: one token per whitespace-separated word."""

    vocab_size = 50
    all_special_ids = [0]

    def encode(self, text, add_special_tokens=False):
        return [hash(w) % 49 + 1 for w in text.split()]

    def decode(self, ids):
        return " ".join(f"w{i}" for i in ids)


def test_synthetic_prompts_deterministic_and_sized():
    cfg = LoadConfig(url="http://h:1", rate_rps=1, num_requests=3, prompt_tokens=12, seed=3)
    a, b = make_prompts(cfg, 3), make_prompts(cfg, 3)
    assert a == b and len(set(a)) == 3
    assert all(len(p.split()) == 12 for p in a)


def test_synthetic_prompts_with_a_tokenizer_have_the_exact_length():
    cfg = LoadConfig(url="http://h:1", rate_rps=1, num_requests=3, prompt_tokens=9)
    tok = _WordTokenizer()
    assert all(len(tok.encode(p)) == 9 for p in make_prompts(cfg, 5, tokenizer=tok))


def test_prompt_files(tmp_path):
    plain = tmp_path / "p.txt"
    plain.write_text("first prompt\n\nsecond prompt\n")
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a"}\n"b"\n{"messages": [{"role": "user", "content": "c"}]}\n')
    assert make_prompts(LoadConfig(url="http://h:1", rate_rps=1, num_requests=1, prompt_file=str(plain)), 9) == [
        "first prompt", "second prompt"]
    got = make_prompts(LoadConfig(url="http://h:1", rate_rps=1, num_requests=1, prompt_file=str(jsonl)), 9)
    assert got == ["a", "b", [{"role": "user", "content": "c"}]]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"other": 1}\n')
    with pytest.raises(LoadGenError, match="Line 2"):
        make_prompts(LoadConfig(url="http://h:1", rate_rps=1, num_requests=1, prompt_file=str(bad)), 9)


# --------------------------------------------------------------------------- parsing (no network)
class _StubRunner:
    stream = True
    next_arrival = None

    def __init__(self):
        self.completed = 0

    def _complete(self, conn, req, t):
        self.completed += 1

    _parse_event = _Runner._parse_event
    _apply = staticmethod(_Runner._apply)


class _StubTransport:
    def write(self, data):
        pass

    def abort(self):
        pass


def _parse(data: bytes, step: int | None) -> tuple[_Req, _StubRunner]:
    runner = _StubRunner()
    conn = _Conn(runner)
    conn.transport = _StubTransport()
    req = _Req(0, 0.0, False, None)
    conn.send(req, b"")
    pieces = [data] if step is None else [data[i:i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        conn.data_received(piece)
    return req, runner


@pytest.mark.parametrize("step", [None, 1, 7, 200])
@pytest.mark.parametrize(
    "server_kw",
    [{}, {"spaced_json": True}, {"crlf_events": True}, {"tokens_per_chunk": 3}],
)
@pytest.mark.parametrize("chat", [False, True])
def test_stream_parsing_any_split_any_format(step, server_kw, chat):
    server = FakeOpenAIServer(output_tokens=10, node_id="n", replica_id="r", timings={"engine_ttft_s": 0.5},
                              **server_kw)
    data = server._instant(chat, True, True, 4, 10)
    req, runner = _parse(data, step)
    chunks = -(-10 // server_kw.get("tokens_per_chunk", 1))
    assert runner.completed == 1
    assert req.http_status == 200 and req.error is None and req.saw_done
    assert req.usage["completion_tokens"] == 10
    assert len(req.itl) == chunks - 1  # one gap per pair of text events, not per token
    assert req.labkit["node_id"] == "n" and req.node_id == "n" and req.server == {"engine_ttft_s": 0.5}


def test_sse_comments_multiline_data_and_chunk_extensions():
    events = (b": ping\n\n"
              b"event: message\ndata: {\"choices\":[{\"text\":\"a\"}]}\n\n"
              b"data: {\"choices\":\n"
              b"data: [{\"text\":\"b\"}]}\n\n"
              b"data: {\"choices\":[],\"usage\":{\"completion_tokens\":5}}\n\n"
              b"data: [DONE]\n\n")
    body = b"%x;ext=1\r\n%s\r\n0\r\n\r\n" % (len(events), events)
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    for step in (None, 3):
        req, runner = _parse(head + body, step)
        assert runner.completed == 1
        assert len(req.itl) == 1 and req.usage == {"completion_tokens": 5}


def test_error_event_in_stream():
    events = b'data: {"error": {"message": "engine died", "code": 500}}\n\ndata: [DONE]\n\n'
    data = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n%s"
            % (len(events), events))
    req, runner = _parse(data, None)
    assert runner.completed == 1 and req.error == "engine died" and req.first_token_s is None


# --------------------------------------------------------------------------- against the fake server
@pytest.mark.parametrize("api", ["completions", "chat"])
def test_token_times_are_never_before_the_server_wrote_them(api):
    """The server runs in this process and reports, on the same clock, when each request arrived
    and when it wrote the first and the last token. Exact: every request answered, one gap per
    pair of tokens, every client timestamp at or after the server's matching write, TTFT >= X
    (the server sleeps X after the request arrives), e2e >= X + (n - 1) Y. How close the
    client's times come to the server's is measured in benchmarks/bench_load_timing.py."""
    ttft, itl, tokens, n = 0.050, 0.020, 6, 20
    with FakeOpenAIServer(ttft_s=ttft, itl_s=itl, output_tokens=tokens, timings_of_writes=True) as server:
        res = run_load(_cfg(server.url, api=api, rate_rps=40, num_requests=n), progress=False)
    assert [r.status for r in res.records] == ["ok"] * n
    assert sorted(r.request_id for r in res.records) == [f"req-{i:06d}" for i in range(n)]
    for r in res.records:
        assert r.output_tokens == tokens and r.token_source == "usage"
        assert len(r.itl_s) == tokens - 1  # every gap a sample
        assert sum(r.itl_s) == pytest.approx(r.last_token_s - r.first_token_s)
        assert r.scheduled_s <= r.sent_s <= r.server["fake_arrival_pc"]
        assert r.first_token_s >= r.server["fake_first_write_pc"]  # never before it was written
        assert r.last_token_s >= r.server["fake_last_write_pc"]
        assert r.sent_s < r.first_token_s <= r.last_token_s <= r.done_s
        assert r.ttft_uncorrected_s >= ttft - 0.0005  # asyncio timers fire at most 1 clock tick early
        assert r.e2e_uncorrected_s >= ttft + (tokens - 1) * itl - 0.001
        assert r.tpot_s == pytest.approx((r.last_token_s - r.first_token_s) / (tokens - 1))


@pytest.mark.parametrize("capped", [True, False])
def test_a_stall_shows_in_corrected_latency_only_when_the_client_was_held_back(capped):
    """Coordinated omission. The server stalls every response when request 5 arrives.

    Capped (one connection, wrk-style): the stall lasts 1 s; request 5 holds the only slot until
    the stall ends, so every request scheduled during it waits in the client: its latency from
    the intended send includes the stall, its latency from the actual send does not, and the
    server receives nothing during the stall. Uncapped: the stall ends only when request 25
    arrives, so the run completes only because the client sends on schedule while no response
    comes back; the requests sent into the stall show it in their latency from the actual send.
    All checks are exact (the server stamps arrivals and writes on the test's clock)."""
    stall_s = 1.0
    server_kw = {"stall_s": stall_s} if capped else {"stall_until_request": 25}
    with FakeOpenAIServer(ttft_s=0.002, itl_s=0.002, output_tokens=3, stall_after_requests=5,
                          timings_of_writes=True, **server_kw) as server:
        cfg = _cfg(server.url, rate_rps=40, num_requests=100, max_concurrency=1 if capped else None,
                   hard_stop_s=300.0)  # a hang guard: the run takes 2.5 s
        res = run_load(cfg, progress=False)
        start, end = server.stall_started, server.stall_ended
    assert start is not None and end is not None
    assert [r.status for r in res.records] == ["ok"] * 100
    arrival = {r.request_id: r.server["fake_arrival_pc"] for r in res.records}
    for r in res.records:
        assert r.e2e_s == pytest.approx(r.schedule_lag_s + r.e2e_uncorrected_s)
        assert r.e2e_s >= r.e2e_uncorrected_s  # so every percentile too
        if arrival[r.request_id] > start:  # held by the stall: done only after it
            assert r.done_s >= end
    m = summarize_run(res.records, ci=False).metrics
    assert all(m["e2e"].percentiles[q] >= m["e2e_uncorrected"].percentiles[q] for q in m["e2e"].percentiles)
    if capped:
        assert end == pytest.approx(start + stall_s)
        assert not [r for r in res.records if start < arrival[r.request_id] < end]  # nothing sent meanwhile
        during = [r for r in res.records if start < r.scheduled_s < end]
        # Request 5 is scheduled 0.1 s into a 2.5 s schedule: the stall covers part of it unless
        # request 5 reached the server more than 2.3 s after its intended time (it takes milliseconds).
        assert during
        for r in during:  # waited in the client for the slot that request 5 held until the end
            assert r.sent_s >= end
            assert r.schedule_lag_s >= end - r.scheduled_s
            assert r.e2e_s >= end - r.scheduled_s
    else:
        into = [r for r in res.records if start < arrival[r.request_id] <= end]
        assert len(into) == 25 - 5  # requests 6 to 25 reached the server while it held every answer
        for r in into:  # sent before the stall ended, answered after: the stall is in the uncorrected latency
            assert r.sent_s <= end <= r.done_s
            assert r.e2e_uncorrected_s >= end - arrival[r.request_id]


def test_tokens_come_from_usage_not_from_chunks():
    with FakeOpenAIServer(output_tokens=12, tokens_per_chunk=4) as server:
        res = run_load(_cfg(server.url, num_requests=3), progress=False)
    assert all(r.output_tokens == 12 and len(r.itl_s) == 2 for r in res.records)


def test_without_usage_tokens_are_unknown_or_counted_by_a_tokenizer(monkeypatch):
    with FakeOpenAIServer(output_tokens=5, usage=False) as server:
        res = run_load(_cfg(server.url, num_requests=3), progress=False)
        assert all(r.output_tokens is None and r.token_source is None for r in res.records)
        assert any("output_tokens unknown" in n for n in res.notes)
        monkeypatch.setattr("labkit.load.runner._load_tokenizer", lambda name: _WordTokenizer())
        monkeypatch.setattr("labkit.load.prompts._load_tokenizer", lambda name: _WordTokenizer())
        res = run_load(_cfg(server.url, num_requests=3, tokenizer="words"), progress=False)
    assert all(r.output_tokens == 5 and r.token_source == "tokenizer" for r in res.records)


def test_non_streaming_has_no_ttft_and_counts_usage():
    with FakeOpenAIServer(ttft_s=0.01, output_tokens=7, node_id="n2") as server:
        res = run_load(_cfg(server.url, stream=False, num_requests=4), progress=False)
    assert all(r.ok and r.first_token_s is None and r.output_tokens == 7 and r.node_id == "n2"
               for r in res.records)


def test_failures_are_records_and_count_as_failures():
    with FakeOpenAIServer(output_tokens=3, fail_every=3) as server:
        res = run_load(_cfg(server.url, num_requests=9, timeout_s=60.0), progress=False)
    failed = [r for r in res.records if not r.ok]
    assert len(res.records) == 9 and len(failed) == 3
    assert all(r.status == "error" and r.http_status == 500 and "injected failure" in r.error for r in failed)
    e2e = summarize_run(res.records, ci=False).metrics["e2e"]
    assert e2e.errors == 3 and e2e.error_rate == pytest.approx(1 / 3)
    assert e2e.percentiles["p90"] == 60.0  # a failure counts as its time-out


@pytest.mark.parametrize("loop", ["asyncio", "run_load"])
def test_timeouts_are_records(loop):
    """No answer can come first (the server's first token is an hour away): a time-out is the
    only end. On asyncio's own loop a timer fires no earlier than its delay after it was set,
    and the send time is read before the timer is set: never early, exactly. ``run_load`` runs
    on uvloop where it is installed, whose timers count from a millisecond clock read once per
    loop iteration, so there a time-out can come that much early: only the statuses are exact."""
    with FakeOpenAIServer(ttft_s=3600.0) as server:
        cfg = _cfg(server.url, num_requests=2, rate_rps=100, timeout_s=0.2)
        res = asyncio.run(run_load_async(cfg, progress=False)) if loop == "asyncio" else run_load(cfg, progress=False)
    assert [r.status for r in res.records] == ["timeout", "timeout"]
    assert all("timeout_s=0.2" in r.error and r.done_s > r.sent_s for r in res.records)
    if loop == "asyncio":
        assert all(r.e2e_uncorrected_s >= 0.2 - 1e-6 for r in res.records)  # never early


def test_hard_stop_cancels_what_is_left():
    """No answer comes (the server's first token is an hour away): the hard stop ends the run.

    The schedule runs 30 s and the hard stop comes at 0.5 s. Exact: every record is cancelled
    by one stop, never before 0.5 s; the records are the first requests of the schedule, each
    started no earlier than intended. Requests 0-9 are due before the stop and the loop starts
    due sends before it runs due timers, so at least 4 were started and, with 3 slots, at
    least one never went out. All 600 would be started only if the loop were held up for the
    29.5 s between the stop and the last intended send."""
    n = 600
    with FakeOpenAIServer(ttft_s=3600.0) as server:
        cfg = _cfg(server.url, num_requests=n, rate_rps=20, hard_stop_s=0.5, max_concurrency=3)
        res = asyncio.run(run_load_async(cfg, progress=False))  # asyncio's timers: never early (see above)
    recs = sorted(res.records, key=lambda r: r.request_id)
    assert {r.status for r in recs} == {"cancelled"} and 4 <= len(recs) < n
    assert [r.request_id for r in recs] == [f"req-{i:06d}" for i in range(len(recs))]
    assert len({r.done_s for r in recs}) == 1 and recs[0].done_s - res.start_s >= 0.5 - 1e-3
    assert all(r.scheduled_s <= r.sent_s <= r.done_s for r in recs)
    assert sum("before it was sent" in r.error for r in recs) >= 1


def test_unreachable_endpoint_fails_before_the_run(tmp_path):
    import socket

    with socket.socket() as held:  # bound, never listening: a connect is refused, and no one else can take the port
        held.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{held.getsockname()[1]}"
        with pytest.raises(LoadGenError, match="Cannot connect") as info:
            run_load(_cfg(url, records_path=str(tmp_path / "r.jsonl")), progress=False)
    assert info.value.url.endswith("/v1/completions")
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.parametrize(
    ("server_kw", "node", "replica", "timings"),
    [
        ({"attribution": "headers"}, "n-h", "r-h", {"engine_ttft_s": 0.1}),
        ({"attribution": "event"}, "n-h", "r-h", {"engine_ttft_s": 0.1}),
        ({"attribution": "both", "event_attribution": {"node_id": "n-e", "replica_id": "r-e",
                                                       "timings": {"engine_total_s": 0.2}}},
         "n-e", "r-e", {"engine_ttft_s": 0.1, "engine_total_s": 0.2}),
        ({"attribution": "none"}, None, None, {}),
    ],
)
def test_attribution_from_headers_and_final_event(server_kw, node, replica, timings):
    with FakeOpenAIServer(node_id="n-h", replica_id="r-h", timings={"engine_ttft_s": 0.1}, **server_kw) as server:
        res = run_load(_cfg(server.url, num_requests=2), progress=False)
    for r in res.records:
        assert (r.node_id, r.replica_id, r.server) == (node, replica, timings)


def test_sent_at_header_and_keep_alive(monkeypatch):
    # Idle connections are dropped after _IDLE_MAX_S; a machine that stalls the test for that long
    # between two requests would open a second one. Here no connection may age out.
    monkeypatch.setattr("labkit.load.runner._IDLE_MAX_S", 3600.0)
    with FakeOpenAIServer() as server:
        before = time.time()
        res = run_load(LoadConfig(url=server.url, model="m", arrival="closed", users=1, num_requests=20),
                       progress=False)
        after = time.time()
        assert len(server.sent_at) == 20 and all(before <= s <= after for s in server.sent_at)
        assert server.connections == 1  # the preflight connection, kept alive for all 20
    assert SERVER_HEADER_SENT_AT == "x-labkit-sent-at" and all(r.ok for r in res.records)


def test_model_is_asked_from_the_server_when_not_given():
    with FakeOpenAIServer(model="served-name") as server:
        res = run_load(_cfg(server.url, model=None, num_requests=2), progress=False)
    assert all(r.ok for r in res.records)


def test_closed_loop_keeps_n_users_busy():
    with FakeOpenAIServer(ttft_s=0.01, itl_s=0.002, output_tokens=3) as server:
        res = run_load(LoadConfig(url=server.url, model="m", arrival="closed", users=3, num_requests=15,
                                  warmup_requests=3), progress=False)
    assert len(res.records) == 18 and sum(r.warmup for r in res.records) == 3
    by_user: dict[int, list[RequestRecord]] = {}
    for r in res.records:
        by_user.setdefault(r.extra["user"], []).append(r)
    assert sorted(by_user) == [0, 1, 2]
    for recs in by_user.values():  # each user sends the next request when the previous is done
        recs.sort(key=lambda r: r.scheduled_s)
        for prev, nxt in zip(recs, recs[1:], strict=False):
            assert nxt.scheduled_s == prev.done_s and nxt.sent_s >= prev.done_s
    assert res.offered_rate_rps is None and res.achieved_rate_rps > 0


def test_warmup_is_flagged_and_left_out_of_stats():
    with FakeOpenAIServer(output_tokens=2) as server:
        res = run_load(_cfg(server.url, num_requests=6, warmup_requests=4), progress=False)
    assert [r.warmup for r in res.records].count(True) == 4
    assert len(res.measured) == 6
    summary = res.summary()
    assert summary.requests == 6 and summary.warmup_excluded == 4


def test_records_are_written_as_they_complete_and_read_back(tmp_path):
    path = tmp_path / "sub" / "records.jsonl"
    seen = []

    def on_record(record):
        seen.append(len(path.read_text().splitlines()))  # already on disk when the callback runs

    with FakeOpenAIServer(output_tokens=2) as server:
        res = run_load(_cfg(server.url, num_requests=5, records_path=str(path)), progress=False,
                       on_record=on_record)
    assert seen == [1, 2, 3, 4, 5]
    assert [r.to_dict() for r in read_records(path)] == [r.to_dict() for r in res.records]


def test_read_records_tolerates_a_truncated_last_line_only(tmp_path):
    rec = RequestRecord(request_id="a", scheduled_s=1.0, sent_s=1.0, done_s=2.0)
    line = json.dumps(rec.to_dict())
    path = tmp_path / "r.jsonl"
    path.write_text(line + "\n" + line[: len(line) // 2])
    assert len(read_records(path)) == 1
    path.write_text(line[: len(line) // 2] + "\n" + line + "\n")
    with pytest.raises(LoadGenError, match="Line 1"):
        read_records(path)
    with pytest.raises(LoadGenError, match="Cannot read"):
        read_records(tmp_path / "missing.jsonl")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_an_interrupted_run_leaves_a_readable_jsonl(tmp_path, sig):
    with FakeOpenAIServer(ttft_s=0.005, output_tokens=2) as server:
        cmd = [sys.executable, "-m", "labkit", "load", "--url", server.url, "--model", "m", "--arrival", "constant",
               "--rate", "100", "--duration", "3600", "--out", str(tmp_path), "--no-progress"]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        path = tmp_path / "records.jsonl"
        deadline = time.monotonic() + 300  # a hang guard: the 20 records take a few seconds with the start-up
        while (not path.exists() or path.read_text().count("\n") < 20) and proc.poll() is None:
            assert time.monotonic() < deadline, "no 20 records within 300 s"
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1][-2000:]  # still running: it was to last an hour
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=300)  # a hang guard: it stops at once
    records = read_records(path)
    assert len(records) >= 20
    assert all(r.status in ("ok", "cancelled") for r in records)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and b"interrupted" in err
        assert not (tmp_path / "summary.json").exists()


def test_run_load_works_inside_a_running_event_loop():
    """Jupyter runs an event loop: run_load must then run in a worker thread."""
    with FakeOpenAIServer(output_tokens=2) as server:
        async def notebook_cell():
            return run_load(_cfg(server.url, num_requests=3), progress=False)

        res = asyncio.run(notebook_cell())
    assert len(res.records) == 3 and all(r.ok for r in res.records)


def test_run_load_async_on_the_callers_loop():
    with FakeOpenAIServer(output_tokens=2) as server:
        res = asyncio.run(run_load_async(_cfg(server.url, num_requests=3), progress=False))
    assert isinstance(res, LoadResult) and len(res.records) == 3


def test_sweep_runs_each_rate_and_writes_a_file_per_rate(tmp_path):
    with FakeOpenAIServer(output_tokens=2) as server:
        results = run_sweep(_cfg(server.url, num_requests=4), [20, 40], records_path=str(tmp_path / "s.jsonl"),
                            progress=False)
    assert [r.config.rate_rps for r in results] == [20.0, 40.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.rate-20.jsonl", "s.rate-40.jsonl"]
    with pytest.raises(ConfigError):
        run_sweep(_cfg("http://h:1"), [])


def test_max_concurrency_holds_requests_back_and_records_their_lag():
    with FakeOpenAIServer(ttft_s=0.05, output_tokens=1) as server:
        res = run_load(_cfg(server.url, num_requests=6, rate_rps=200, max_concurrency=2), progress=False)
    lags = sorted(r.schedule_lag_s for r in res.records)
    # Exact: the third request (due at 10 ms) can only go once one of the first two is answered,
    # and the server answers no sooner than 50 ms after a request arrives: its lag is >= 40 ms.
    assert lags[-1] >= 0.04 - 1e-3 and lags[0] < lags[-1]


def test_a_burst_opens_connections_a_few_at_a_time(monkeypatch):
    """A burst must not open hundreds of connections at once (an accept-queue overflow turns
    into 1 s SYN retries): at most _MAX_CONNECTING are opening, the rest wait, none is lost.

    The server holds every answer until the 30th request arrives, so no connection comes free
    before all 30 are sent: the pool must grow to exactly one connection per request (the
    preflight connection and 29 new ones). If the client waited for an answer before sending
    the rest, the run would end at its hard stop (a hang guard) with cancelled records."""

    monkeypatch.setattr("labkit.load.runner._MAX_CONNECTING", 2)
    monkeypatch.setattr("labkit.load.runner._IDLE_MAX_S", 3600.0)  # the preflight connection stays usable
    most = []
    original = _Runner._connect

    def spy(self, req):
        original(self, req)
        most.append(self.connecting)

    monkeypatch.setattr(_Runner, "_connect", spy)
    n = 30
    with FakeOpenAIServer(output_tokens=1, stall_after_requests=1, stall_until_request=n) as server:
        res = run_load(_cfg(server.url, num_requests=n, rate_rps=100_000, hard_stop_s=300.0), progress=False)
        connections = server.connections
    assert [r.status for r in res.records] == ["ok"] * n
    assert max(most) <= 2
    assert connections == n


def test_result_views_are_json_ready():
    with FakeOpenAIServer(output_tokens=2, node_id="a") as server:
        res = run_load(_cfg(server.url, num_requests=3), progress=False)
    d = res.to_dict(include_records=True)
    json.dumps(d, allow_nan=False)
    assert d["requests"] == 3 and len(d["records"]) == 3
    assert "LoadResult(3 requests" in repr(res) and "<table>" in res._repr_html_()


# --------------------------------------------------------------------------- CLI
def test_cli_load_writes_records_summary_and_prints_a_table(tmp_path, capsys):
    with FakeOpenAIServer(ttft_s=0.005, output_tokens=3, node_id="n1") as server:
        code = main(["load", "--url", server.url, "--model", "m", "--arrival", "constant", "--rate", "50",
                     "--num-requests", "8", "--out", str(tmp_path), "--no-progress", "--slo-ttft", "1",
                     "--header", "X-Team: blue"])
    out = capsys.readouterr().out
    assert code == 0
    assert "p99" in out and "ttft" in out and "achieved" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["summary"]["requests"] == 8 and summary["summary"]["goodput"]["good"] == 8
    assert summary["run"]["config"]["headers"] == {"X-Team": "<redacted>"}
    assert len(read_records(tmp_path / "records.jsonl")) == 8


def test_cli_sweep(tmp_path, capsys):
    with FakeOpenAIServer(output_tokens=2) as server:
        code = main(["load", "--url", server.url, "--model", "m", "--sweep", "20,40", "--num-requests", "3",
                     "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    assert len(json.loads((tmp_path / "summary.json").read_text())["sweep"]) == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["--arrival", "closed", "--num-requests", "3"],  # no --users
        ["--rate", "5"],  # neither --num-requests nor --duration
        ["--rate", "5", "--num-requests", "2", "--header", "no-colon"],
    ],
)
def test_cli_bad_values_exit_with_the_labkit_error_code(argv, tmp_path, capsys):
    code = main(["load", "--url", "http://127.0.0.1:9", "--out", str(tmp_path), *argv])
    assert code == EXIT_LABKIT_ERROR
    assert "error:" in capsys.readouterr().err


# --------------------------------------------------------------------------- progress, fallbacks
@pytest.mark.parametrize("tqdm_installed", [True, False])
def test_progress_bar_is_optional(tqdm_installed, monkeypatch, capsys):
    if not tqdm_installed:
        for name in ("tqdm", "tqdm.auto"):
            monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    with FakeOpenAIServer(output_tokens=2) as server:
        res = run_load(_cfg(server.url, num_requests=5), progress=True)
    assert len(res.records) == 5
    err = capsys.readouterr().err
    assert ("5/5" in err) == tqdm_installed


@pytest.mark.parametrize("timerfd", [True, False])
def test_schedule_is_kept_with_and_without_timerfd(timerfd, monkeypatch):
    """Where no timerfd exists (not Linux) the loop's timers plus a short spin keep the schedule.

    Exact: every scheduled request is sent once, at its intended time or later, never early.
    With a timerfd the scheduler wakes at most twice per send: each wake-up either starts a due
    request or is the one stale timerfd event left behind when a send that fell due between two
    responses was started from the response handler. Without a timerfd the number of wake-ups
    is the cost of the spin, which depends on the machine; the schedule lag in both modes and
    that cost are measured side by side in benchmarks/bench_load_timing.py."""
    if not timerfd:
        monkeypatch.setattr("labkit.load.schedule._TimerFd.create", classmethod(lambda cls, loop, callback: None))

    ticks = []
    original = _Runner._tick

    def counting_tick(self):
        ticks.append(1)
        original(self)

    monkeypatch.setattr(_Runner, "_tick", counting_tick)
    n, rate = 40, 200.0
    with FakeOpenAIServer(output_tokens=2) as server:
        res = run_load(_cfg(server.url, num_requests=n, rate_rps=rate), progress=False)
    recs = sorted(res.records, key=lambda r: r.request_id)
    assert [r.status for r in recs] == ["ok"] * n
    assert [r.request_id for r in recs] == [f"req-{i:06d}" for i in range(n)]  # every scheduled request, once
    assert [r.scheduled_s for r in recs] == pytest.approx([res.start_s + i / rate for i in range(n)], abs=1e-9)
    assert all(r.schedule_lag_s >= 0 for r in recs)  # never early
    assert [r.sent_s for r in recs] == sorted(r.sent_s for r in recs)  # sent in schedule order
    if timerfd:
        assert len(ticks) <= 2 * n + 1
