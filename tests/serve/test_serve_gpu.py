"""The server on a CUDA GPU, where each thread works on a CUDA stream of its own (alae_rt.streams): many callers at
once, every answer against the Runtime's own result in this process. A stream race - a batch read before it was
complete, or its memory reused while another stream still read it - gives a caller another's image, or a torn one."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch
from serve_helpers import ServerThread, images, latents, one_torch_thread, png  # noqa: F401 - a fixture

from alae_rt import Runtime, codecs
from alae_rt.serve.client import AsyncAlaeClient
from alae_rt.serve.config import ServeConfig

pytestmark = pytest.mark.gpu

CALLERS = 24
CLIENTS = 8  # connections, shared by the callers
ROUNDS = 8  # calls of each caller, one after another: new calls come while batches compute and answers are made
MAX_BATCH = 4  # requests of 1 to 3 rows: batches cut through requests, whose parts are then joined
KINDS = ("decode-raw", "decode-random", "decode-jpeg", "encode-png", "encode-jpeg")
MIN_JPEG_PSNR_DB = 30.0  # a JPEG answer against its own image (q90 at 64x64: 35 dB and up with the CPU codec)
TIMEOUT_S = 120


def gpu_runtime(backend: str) -> Runtime:
    """small-64 on CUDA in fp32, with noise weights: fresh models add no noise, and random maps would change nothing."""
    if backend == "triton":
        pytest.importorskip("triton")
    cpu = Runtime.from_config("small-64", seed=5)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in cpu.model.named_parameters():
            if "noise_weight" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)  # images apart: 19+ levels
    return Runtime(cpu.model, device="cuda", backend=backend, max_batch=MAX_BATCH)


def plan() -> tuple[list[list[tuple[str, int, int]]], int]:
    """Each caller's calls in order, (kind, first row, rows), every call with rows of its own; and the rows in all."""
    callers, row = [], 0
    for i in range(CALLERS):
        calls = []
        for r in range(ROUNDS):
            n = 1 + (i + r) % 3
            calls.append((KINDS[(i + r) % len(KINDS)], row, n))
            row += n
        callers.append(calls)
    return callers, row


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_concurrent_callers_on_cuda_each_get_their_own_answer(backend):
    """RAW and JPEG decodes (constant and per-request random noise) and PNG and JPEG encodes, from 24 callers at
    once: RAW images within 1 level of the Runtime's (merged batches may round a float the other way), returned
    latents exact, JPEG images nearer their own image than any other, w within float error (PNG) or nearer its
    own than half the way to the next (JPEG: nvJPEG and the CPU codec decode a file a little differently)."""
    rt = gpu_runtime(backend)
    callers, total = plan()
    w_all = latents(total, rt.config.latent_size, seed=1)  # [total, D]
    x_all = images(total, rt.config.resolution, seed=2)  # uint8 [total, R, R, 3]
    jpegs = [codecs.encode_jpeg(a, 90) for a in x_all]
    # The references, in this thread before the server starts (the Runtime is not shared between threads).
    ref_images = rt.decode_uint8(torch.from_numpy(w_all), noise="const").cpu().numpy().astype(int)
    ref_random = {row: rt.decode_uint8(torch.from_numpy(w_all[row:row + n]), noise="random", seed=row)
                  .cpu().numpy().astype(int)
                  for calls in callers for kind, row, n in calls if kind == "decode-random"}
    ref_w = rt.encode(x_all).float().cpu().numpy()
    ref_wj = rt.encode(np.stack([codecs.decode_image(f) for f in jpegs])).float().cpu().numpy()
    w_tol = 1e-3 * max(1.0, float(np.abs(ref_w).max()))
    gaps = np.abs(ref_wj[:, None] - ref_wj[None]).max(axis=2)  # [total, total]: each w to every other
    np.fill_diagonal(gaps, np.inf)
    flat = ref_images.reshape(total, -1)

    async def call(client: AsyncAlaeClient, kind: str, row: int, n: int):
        w = w_all[row:row + n]
        if kind == "decode-raw":
            return await client.decode(w, format="raw", return_latents=True, timeout=TIMEOUT_S)
        if kind == "decode-random":
            return await client.decode(w, noise="random", seed=row, format="raw", timeout=TIMEOUT_S)
        if kind == "decode-jpeg":
            return await client.decode(w, format="jpeg", timeout=TIMEOUT_S)
        files = [png(a) for a in x_all[row:row + n]] if kind == "encode-png" else jpegs[row:row + n]
        return await client.encode(files, timeout=TIMEOUT_S)

    cfg = ServeConfig(port=0, max_delay_ms=5, max_images=16, max_queue=1024, codec_processes=0)
    with ServerThread(rt, cfg) as s:
        batches_before = s.metric("alae_rt_batch_size_count", op="decode")
        service = s.server.service

        async def main():
            clients = [AsyncAlaeClient(s.address) for _ in range(CLIENTS)]

            async def caller(i: int):
                return [await call(clients[i % CLIENTS], *c) for c in callers[i]]

            try:
                gate = s.hold_compute()  # the first calls queue up together: their batches are full
                tasks = [asyncio.ensure_future(caller(i)) for i in range(CALLERS)]
                t0 = time.monotonic()
                while (service.decode_batcher.pending + service.encode_batcher.pending < CALLERS
                       and time.monotonic() - t0 < 60):
                    await asyncio.sleep(0.01)
                gate.set()
                return await asyncio.gather(*tasks)
            finally:
                for c in clients:
                    await c.close()

        answers = asyncio.run(main())
        batches = s.metric("alae_rt_batch_size_count", op="decode") - batches_before

    decode_calls = 0
    for calls, got in zip(callers, answers):
        for (kind, row, n), res in zip(calls, got):
            where = f"{kind} rows {row}..{row + n - 1}"
            if kind in ("decode-raw", "decode-random"):
                decode_calls += 1
                ref = ref_images[row:row + n] if kind == "decode-raw" else ref_random[row]
                out = np.stack(res.images).astype(int)
                assert out.shape == ref.shape, where
                assert np.abs(out - ref).max() <= 1, where
                if kind == "decode-raw":
                    np.testing.assert_array_equal(res.latents, w_all[row:row + n], err_msg=where)
            elif kind == "decode-jpeg":
                decode_calls += 1
                assert len(res.images) == n, where
                for k, img in enumerate(res.images):
                    assert psnr(img, ref_images[row + k]) >= MIN_JPEG_PSNR_DB, where
                    mse = ((flat - img.reshape(1, -1).astype(int)) ** 2).mean(axis=1)  # to every reference
                    assert int(np.argmin(mse)) == row + k, where
            elif kind == "encode-png":
                np.testing.assert_allclose(res, ref_w[row:row + n], atol=w_tol, rtol=0, err_msg=where)
            else:
                assert res.shape == (n, rt.config.latent_size), where
                for k, w in enumerate(res):
                    assert np.abs(w - ref_wj[row + k]).max() < gaps[row + k].min() / 2, where
    assert batches < decode_calls, "no decode batch held more than one request"
