"""alae_rt.streams: each thread's device work on a CUDA stream of its own, complete when its block ends; copies to
the host through pinned memory. On a CPU both do nothing."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from alae_rt.streams import HIGH_PRIORITY, device_stream, to_host


def test_on_the_cpu_both_do_nothing():
    x = torch.arange(6).reshape(2, 3)
    with device_stream("cpu"):
        assert to_host(x) is x


@pytest.mark.gpu
def test_each_thread_has_its_own_stream_and_its_work_is_complete_when_the_block_ends():
    device = torch.device("cuda")
    streams, outs = {}, {}
    both = threading.Barrier(2)

    def work(i: int) -> None:
        both.wait(10)  # two threads at once: each task has a thread of the pool
        for _ in range(2):  # the same stream again on the thread's second block
            with device_stream(device):
                stream = torch.cuda.current_stream(device)
                assert streams.setdefault(i, stream) == stream
                outs[i] = torch.full((1 << 22,), float(i + 1), device=device).cumsum(0)  # [4M]
            assert stream.query()  # nothing left queued on it

    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(work, i) for i in range(2)]:
            done.result(60)
    assert streams[0] != streams[1]
    assert torch.cuda.default_stream(device) not in streams.values()
    for i, out in outs.items():
        assert out[-1].item() == (i + 1) * (1 << 22)


@pytest.mark.gpu
def test_the_model_thread_has_a_high_priority_stream_apart_from_the_others():
    device = torch.device("cuda")
    with device_stream(device, HIGH_PRIORITY):
        high = torch.cuda.current_stream(device)
    with device_stream(device):
        low = torch.cuda.current_stream(device)
    assert high != low and high.priority < low.priority


@pytest.mark.gpu
def test_to_host_copies_into_pinned_memory():
    x = torch.arange(7 * 9 * 3, device="cuda").to(torch.uint8).reshape(7, 9, 3)[1:]  # a view, odd sizes
    with device_stream(x.device):
        y = to_host(x)
    assert y.device.type == "cpu" and y.is_pinned()
    assert torch.equal(y, x.cpu())
