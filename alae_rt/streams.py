"""CUDA streams for a server's threads: each thread's device work on a stream of its own, and copies to the host
through pinned memory, so that copies and image codecs overlap the model instead of queueing behind it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

# torch hands out the 32 streams of each priority in turn: a server's other threads (a pool or two of one a core)
# would come round to the compute thread's stream, and queue behind its kernels again. The compute thread takes one
# of the high-priority streams, which nothing else takes; its kernels go first, too.
HIGH_PRIORITY = -1
_local = threading.local()  # .streams: {(device, priority): the thread's stream}


def _thread_stream(device: torch.device, priority: int) -> torch.cuda.Stream:
    streams = getattr(_local, "streams", None)
    if streams is None:
        streams = _local.streams = {}
    stream = streams.get((device, priority))
    if stream is None:
        stream = streams[device, priority] = torch.cuda.Stream(device, priority=priority)
        # What was queued on the default stream before (the Runtime's weights and constant noise maps, made where it
        # was loaded) comes first: torch's streams are non-blocking, not ordered after the default stream.
        stream.wait_stream(torch.cuda.default_stream(device))
    return stream


@contextmanager
def device_stream(device: torch.device | str, priority: int = 0) -> Iterator[None]:
    """Run the block on this thread's own CUDA stream of `device` (one a thread, made at its first block; priority
    HIGH_PRIORITY for the one thread that runs the model) and wait for the stream when the block ends: whatever the
    block made is complete, for any thread and stream, when it returns. On a CPU it does nothing.

    Why a stream a thread: on the one legacy default stream that every thread shares, a response's copy of batch k
    queues behind the kernels of batch k+1 that the compute thread has launched already: copies never overlap
    compute. Why the wait at the end: the streams are not ordered with each other, so a thread handed a tensor needs
    it complete; and the caching allocator hands a freed block at once to new work on the stream that allocated it,
    however much another stream has still queued on it. A tensor that a block reads but another stream allocated is
    held (an argument, or in the batcher) until the block has returned, by when nothing of the block is left queued
    - so no record_stream is needed. The block's own tensors are allocated on its stream: ordered there.
    """
    device = torch.device(device)
    if device.type != "cuda":
        yield
        return
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    stream = _thread_stream(device, priority)
    try:
        with torch.cuda.stream(stream):
            yield
    finally:  # after a failure too: the caller may free the inputs of work still queued here
        stream.synchronize()


def to_host(x: Tensor) -> Tensor:
    """x on the host: from a CUDA device through pinned memory, else x itself.

    A copy into fresh pageable memory faults its pages in on every call (~1.4 GB/s on an H200, for 12.6 MB images);
    torch's caching host allocator hands pinned buffers back for reuse. Waits for the copy (on the current stream).
    """
    if x.device.type != "cuda":
        return x
    out = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    out.copy_(x, non_blocking=True)
    torch.cuda.current_stream(x.device).synchronize()
    return out
