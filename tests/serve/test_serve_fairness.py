"""Serving fairly under abuse (issue 29), against a real server on 127.0.0.1: callers take turns at the batchers,
caller text is quoted within bounds in errors and logs, error lines are rate-limited per caller, and idle or slow
connections are closed."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from serve_helpers import ServerThread, one_torch_thread, same_images, tiny_rt, u8  # noqa: F401 - fixtures

from alae_rt.serve.client import AsyncAlaeClient
from alae_rt.serve.config import ServeConfig

CFG = ServeConfig(port=0, max_images=16, max_queue=256, max_delay_ms=5, workers=2, image_workers=1, metrics_port=0,
                  codec_processes=0)


@pytest.fixture(scope="module")
def server(tiny_rt):
    with ServerThread(tiny_rt, CFG) as s:
        yield s


def _until(cond, timeout: float = 30) -> None:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "condition not reached"
        time.sleep(0.005)


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
                await asyncio.to_thread(_until, lambda: decoder.pending == 48)
                before = decoder.turns
                small = asyncio.ensure_future(clients[0].generate(seeds=[7]))
                await asyncio.to_thread(_until, lambda: decoder.pending == 49)
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
