"""The dynamic batcher on its own: merging, splitting, grouping by key, the queue bound and a free event loop."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from alae_rt.serve.batcher import BatchStats, DynamicBatcher, QueueFull


class Recorder:
    """fn of the batcher: rows * 10 + the key, and a record of every batch (key, sizes of its slices)."""

    def __init__(self, gate: threading.Event | None = None):
        self.batches: list[tuple[object, list[int]]] = []
        self.gate = gate

    def __call__(self, key, inputs):
        if self.gate is not None:
            self.gate.wait(30)
        self.batches.append((key, [t.shape[0] for t in inputs[0]]))
        return torch.cat(inputs[0]) * 10 + key


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def rows(start: int, n: int) -> torch.Tensor:
    return torch.arange(start, start + n, dtype=torch.float32)[:, None]  # [n, 1]


async def with_batcher(fn, body, **kw):
    opts = {"max_batch": 4, "max_delay_s": 0.05, "max_queue": 64}
    opts.update(kw)
    with ThreadPoolExecutor(1) as pool:
        b = DynamicBatcher("test", fn, pool, **opts)
        b.start()
        try:
            return await body(b)
        finally:
            await b.close()


def test_merges_callers_splits_large_requests_and_returns_each_its_own_rows():
    gate = threading.Event()
    rec = Recorder(gate)
    sizes = [1, 3, 6, 2, 1]  # 13 rows: batches of 4 cut through the requests

    async def body(b):
        starts = [sum(sizes[:i]) * 100 for i in range(len(sizes))]
        tasks = [asyncio.ensure_future(b.run(0, [rows(s, n)])) for s, n in zip(starts, sizes)]
        gate.set()
        return starts, await asyncio.gather(*tasks)

    starts, outs = run(with_batcher(rec, body, max_delay_s=0.01))
    for s, n, out in zip(starts, sizes, outs):
        assert torch.equal(out, rows(s, n) * 10)
    # All five were queued before the loop ran: full batches, cut through the requests (6 = 4 + 2).
    assert [parts for _, parts in rec.batches] == [[1, 3], [4], [2, 2], [1]]


def test_groups_by_key_and_never_mixes_keys():
    rec = Recorder()

    async def body(b):
        tasks = [asyncio.ensure_future(b.run(k, [rows(i * 10, 2)])) for i, k in enumerate([1, 2, 1, 2, 1])]
        return await asyncio.gather(*tasks)

    outs = run(with_batcher(rec, body))
    for i, (k, out) in enumerate(zip([1, 2, 1, 2, 1], outs)):
        assert torch.equal(out, rows(i * 10, 2) * 10 + k)
    assert sorted((k, sum(p)) for k, p in rec.batches) == [(1, 2), (1, 4), (2, 4)]


def test_bounded_queue_raises_queue_full():
    gate = threading.Event()

    async def body(b):
        first = asyncio.ensure_future(b.run(0, [rows(0, 4)]))  # a full batch: taken at once
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(b.run(0, [rows(10, 5)]))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await b.run(0, [rows(20, 2)])  # 5 + 2 > 6
        gate.set()
        return await first, await waiting

    first, waiting = run(with_batcher(Recorder(gate), body, max_queue=6))
    assert torch.equal(waiting, rows(10, 5) * 10)


def test_cancelled_and_expired_requests_are_dropped_before_compute():
    gate = threading.Event()
    rec = Recorder(gate)
    dropped = []

    async def body(b):
        loop = asyncio.get_running_loop()
        blocker = asyncio.ensure_future(b.run(0, [rows(0, 4)]))
        await asyncio.sleep(0.05)
        cancelled = asyncio.ensure_future(b.run(0, [rows(100, 2)]))
        expired = asyncio.ensure_future(b.run(0, [rows(200, 2)], deadline=loop.time() + 0.01))
        kept = asyncio.ensure_future(b.run(0, [rows(300, 1)]))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        gate.set()
        await blocker
        with pytest.raises(Exception, match="deadline passed"):
            await expired
        return await kept

    kept = run(with_batcher(rec, body, stats=BatchStats(on_drop=lambda r, n: dropped.append((r, n)))))
    assert torch.equal(kept, rows(300, 1) * 10)
    assert sorted(dropped) == [("cancelled", 2), ("deadline", 2)]
    assert [sum(p) for _, p in rec.batches] == [4, 1]  # the dropped rows never reached compute


def test_the_event_loop_runs_while_a_batch_computes():
    """fn blocks until the loop has ticked: with a blocked loop this would deadlock (and time out)."""
    ticked = threading.Event()

    def fn(key, inputs):
        assert ticked.wait(10), "the event loop did not run while the batch computed"
        return torch.cat(inputs[0])

    async def body(b):
        task = asyncio.ensure_future(b.run(0, [rows(0, 2)]))
        for _ in range(20):
            await asyncio.sleep(0.005)
        ticked.set()
        return await task

    assert torch.equal(run(with_batcher(fn, body)), rows(0, 2))


def test_an_error_in_a_batch_reaches_every_caller_in_it():
    def fn(key, inputs):
        raise RuntimeError("boom")

    async def body(b):
        return await asyncio.gather(b.run(0, [rows(0, 1)]), b.run(0, [rows(1, 1)]), return_exceptions=True)

    outs = run(with_batcher(fn, body))
    assert all(isinstance(o, RuntimeError) and str(o) == "boom" for o in outs)


def test_no_batching_delay_when_no_other_request_can_join():
    """max_delay is 30 s, but may_grow says every caller is already queued: the batch starts at once."""

    async def body(b):
        return await asyncio.wait_for(b.run(0, [rows(0, 1)]), 10)

    out = run(with_batcher(Recorder(), body, max_delay_s=30, may_grow=lambda: False))
    assert torch.equal(out, rows(0, 1) * 10)


# ---- callers in turn ----------------------------------------------------------------------------------------------


def test_callers_take_turns_a_slice_each_and_a_small_caller_waits_about_one_batch():
    """Three callers queue 12 rows each, then a fourth queues 1: the newcomer is in the next batch (not behind
    the 36 rows before it), the others take the batches in turn, and each caller gets exactly its rows, in
    order."""
    gate = threading.Event()
    seen: list[list[int]] = []

    def fn(key, inputs):
        gate.wait(30)
        seen.append([int(t[0, 0]) // 1000 for t in inputs[0]])  # the caller of each slice (its rows' thousands)
        return torch.cat(inputs[0]) * 10

    async def body(b):
        blocker = asyncio.ensure_future(b.run(0, [rows(9000, 4)], caller="blocker"))  # holds the compute thread
        await asyncio.sleep(0.05)
        heavy = [asyncio.ensure_future(b.run(0, [rows(1000 * (c + 1), 12)], caller=c)) for c in range(3)]
        await asyncio.sleep(0.01)
        small = asyncio.ensure_future(b.run(0, [rows(0, 1)], caller="small"))
        await asyncio.sleep(0.01)
        gate.set()
        await blocker
        return await small, await asyncio.gather(*heavy)

    small, heavy = run(with_batcher(fn, body))
    assert torch.equal(small, rows(0, 1) * 10)
    for c, out in enumerate(heavy):
        assert torch.equal(out, rows(1000 * (c + 1), 12) * 10)  # complete and in order, from 12 slices
    # The blocker's batch, then the small caller's (first come, first served put it in the 11th), filled by the
    # next in line; then a slice of each heavy caller in turn (the first served goes to the back).
    assert seen[:5] == [[9], [0, 1], [2], [3], [1]]
    assert len(seen) == 11


def test_newcomers_go_first_the_fewest_rows_first_and_turns_rotate():
    """Callers new to the queue go before those served already, the one with the fewest rows first; a caller
    served goes to the back of the line, and a batch's room left by one caller goes to the next."""
    gate = threading.Event()
    seen: list[list[int]] = []

    def fn(key, inputs):
        gate.wait(30)
        seen.append([int(t[0, 0]) // 100 for t in inputs[0]])  # the caller of each slice (its rows' hundreds)
        return torch.cat(inputs[0])

    async def body(b):
        blocker = asyncio.ensure_future(b.run(0, [rows(9900, 6)], caller="blocker"))
        await asyncio.sleep(0.05)
        tasks = {}
        for c, n in ((2, 10), (3, 10), (1, 1)):  # in this order
            tasks[c, n] = asyncio.ensure_future(b.run(0, [rows(c * 100, n)], caller=c))
            await asyncio.sleep(0.01)
        gate.set()
        await blocker
        return {k: await t for k, t in tasks.items()}

    outs = run(with_batcher(fn, body, max_batch=6))
    for (c, n), out in outs.items():
        assert torch.equal(out, rows(c * 100, n))
    # 1 first (1 row), then 2 fills the batch; 3 has not been served, so it goes before 2; then 2's last 5 rows
    # and one of 3's; then 3's last 3.
    assert seen[1:] == [[1, 2], [3], [2, 3], [3]]
