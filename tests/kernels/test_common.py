"""The blur kernel every blur uses: the official [1, 2, 1] x [1, 2, 1] / 16, made on the device it runs on."""

import pytest
import torch

from alae_rt.kernels.common import blur, blur_weight


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_blur_weight_is_the_official_kernel(dtype):
    w = blur_weight(5, dtype)
    official = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16  # exact in every dtype
    assert w.shape == (5, 1, 3, 3) and w.dtype == dtype
    assert torch.equal(w.float(), official.expand(5, 1, 3, 3))
    x = torch.zeros(1, 5, 3, 3, dtype=dtype)
    x[0, :, 1, 1] = 1.0
    assert torch.equal(blur(x)[0, 0].float(), official)  # an impulse blurs into the kernel


@pytest.mark.gpu
def test_blur_weight_is_made_on_the_gpu_without_a_copy_from_the_host():
    """A copy from host memory would wait for the GPU's queued work at every blur of a forward pass."""
    blur_weight(16, torch.float16, "cuda")  # CUDA and the profiler's first-use work outside the window
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        w = blur_weight(16, torch.float16, "cuda")
        torch.cuda.synchronize()
    assert w.is_cuda
    assert not [e.name for e in prof.events() if "HtoD" in e.name]
