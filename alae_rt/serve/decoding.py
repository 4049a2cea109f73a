"""The image-decoding stage: request images are decoded in their own thread pool, within a budget of pixels being
decoded at once, callers taken in turn, and work for a caller who has gone stops before its next image."""

from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from alae_rt.serve.batcher import Dropped, QueueFull

# One unit of work: (its cost in pixels, a function the pool runs). A decode costs its image's pixels; the small
# steps around it (reading sizes from headers, stacking the results) cost none.
Job = tuple[int, Callable[[], Any]]


@dataclass(eq=False)
class _Request:
    peer: Hashable
    jobs: Sequence[Job]
    future: asyncio.Future
    deadline: float | None  # loop time, or None
    what: str  # what the jobs prepare, for messages ("images", "a.images")
    results: list = field(default_factory=list)
    started: int = 0  # jobs handed to the pool
    done: int = 0  # jobs whose results came back


@dataclass
class StageStats:
    """Callbacks the server's metrics hang on (all optional)."""

    on_pixels: Callable[[int, int], None] | None = None  # (pixels running, pixels waiting)
    on_drop: Callable[[str, int], None] | None = None  # (reason, images): jobs that cost pixels, not started
    on_done: Callable[[], None] | None = None  # an image (a job that costs pixels) was decoded


class DecodeStage:
    """Runs the jobs of each request (one per image, each with its cost in pixels) in `executor`, and returns their
    results in order.

    - At most `workers` jobs run at once - the pool's size, so that no job waits inside the executor, where it could
      be neither reordered nor dropped - and at most `max_pixels` pixels are being decoded at once (a job larger
      than that runs alone). Jobs start strictly in turn, so a large image is never passed over for small ones.
    - Callers (gRPC peers, one per connection) take turns: each free worker goes to the next caller with work
      waiting, one job at a time, and a caller new to the queue goes first. A caller with many images cannot hold
      every worker while another waits: the other waits for at most one job to finish.
    - A request whose caller has gone (cancelled, or past its deadline) loses the jobs it has not started; a job
      already running finishes (a decoder cannot be interrupted) and its result is dropped. A job that fails fails
      its request at once, and the request's other jobs do not start.
    - At most `max_waiting` jobs wait; past that a new request gets QueueFull.
    """

    def __init__(self, executor: Executor, *, workers: int, max_pixels: int, max_waiting: int,
                 stats: StageStats | None = None):
        if workers < 1 or max_pixels < 1 or max_waiting < 1:
            raise ValueError("workers, max_pixels and max_waiting must be >= 1")
        self.executor = executor
        self.workers = workers
        self.max_pixels = max_pixels
        self.max_waiting = max_waiting
        self.stats = stats or StageStats()
        self._peers: collections.OrderedDict[Hashable, collections.deque[_Request]] = collections.OrderedDict()
        self.running = 0  # jobs in the pool
        self.running_pixels = 0
        self.waiting = 0  # jobs not started
        self.waiting_pixels = 0
        self.peak_pixels = 0  # the most pixels ever running at once

    async def run(self, peer: Hashable, jobs: Sequence[Job], deadline: float | None = None,
                  what: str = "images") -> list[Any]:
        """Queue the jobs of one request for `peer` and wait for their results, in order."""
        if not jobs:
            return []
        if self.waiting + len(jobs) > self.max_waiting:
            raise QueueFull(f"the image decoding queue is full ({self.waiting} of {self.max_waiting} images "
                            "waiting)")
        loop = asyncio.get_running_loop()
        req = _Request(peer, list(jobs), loop.create_future(), deadline, what, results=[None] * len(jobs))
        if peer not in self._peers:
            self._peers[peer] = collections.deque()
            self._peers.move_to_end(peer, last=False)  # a caller new to the queue goes first
        self._peers[peer].append(req)
        self._count(len(jobs), sum(px for px, _ in jobs))
        self._dispatch()
        try:
            return await req.future
        finally:
            if req.future.cancelled():  # the caller has gone
                self._forget(req, "cancelled")

    # ---- bookkeeping (all on the event loop) -----------------------------------------------------------------
    def _count(self, jobs: int, pixels: int) -> None:
        self.waiting += jobs
        self.waiting_pixels += pixels
        self._report()

    def _report(self) -> None:
        if self.stats.on_pixels:
            self.stats.on_pixels(self.running_pixels, self.waiting_pixels)

    def _forget(self, req: _Request, reason: str | None) -> None:
        """Take a request's jobs that have not started out of the queue (reason: why, for the drop metric)."""
        left = req.jobs[req.started:]
        if left:
            req.started = len(req.jobs)
            self._count(-len(left), -sum(px for px, _ in left))
            images = sum(1 for px, _ in left if px)
            if reason and images and self.stats.on_drop:
                self.stats.on_drop(reason, images)
        queue = self._peers.get(req.peer)
        if queue is not None and req in queue:
            queue.remove(req)
            if not queue:
                del self._peers[req.peer]

    def _dispatch(self) -> None:
        """Start jobs while a worker and the pixel budget allow, callers in turn."""
        now = asyncio.get_running_loop().time()
        while self.running < self.workers and self._peers:
            peer, queue = next(iter(self._peers.items()))
            req = queue[0]
            if req.future.done():  # cancelled (run() forgets it too) or failed
                self._forget(req, "cancelled" if req.future.cancelled() else None)
                continue
            if req.deadline is not None and now >= req.deadline:
                req.future.set_exception(Dropped(f"the deadline passed with {len(req.jobs) - req.started} of "
                                                 f"{len(req.jobs)} {req.what} not decoded"))
                self._forget(req, "deadline")
                continue
            pixels, work = req.jobs[req.started]
            if self.running and self.running_pixels + pixels > self.max_pixels:
                break  # wait for pixels to be freed
            index = req.started
            req.started += 1
            if req.started == len(req.jobs):
                queue.popleft()
            if queue:
                self._peers.move_to_end(peer)  # its next job waits for the other callers' turns
            else:
                del self._peers[peer]
            self._start(req, index, pixels, work)

    def _start(self, req: _Request, index: int, pixels: int, work: Callable[[], Any]) -> None:
        self.waiting -= 1
        self.waiting_pixels -= pixels
        self.running += 1
        self.running_pixels += pixels
        self.peak_pixels = max(self.peak_pixels, self.running_pixels)
        self._report()
        try:
            fut = asyncio.get_running_loop().run_in_executor(self.executor, work)
        except RuntimeError as exc:  # the pool was shut down: the server is stopping
            self._finished(req, index, pixels, None, exc)
            return
        fut.add_done_callback(functools.partial(self._finished, req, index, pixels))

    def _finished(self, req: _Request, index: int, pixels: int, fut: asyncio.Future | None,
                  error: BaseException | None = None) -> None:
        self.running -= 1
        self.running_pixels -= pixels
        self._report()
        if fut is not None:
            error = asyncio.CancelledError() if fut.cancelled() else fut.exception()
        if not req.future.done():  # else its caller has gone, or another job failed it: the result is dropped
            if error is not None:
                req.future.set_exception(error)
                self._forget(req, None)
            else:
                req.results[index] = fut.result()
                req.done += 1
                if pixels and self.stats.on_done:
                    self.stats.on_done()
                if req.done == len(req.jobs):
                    req.future.set_result(req.results)
        self._dispatch()
