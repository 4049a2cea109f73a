"""The `triton` backend (fused kernels) against the official fixtures and eager: under Triton's interpreter on
CPU, compiled on CUDA (gpu-marked, at the ffhq-1024 preset)."""

from __future__ import annotations

import pytest
import torch
from helpers import OFFICIAL, PARITY_TOL, check_all_outputs, require

from alae_rt import InputError, Runtime

# Max abs error of images in [-1, 1] / of w against eager fp32, per compute dtype.
TOL = {torch.float32: 1e-4, torch.float16: 3e-2, torch.bfloat16: 1.5e-1}


@pytest.fixture(scope="module")
def gray32():
    folder = require(OFFICIAL / "gray32")
    return folder / "checkpoint.pth", torch.load(folder / "reference.pt", weights_only=True)


def test_matches_the_official_fixture(gray32):
    path, ref = gray32
    check_all_outputs(Runtime.load(path, backend="triton"), ref)


@pytest.mark.parametrize("cudnn_max_res", [8])
def test_unfused_convolutions_match_the_official_fixture(gray32, cudnn_max_res):
    """cudnn_max_res: the 3x3 convolutions up to that resolution as modulate + conv2d + act_stats (8: the low
    layers only, 4096: every layer), the same outputs. Encode and decode run every convolution cudnn_max_res
    reroutes; generate and mix run the decoder's same layers on other styles, discriminate and map are MLPs it
    leaves alone: those four are checked by test_matches_the_official_fixture."""
    path, ref = gray32
    rt = Runtime.load(path, backend="triton", backend_options={"cudnn_max_res": cudnn_max_res})
    assert rt.backend.cudnn_max_res == cudnn_max_res
    torch.testing.assert_close(rt.encode(ref["x"]), ref["encode_w"], **PARITY_TOL)
    reconstructed = rt.decode(ref["encode_w"], noise=ref["reconstruct_noise"])
    torch.testing.assert_close(reconstructed, ref["reconstruct_img"], **PARITY_TOL)
    with pytest.raises(InputError, match="cudnn_max_res: a resolution"):
        Runtime.load(path, backend="triton", backend_options={"cudnn_max_res": -1})


def test_gemm_path_matches_the_official_fixture(gray32):
    """conv=gemm: every convolution one NHWC implicit GEMM, the 32x32 model's up-sampling layers (nearest 2x + 3x3)
    as transposed 4x4 convs and its pooled down-sampling layers as strided 4x4 convs."""
    path, ref = gray32
    rt = Runtime.load(path, backend="triton", backend_options={"conv": "gemm"})
    assert rt.backend.conv == "gemm"
    check_all_outputs(rt, ref)
    with pytest.raises(InputError, match="conv: one of kernel3x3, gemm, got 'cudnn'"):
        Runtime.load(path, backend="triton", backend_options={"conv": "cudnn"})


def test_resampling_rewrites_match_the_reference_blocks(gray32):
    """The exact rewrites on the fixture's weights, in float64 (the convolutions modulated_conv's modes compute):
    nearest 2x + 3x3 == transposed 4x4 of corner_sum(flip(w)); 3x3 + 2x2 average pool == strided 4x4 of
    corner_sum(w) / 4. (Without the flip the up-sampling layer is off by O(1).)"""
    import torch.nn.functional as F

    from alae_rt.backends.triton import down_weight, up_weight

    rt = Runtime.load(gray32[0])
    gen, enc = rt.model.generator.double(), rt.model.encoder.double()
    g = torch.Generator().manual_seed(0)
    checked = 0
    for blk in gen.blocks[1:]:
        x = torch.randn(2, blk.conv_1.shape[1], 5, 6, generator=g, dtype=torch.float64)
        ref = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), blk.conv_1, padding=1)
        got = F.conv_transpose2d(x, up_weight(blk), stride=2, padding=1)
        torch.testing.assert_close(got, ref, atol=1e-10, rtol=1e-10)
        checked += not blk.fused
    for blk in enc.blocks:
        x = torch.randn(2, blk.conv_2.shape[1], 8, 6, generator=g, dtype=torch.float64)
        ref = F.avg_pool2d(F.conv2d(x, blk.conv_2, padding=1), 2, 2)
        got = F.conv2d(x, down_weight(blk), stride=2, padding=1)
        torch.testing.assert_close(got, ref, atol=1e-10, rtol=1e-10)
        checked += not blk.fused
    assert checked == len(gen.blocks) - 1 + len(enc.blocks)  # every layer of the 32x32 model is an unfused one


@pytest.mark.slow
def test_matches_the_rgb128_fixture():
    """The fused (stride-2 / transposed) paths at 128x128; minutes under the interpreter."""
    folder = require(OFFICIAL / "rgb128")
    check_all_outputs(Runtime.load(folder / "checkpoint.pth", backend="triton"),
                      torch.load(folder / "reference.pt", weights_only=True))


@pytest.mark.parametrize("conv", ["kernel3x3", "gemm"])
def test_fused_resampling_paths_on_a_small_model(conv):
    """Blocks at 128x128 use the fused transposed / strided convolutions; a narrow 128x128 model keeps the
    interpreter quick."""
    from alae_rt import ModelConfig

    cfg = ModelConfig(6, 4, 8, 16, 2, name="narrow-128")
    eager = Runtime.from_config(cfg, seed=3)
    fused = Runtime(eager.model, backend="triton", backend_options={"conv": conv})
    x = eager.generate(seeds=[0], noise="const")
    torch.testing.assert_close(fused.encode(x), eager.encode(x), atol=1e-4, rtol=1e-4)
    w = eager.encode(x)
    torch.testing.assert_close(fused.decode(w, noise="const"), eager.decode(w, noise="const"), atol=1e-4, rtol=1e-4)


# conv=gemm in fp16 only: bf16 changes only its casts (the interpreter multiplies bf16 in fp32), and the suite's time
@pytest.mark.parametrize("dtype, conv", [(torch.float16, "kernel3x3"), (torch.bfloat16, "kernel3x3"),
                                         (torch.float16, "gemm")], ids=["fp16", "bf16", "fp16-gemm"])
def test_low_precision_close_to_eager_fp32(gray32, dtype, conv):
    """One sample: the kernels treat the batch alike in every dtype (the batch is covered in fp32 above)."""
    path, ref = gray32
    rt = Runtime.load(path, backend="triton", dtype=dtype, backend_options={"conv": conv})
    img = rt.decode(ref["encode_w"][:1], noise=[n[:1] for n in ref["reconstruct_noise"]])
    assert img.dtype == dtype
    assert img.shape == ref["reconstruct_img"][:1].shape
    assert (img.float() - ref["reconstruct_img"][:1]).abs().max() <= TOL[dtype]
    w = rt.encode(ref["x"][:1])
    assert w.shape == ref["encode_w"][:1].shape
    assert (w.float() - ref["encode_w"][:1]).abs().max() <= TOL[dtype] * ref["encode_w"].abs().max()


def test_refused_without_cuda_or_the_interpreter(gray32, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(InputError, match="runs on CUDA GPUs"):
        Runtime.load(gray32[0], backend="triton")


# At full size in fp16/bf16 the bound is also torch's own error in that dtype, times this: on w from the encoder
# (|w| up to 13 with random ffhq-1024 weights, images up to 1.3), eager bf16 itself decodes 0.30 off eager fp32 and
# eager fp16 0.029 (measured on a CPU), past TOL. The fused kernels must be about as exact as torch in the dtype.
EAGER_LOW_PRECISION_FACTOR = 2.0


@pytest.mark.gpu
@pytest.mark.parametrize("conv", ["kernel3x3", "gemm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_ffhq1024_on_cuda_matches_eager(dtype, conv):
    """Full size, compiled: the backend with CUDA graphs against eager fp32 (no TF32: conftest) at batch 2."""
    def runtime(**kw) -> Runtime:
        return Runtime.from_config("ffhq-1024", seed=0, device="cuda", **kw)  # the same weights each time

    eager, fast = runtime(), runtime(dtype=dtype, backend="triton", backend_options={"conv": conv})
    x = eager.generate(seeds=[0, 1], noise="const")
    w = eager.encode(x)
    img = eager.decode(w, noise="const")
    same = runtime(dtype=dtype) if dtype != torch.float32 else None  # eager in the dtype: torch's own error
    w_tol = TOL[dtype] * max(1.0, w.abs().max().item())
    img_tol = TOL[dtype]
    if same is not None:
        w_tol = max(w_tol, EAGER_LOW_PRECISION_FACTOR * (same.encode(x).float() - w).abs().max().item())
        img_tol = max(img_tol, EAGER_LOW_PRECISION_FACTOR * (same.decode(w, noise="const").float() - img).abs().max()
                      .item())
    err = (fast.encode(x).float() - w).abs().max().item()
    assert err <= w_tol, f"encode: triton {dtype} max abs err {err:.3g} > {w_tol:.3g} (|w| <= {w.abs().max():.3g})"
    for i in range(2):  # capture, then replay
        err = (fast.decode(w, noise="const").float() - img).abs().max().item()
        assert err <= img_tol, f"decode call {i}: triton {dtype} max abs err {err:.3g} > {img_tol:.3g}"
