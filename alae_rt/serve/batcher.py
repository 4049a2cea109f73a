"""The dynamic batcher: merges requests from many callers into batches of at most max_batch items."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import torch
from torch import Tensor

from alae_rt.streams import device_stream

# One request's inputs: tensors with the batch on axis 0 (n items each), or None where a slot is unused.
Inputs = Sequence[Tensor | None]
# fn(key, inputs) runs one batch in the compute thread: every input is a list of the callers' slices, in order.
BatchFn = Callable[[Hashable, list[list[Tensor | None]]], Tensor]
DEADLINE_SLACK_S = 0.05  # a call cancelled this close to its deadline (as the loop reckons it) timed out


def _join(parts: list[Tensor]) -> Tensor:
    """One request's rows from several batches, joined on the thread's own stream (and complete when returned), not
    behind the compute thread's next batch."""
    with device_stream(parts[0].device):
        return torch.cat(parts)


class QueueFull(Exception):
    """The batcher's queue holds max_queue items already."""


class Dropped(Exception):
    """A request was dropped before compute: its deadline passed."""


@dataclass
class _Entry:
    key: Hashable
    inputs: Inputs
    n: int
    future: asyncio.Future
    deadline: float | None  # loop time, or None for no deadline
    enqueued: float
    taken: int = 0  # items handed to batches so far
    done: int = 0  # items whose results came back
    parts: list[tuple[int, Tensor]] = field(default_factory=list)


@dataclass
class BatchStats:
    """Callbacks the server's metrics hang on (all optional)."""

    on_batch: Callable[[int, float], None] | None = None  # (batch size, seconds of compute)
    on_drop: Callable[[str, int], None] | None = None  # (reason, items)
    on_depth: Callable[[int], None] | None = None  # items waiting


class DynamicBatcher:
    """Merges requests of the same key into batches of at most `max_batch` items and runs them in `executor`.

    A batch starts when it is full or when its oldest request has waited `max_delay_s`. A request larger than
    max_batch is split over several batches (and a batch may end with part of a request); each caller gets
    exactly its own rows back, in order. Requests whose future was cancelled (the caller gave up) or whose
    deadline passed are dropped before compute. The event loop only slices views: concatenation, compute and
    the copy back to the CPU happen in `fn`, in the executor.

    Callers (a connection, or an authenticated identity: whatever `run` is given as `caller`) take turns, as image
    decoding does (alae_rt.serve.decoding): a batch is filled by the callers in turn order, each with a slice of its
    rows of the batch's key (as many as are left, up to the room), and those served go to the back of the line; a
    caller new to the queue goes to the front, behind only the newcomers not yet served with fewer rows than it.
    So a caller's share of the model is a turn, not its image count: a small request waits for about one batch
    however many rows others have queued. One caller's requests go oldest first. (Turns of a whole slice, rather
    than each batch shared out evenly: equal shares made every heavy caller's request end in the same batch, and
    the compute thread then idled while they all sent their next ones.)
    """

    def __init__(self, name: str, fn: BatchFn, executor: Executor, *, max_batch: int, max_delay_s: float,
                 max_queue: int, stats: BatchStats | None = None, may_grow: Callable[[], bool] | None = None):
        if max_batch < 1 or max_queue < 1 or max_delay_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_delay_s >= 0")
        self.name = name
        self.fn = fn
        self.executor = executor
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.stats = stats or BatchStats()
        # may_grow() False: no other request could join soon (every caller the server has is waiting already),
        # so a batch starts without waiting out max_delay: one caller alone pays no batching delay.
        self.may_grow = may_grow
        # Each caller's requests, oldest first; the callers in turn order (the next batch's first is the first).
        self._callers: collections.OrderedDict[Hashable, collections.deque[_Entry]] = collections.OrderedDict()
        self._new: set[Hashable] = set()  # callers not served since they joined the queue
        self._queued = 0  # items waiting, not yet handed to a batch
        self._running = 0  # items in the batch being computed
        self._running_requests = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None

    @property
    def queued(self) -> int:
        """Items waiting for a batch."""
        return self._queued

    @property
    def pending(self) -> int:
        """Items waiting or being computed."""
        return self._queued + self._running

    @property
    def requests(self) -> int:
        """Requests with items waiting or being computed."""
        return sum(len(q) for q in self._callers.values()) + self._running_requests

    @property
    def turns(self) -> list[Hashable]:
        """The callers with items waiting, in the order of their turns (the next batch's first is the first)."""
        return list(self._callers)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    async def close(self) -> None:
        """Stop batching; requests still waiting fail with CancelledError."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for queue in self._callers.values():
            for entry in queue:
                entry.future.cancel()
        self._callers.clear()
        self._new.clear()
        self._set_depth(0)

    async def run(self, key: Hashable, inputs: Inputs, deadline: float | None = None,
                  caller: Hashable = None) -> Tensor:
        """Queue one request (inputs with n items on axis 0) of `caller` and wait for its n rows of output."""
        n = next(t.shape[0] for t in inputs if t is not None)
        if self._queued + n > self.max_queue:
            raise QueueFull(f"the {self.name} queue is full ({self._queued} of {self.max_queue} images waiting)")
        loop = asyncio.get_running_loop()
        entry = _Entry(key, inputs, n, loop.create_future(), deadline, loop.time())
        if caller in self._callers:
            self._callers[caller].append(entry)
        else:
            self._callers[caller] = collections.deque([entry])
            self._new.add(caller)
            self._line_up()
        self._set_depth(self._queued + n)
        self._wakeup.set()
        # A caller that gives up cancels this await, and so the future: the loop then skips the entry.
        parts = await entry.future
        if len(parts) == 1:
            return parts[0]
        # Not in `executor`: joining the parts must not wait behind the next batch.
        return await loop.run_in_executor(None, _join, parts)

    # ---- the loop -------------------------------------------------------------------------------------------
    def _line_up(self) -> None:
        """Callers new to the queue go first, the fewest rows first (the smallest waits least; equal ones in the
        order they came), then the callers served already, in turn order."""
        new = sorted((c for c in self._callers if c in self._new),
                     key=lambda c: sum(e.n - e.taken for e in self._callers[c]))
        served = [c for c in self._callers if c not in self._new]
        self._callers = collections.OrderedDict((c, self._callers[c]) for c in new + served)

    def _set_depth(self, value: int) -> None:
        self._queued = value
        if self.stats.on_depth:
            self.stats.on_depth(value)

    def _prune(self, now: float) -> None:
        """Drop the items of cancelled or expired requests that are still waiting."""
        for caller in list(self._callers):
            queue = self._callers[caller]
            kept = collections.deque()
            for entry in queue:
                left = entry.n - entry.taken
                # The deadline first: gRPC also cancels a call whose deadline passed - at that moment as gRPC keeps
                # time, which the loop-time deadline (taken from time_remaining() when the call began) can trail a
                # little: a cancelled call that close to its deadline has timed out.
                expired = entry.deadline is not None and now >= entry.deadline - (
                    DEADLINE_SLACK_S if entry.future.cancelled() else 0.0)
                if expired:
                    if not entry.future.done():
                        entry.future.set_exception(Dropped(f"deadline passed after {now - entry.enqueued:.3f} s "
                                                           "in the queue"))
                    self._drop(entry, "deadline", left)
                elif entry.future.done():  # cancelled by its caller (or failed in an earlier batch)
                    self._drop(entry, "cancelled", left)
                else:
                    kept.append(entry)
            if kept:
                self._callers[caller] = kept
            else:
                del self._callers[caller]
                self._new.discard(caller)

    def _drop(self, entry: _Entry, reason: str, items: int) -> None:
        self._set_depth(self._queued - items)
        entry.taken = entry.n
        if self.stats.on_drop and items:
            self.stats.on_drop(reason, items)

    def _entries(self, key: Hashable) -> list[_Entry]:
        """The requests of `key` waiting, callers in turn order, each caller's oldest first."""
        return [e for queue in self._callers.values() for e in queue if e.key == key]

    def _waiting(self, key: Hashable) -> int:
        return sum(e.n - e.taken for e in self._entries(key))

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._prune(loop.time())
            if not self._callers:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # The batch is of the key of the oldest request of the caller whose turn it is.
            key = next(iter(self._callers.values()))[0].key
            oldest = min(e.enqueued for e in self._entries(key))
            # Wait for a full batch, at most until the oldest request of the key has waited max_delay.
            while self._waiting(key) < self.max_batch and (self.may_grow is None or self.may_grow()):
                remaining = oldest + self.max_delay_s - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            self._prune(loop.time())
            if not self._entries(key):
                continue
            await self._run_batch(key, self._take(key))

    def _take(self, key: Hashable) -> list[tuple[_Entry, int, int]]:
        """The next batch of `key`: the callers in turn order, each with as many of its rows as are left (oldest
        request first) up to the room, as (entry, start, stop) slices. The callers served go to the back of the
        line."""
        batch, size = [], 0
        for caller in list(self._callers):
            if size == self.max_batch:
                break
            queue = self._callers[caller]
            served = False
            for entry in [e for e in queue if e.key == key]:
                if size == self.max_batch:
                    break
                start = entry.taken
                stop = min(entry.n, start + self.max_batch - size)
                batch.append((entry, start, stop))
                entry.taken = stop
                size += stop - start
                served = True
                if stop == entry.n:
                    queue.remove(entry)
            if not served:
                continue
            self._new.discard(caller)
            if queue:
                self._callers.move_to_end(caller)
            else:
                del self._callers[caller]
        self._set_depth(self._queued - size)
        return batch

    async def _run_batch(self, key: Hashable, batch: list[tuple[_Entry, int, int]]) -> None:
        loop = asyncio.get_running_loop()
        slots = len(batch[0][0].inputs)
        # inputs[j] = the callers' slices of input j, in batch order (views: no copy on the loop)
        inputs = [[None if e.inputs[j] is None else e.inputs[j][a:b] for e, a, b in batch] for j in range(slots)]
        size = sum(b - a for _, a, b in batch)
        started = loop.time()
        self._running = size
        self._running_requests = len(batch)
        try:
            out = await loop.run_in_executor(self.executor, self.fn, key, inputs)  # [size, ...]
        except Exception as exc:  # noqa: BLE001 - every caller in the batch gets the error
            for entry, _, _ in batch:
                if not entry.future.done():
                    entry.future.set_exception(exc)
            return
        finally:
            self._running = self._running_requests = 0
        if self.stats.on_batch:
            self.stats.on_batch(size, loop.time() - started)
        row = 0
        for entry, a, b in batch:
            entry.parts.append((a, out[row:row + b - a]))
            entry.done += b - a
            row += b - a
            if entry.done == entry.n and not entry.future.done():
                entry.future.set_result([t for _, t in sorted(entry.parts, key=lambda p: p[0])])
