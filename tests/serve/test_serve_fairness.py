"""Serving fairly under abuse (issue 29), against a real server on 127.0.0.1: callers take turns at the batchers,
caller text is quoted within bounds in errors and logs, error lines are rate-limited per caller, and idle or slow
connections are closed."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import io
import json
import logging
import socket
import threading
import time

import grpc
import numpy as np
import pytest
from serve_helpers import (  # noqa: F401 - fixtures
    ServerThread,
    latents,
    one_torch_thread,
    same_images,
    tiny_rt,
    u8,
    until,
)

from alae_rt.serve.client import AlaeClient, AsyncAlaeClient, RemoteError
from alae_rt.serve.config import ServeConfig
from alae_rt.serve.logs import ERROR_BURST, ERROR_LINES_PER_S, LOGGER, JsonFormatter

HEADER_S = 1.0  # the module server's --http-header-timeout-s
CFG = ServeConfig(port=0, http_port=0, max_images=16, max_queue=256, max_delay_ms=5, workers=2, image_workers=1,
                  metrics_port=0, codec_processes=0, http_header_timeout_s=HEADER_S, http_max_connections=100)
BIG = 1_000_000  # characters of caller text
BOUND = 4096  # bytes: an error body, and the log's growth, per such request


@pytest.fixture(scope="module")
def server(tiny_rt):
    with ServerThread(tiny_rt, CFG) as s:
        yield s


# ---- callers in turn at the batchers ------------------------------------------------------------------------------


def test_a_small_caller_is_served_between_heavy_callers_and_every_answer_is_its_lone_answer(server, tiny_rt):
    """Three connections queue Generate(16) each (12 batches of 4 on the tiny model) while the compute thread is
    held, then a fourth asks for Generate(1): each connection is a caller of its own and the newcomer's turn is next
    (first come, first served put it behind all 48 rows), and every answer equals the Runtime's own, rows complete
    and in order though cut into slices of one or two."""
    rt, decoder = tiny_rt, server.server.service.decode_batcher
    heavy_seeds = [list(range(100 * k, 100 * k + 16)) for k in range(1, 4)]

    async def body():
        clients = [AsyncAlaeClient(server.address, timeout=60) for _ in range(4)]  # a connection each
        try:
            gate = server.hold_compute()
            try:
                heavy = [asyncio.ensure_future(c.generate(seeds=s)) for c, s in zip(clients[1:], heavy_seeds)]
                await asyncio.to_thread(until, lambda: decoder.pending == 48)
                before = decoder.turns
                small = asyncio.ensure_future(clients[0].generate(seeds=[7]))
                await asyncio.to_thread(until, lambda: decoder.pending == 49)
                after = decoder.turns
            finally:
                gate.set()
            return await small, await asyncio.gather(*heavy), before, after
        finally:
            for c in clients:
                await c.close()

    small, heavy, before, after = asyncio.run(body())
    assert len(set(before)) == 3 and after[1:] == before and after[0] not in before  # the newcomer goes first
    same_images(small.images, u8(rt, rt.generate(seeds=[7], noise="const")))
    for seeds, result in zip(heavy_seeds, heavy):
        same_images(result.images, u8(rt, rt.generate(seeds=seeds, noise="const")))


def test_callers_are_told_apart_by_token_where_auth_is_on(tiny_rt):
    """With --auth-token-file, a caller's turn is its token's (more connections buy no more turns); without one,
    its connection's."""
    from concurrent.futures import ThreadPoolExecutor

    from alae_rt.serve.metrics import Metrics
    from alae_rt.serve.service import AlaeService, CallContext

    tokens = ("a" * 16, "b" * 16)
    with ThreadPoolExecutor(1) as pool:
        authed = AlaeService(tiny_rt, ServeConfig(auth_tokens=tokens), Metrics(), pool, pool, pool)
        open_ = AlaeService(tiny_rt, ServeConfig(), Metrics(), pool, pool, pool)
        assert authed._caller(CallContext("ipv4:127.0.0.1:1", authorization=f"Bearer {tokens[1]}")) == "token 1"
        assert authed._caller(CallContext("ipv4:127.0.0.1:2", authorization=f"Bearer {tokens[1]}")) == "token 1"
        assert authed._caller(CallContext("ipv4:127.0.0.1:3", authorization="Bearer wrong")) == "ipv4:127.0.0.1:3"
        assert open_._caller(CallContext("ipv4:127.0.0.1:4", authorization=f"Bearer {tokens[0]}")) == \
            "ipv4:127.0.0.1:4"


# ---- caller text bounded in errors and logs -----------------------------------------------------------------------


@contextlib.contextmanager
def server_log():
    """The server's log lines (JSON, as `alae-rt serve` writes them) while the block runs: a list of strings."""
    lines: list[str] = []

    class Lines(logging.Handler):
        def emit(self, record):
            lines.append(self.format(record))

    handler = Lines()
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(LOGGER)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def post(s: ServerThread, path: str, body: bytes, source: str = "127.0.0.1",
         kind: str = "application/json") -> tuple[int, bytes]:
    """(status, body) of a POST to the HTTP API, sent from `source` (another loopback address is another caller)."""
    conn = http.client.HTTPConnection("127.0.0.1", s.server.http_port, timeout=60, source_address=(source, 0))
    try:
        conn.request("POST", path, body, {"Content-Type": kind})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def latents_json(n: int = 1) -> dict:
    arr = latents(n)
    return {"shape": list(arr.shape), "data": base64.b64encode(arr.astype("<f4").tobytes()).decode()}


EDIT = {"source": {"latents": latents_json()}, "edits": [{"name": "up", "strength": 1.0}]}
# Requests whose error quotes caller text: a direction name (of plain or of escaped characters), an enum value, a
# psi given as a string, a field that does not exist. Each holds a million characters of it.
HOSTILE = {
    "name": ("/api/v1/edit", {**EDIT, "edits": [{"name": "n" * BIG, "strength": 1.0}]}),
    "name of U+FFFF": ("/api/v1/edit", {**EDIT, "edits": [{"name": "\uffff" * BIG, "strength": 1.0}]}),
    "enum value": ("/api/v1/generate", {"seeds": [1], "noise": {"mode": "M" * BIG}}),
    "string psi": ("/api/v1/generate", {"seeds": [1], "truncation_psi": "0.7x" * (BIG // 4)}),
    "unknown field": ("/api/v1/generate", {"seeds": [1], "f" * BIG: 1}),
}


@pytest.mark.parametrize("what", list(HOSTILE))
def test_a_million_characters_of_caller_text_make_a_bounded_error_and_log_line(server, what):
    """Issue 29: a 1 MB direction name once gave a 1 MB error body and a 1 MB log line (U+FFFF names 7 MB of log
    per 3 MB request, escaped); now the message quotes ~100 characters with the length, and still names the field."""
    path, body = HOSTILE[what]
    with server_log() as lines:
        status, answer = post(server, path, json.dumps(body, ensure_ascii=False).encode())
    message = json.loads(answer)["message"]
    assert status == 400 and len(answer) <= BOUND, (status, len(answer))
    assert sum(len(line.encode()) + 1 for line in lines) <= BOUND
    assert len(lines) <= 1 and "characters" in message  # says it was cut
    if what.startswith("name"):
        assert message.startswith("edits[0].name: unknown direction") and f"... ({BIG} characters); known: layered, " \
            "up" in message
    else:  # a parser's message, cut in the middle
        assert message.startswith("request: not a valid alae_rt.v1.GenerateRequest JSON message")


def test_a_long_name_over_grpc_is_quoted_within_bounds(server):
    with AlaeClient(server.address, timeout=60) as c, server_log() as lines:
        with pytest.raises(RemoteError) as err:
            c.edit(latents(1), {"x" * BIG: 1.0})
    assert err.value.code.name == "INVALID_ARGUMENT" and len(err.value.details.encode()) <= BOUND
    assert f"... ({BIG} characters); known: layered, up" in err.value.details
    assert sum(len(line.encode()) + 1 for line in lines) <= BOUND


def test_error_lines_are_rate_limited_per_caller_and_the_dropped_are_counted(server):
    """A caller looping on bad calls writes a burst of error lines, then about one a second; the rest are counted
    in alae_rt_log_lines_dropped_total, and its next line written says how many went before it. Another caller
    (another address) still gets its line, and good calls are logged as ever."""
    bad = json.dumps({"seeds": [1], "truncation_psi": 9.0}).encode()  # psi out of range: INVALID_ARGUMENT
    n = ERROR_BURST + 30
    dropped0 = server.metric("alae_rt_log_lines_dropped_total")
    with server_log() as lines:
        t0 = time.monotonic()
        for _ in range(n):
            assert post(server, "/api/v1/generate", bad)[0] == 400
        elapsed = time.monotonic() - t0
        flood = [json.loads(line) for line in lines if '"rpc"' in line]
        assert post(server, "/api/v1/generate", bad, source="127.0.0.2")[0] == 400
        assert post(server, "/api/v1/generate", json.dumps({"seeds": [1]}).encode())[0] == 200
    dropped = server.metric("alae_rt_log_lines_dropped_total") - dropped0
    assert len(flood) + dropped == n
    assert len(flood) <= ERROR_BURST + (elapsed + 1) * ERROR_LINES_PER_S
    after = [json.loads(line) for line in lines if '"rpc"' in line][len(flood):]
    assert [(e["peer"].startswith("ipv4:127.0.0.2:"), e["code"]) for e in after] == [
        (True, "INVALID_ARGUMENT"), (False, "OK")]


def test_the_line_limit_is_a_bucket_per_caller_with_bounded_memory():
    from alae_rt.serve.logs import LineLimit

    now = [0.0]
    limit = LineLimit(burst=3, per_s=0.5, max_callers=2, clock=lambda: now[0])
    assert [limit.take("a") for _ in range(5)] == [(True, 0)] * 3 + [(False, 0)] * 2
    assert limit.take("b") == (True, 0)  # another caller has its own bucket
    now[0] = 2.0  # one line's worth refilled
    assert limit.take("a") == (True, 2) and limit.take("a") == (False, 0)  # and it says what was dropped
    limit.take("c")  # a third caller: the one idle longest ("b") is forgotten
    assert set(limit._buckets) == {"a", "c"}


def test_log_fields_are_bounded():
    """Whatever a field holds, a JSON log line stays within bounds (and says how long the text was)."""
    record = logging.LogRecord(LOGGER, logging.WARNING, __file__, 1, "rpc", None, None)
    record.fields = {"error": "\uffff" * BIG, "method": "Edit"}
    line = JsonFormatter().format(record)
    assert len(line) < 7 * 1000 + 200 and f"({BIG} characters)" in json.loads(line)["error"]


# ---- idle, slow and too many connections ---------------------------------------------------------------------


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes `sock` within `seconds` (whatever it sends first, e.g. a 503, is read; a reset,
    as when bytes it never read were in flight, is a close too)."""
    sock.settimeout(max(seconds, 0.01))
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return False


def test_idle_and_dripping_sockets_are_closed_within_the_header_timeout_and_good_calls_go_on(server):
    """Issue 29: 64 sockets that sent nothing, or dripped a request head a byte at a time, stayed open for good.
    Now each is closed once --http-header-timeout-s passes without a complete head, while a well-behaved caller's
    calls all succeed meanwhile."""
    port = server.server.http_port
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(32)]
    drip = [socket.create_connection(("127.0.0.1", port)) for _ in range(32)]
    closed0 = server.metric("alae_rt_http_connections_closed_total", reason="header_timeout")
    stop = threading.Event()

    def dripping():
        head = b"POST /api/v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Slow: " + b"a" * 1000
        for byte in head:
            if stop.is_set():
                return
            for sock in drip:
                with contextlib.suppress(OSError):
                    sock.send(bytes([byte]))
            time.sleep(0.05)

    dripper = threading.Thread(target=dripping)
    t0 = time.monotonic()
    dripper.start()
    try:
        good = [post(server, "/api/v1/generate", json.dumps({"seeds": [i]}).encode())[0] for i in range(3)]
        closed = [_closed_within(sock, HEADER_S + 5 - (time.monotonic() - t0)) for sock in idle + drip]
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
        dripper.join()
        for sock in idle + drip:
            sock.close()
    assert good == [200, 200, 200]
    assert all(closed) and elapsed < HEADER_S + 5, (sum(closed), elapsed)
    assert server.metric("alae_rt_http_connections_closed_total", reason="header_timeout") - closed0 == 64


@pytest.fixture(scope="module")
def strict_server(tiny_rt):
    """Few connections, short timeouts, no warm-up (these tests need no model)."""
    cfg = ServeConfig(port=0, http_port=0, metrics_port=0, warmup=False, codec_processes=0, http_max_connections=4,
                      http_header_timeout_s=60, http_body_timeout_s=0.5, grpc_max_connection_idle_s=0.5,
                      grpc_handshake_timeout_s=0.5)
    with ServerThread(tiny_rt, cfg, wait_ready=False) as s:
        yield s


def test_a_connection_over_the_cap_gets_503_and_is_closed(strict_server):
    s, port = strict_server, strict_server.server.http_port
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
    try:
        until(lambda: s.metric("alae_rt_http_connections") == 4)
        extra = socket.create_connection(("127.0.0.1", port))
        extra.settimeout(10)
        answer = b""
        while chunk := extra.recv(4096):
            answer += chunk
        extra.close()
        assert answer.startswith(b"HTTP/1.1 503 ") and s.metric("alae_rt_http_connections_closed_total",
                                                                 reason="max_connections") >= 1
        held.pop().close()
        until(lambda: s.metric("alae_rt_http_connections") == 3)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/api/v1/health")
        assert conn.getresponse().status in (200, 503)  # answered (health says what the warm-up says)
        conn.close()
    finally:
        for sock in held:
            sock.close()


def test_a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_closes(strict_server):
    sock = socket.create_connection(("127.0.0.1", strict_server.server.http_port))
    try:
        sock.sendall(b"POST /api/v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"seeds\"")
        sock.settimeout(10)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 408 ") and b"--http-body-timeout-s" in answer


def test_grpc_closes_idle_connections_and_unfinished_handshakes(strict_server):
    """--grpc-max-connection-idle-s: a connection without calls gets GOAWAY (the channel goes idle, and reconnects
    for its next call); --grpc-handshake-timeout-s: a socket that never speaks HTTP/2 is closed."""
    raw = socket.create_connection(("127.0.0.1", strict_server.server.port))
    try:
        assert _closed_within(raw, 10)
    finally:
        raw.close()
    with grpc.insecure_channel(strict_server.address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        info = ch.unary_unary("/alae_rt.v1.Alae/GetModelInfo")
        assert info(b"", timeout=30)  # connected, one call
        states: list[grpc.ChannelConnectivity] = []
        ch.subscribe(states.append)
        until(lambda: grpc.ChannelConnectivity.IDLE in states[1:], timeout=15)
        assert info(b"", timeout=30)  # reconnects


def test_the_connection_options_reach_the_config_and_a_bad_one_is_named():
    from alae_rt.cli import build_parser
    from alae_rt.cli.serve import connection_settings
    from alae_rt.errors import AlaeError

    args = build_parser("serve").parse_args(["serve", "--http-header-timeout-s", "2.5", "--http-max-connections", "9",
                                              "--grpc-max-connection-age-s", "600"])
    cfg = ServeConfig(**connection_settings(args))
    assert (cfg.http_header_timeout_s, cfg.http_max_connections, cfg.http_idle_s) == (2.5, 9, 60.0)
    assert ("grpc.max_connection_age_ms", 600_000) in cfg.grpc_options
    with pytest.raises(AlaeError, match=r"^--http-header-timeout-s must be in \(0, 86400\] seconds, got 0$"):
        ServeConfig(http_header_timeout_s=0).check(1)
