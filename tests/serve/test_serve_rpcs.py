"""Every RPC of a real server on 127.0.0.1 against the Runtime's own results, and 64 concurrent callers."""

from __future__ import annotations

import asyncio
import io
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
import torch
from PIL import Image
from serve_helpers import (
    ServerThread,
    images,
    latents,
    one_torch_thread,
    png,
    same_images,
    tiny_rt,
    tiny_server,
    u8,
)

from alae_rt.serve import alae_rt_pb2 as pb
from alae_rt.serve.client import AlaeClient, AsyncAlaeClient, Seeds
from alae_rt.serve.config import ServeConfig

# ---- each RPC against the Runtime ---------------------------------------------------------------------------------


def test_encode_raw_and_png_match_the_runtime(tiny_server, tiny_rt):
    x = images(5)
    with AlaeClient(tiny_server.address) as c:
        w_raw = c.encode(x)
        w_png = c.encode([png(a) for a in x])
    ref = tiny_rt.encode(list(x)).numpy()
    assert w_raw.shape == (5, 32)
    np.testing.assert_allclose(w_raw, ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(w_png, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("noise,seed", [("const", None), ("random", 7), ("none", None)])
def test_decode_matches_the_runtime(tiny_server, tiny_rt, noise, seed):
    w = latents(3, seed=1)
    styles = latents(2, seed=2, styles=6)
    with AlaeClient(tiny_server.address) as c:
        got_w = c.decode(w, noise=noise, seed=seed, return_latents=True)
        got_s = c.decode(styles, noise=noise, seed=seed)
    same_images(got_w.images, u8(tiny_rt, tiny_rt.decode(torch.from_numpy(w), noise=noise, seed=seed)))
    same_images(got_s.images, u8(tiny_rt, tiny_rt.decode(torch.from_numpy(styles), noise=noise, seed=seed)))
    np.testing.assert_array_equal(got_w.latents, w)


def test_random_noise_without_a_seed_differs_per_call(tiny_server):
    w = latents(1, seed=4)
    with AlaeClient(tiny_server.address) as c:
        a, b = (c.decode(w, noise="random").images[0] for _ in range(2))
    assert not np.array_equal(a, b)


def test_reconstruct_faces_with_the_official_fixture(rt128, faces128):
    files = sorted(faces128.glob("*.png"))[:2]
    with ServerThread(rt128, ServeConfig(port=0)) as s, AlaeClient(s.address) as c:
        got = c.reconstruct(files, return_latents=True)
    w = rt128.encode(files)
    np.testing.assert_allclose(got.latents, w.numpy(), atol=1e-4, rtol=1e-4)
    same_images(got.images, u8(rt128, rt128.decode(w, noise="const")))
    assert got.images[0].shape == (128, 128, 3)


def test_generate_from_seeds_and_from_z(tiny_server, tiny_rt):
    z = latents(2, seed=5)
    with AlaeClient(tiny_server.address) as c:
        by_seed = c.generate(seeds=[0, 5, 9], noise="random", return_latents=True)
        truncated = c.generate(seeds=[3], psi=0.5, cutoff=2, noise="const")
        by_z = c.generate(z=z, noise="random", seed=11, return_latents=True)
    rt = tiny_rt
    same_images(by_seed.images, u8(rt, rt.generate(seeds=[0, 5, 9], noise="random")))
    same_images(truncated.images, u8(rt, rt.generate(seeds=[3], truncation_psi=0.5, truncation_cutoff=2,
                                                     noise="const")))
    same_images(by_z.images, u8(rt, rt.generate(z=torch.from_numpy(z), noise="random", seed=11)))
    np.testing.assert_allclose(by_seed.latents, rt.truncate(rt.map(rt.seeds_to_z([0, 5, 9]))).numpy(), atol=1e-6)
    assert by_z.latents.shape == (2, 6, 32)


def test_edit_named_given_set_and_layers(tiny_server, tiny_rt):
    rt = tiny_rt
    w = latents(2, seed=6)
    vec = latents(1, seed=7)[0]
    x = images(2, seed=8)
    with AlaeClient(tiny_server.address) as c:
        named = c.edit(w, {"up": 2.5}, return_latents=True)
        given = c.edit(w, [(vec, -1.5), ("layered", 0.5)], layers=[0, 1, 4], return_latents=True)
        set_mode = c.edit(w, {"up": 1.0}, mode="set", return_latents=True)
        from_images = c.edit(x, {"up": 1.0}, noise="random", seed=3)
        from_seeds = c.edit(Seeds([2, 4], psi=0.6), {"up": -2.0})
    wt = torch.from_numpy(w)
    for got, ref in ((named, rt.edit(wt, {"up": 2.5})),
                     (given, rt.edit(wt, [(torch.from_numpy(vec), -1.5), ("layered", 0.5)], layers=[0, 1, 4])),
                     (set_mode, rt.edit(wt, {"up": 1.0}, mode="set"))):
        np.testing.assert_allclose(got.latents, ref.numpy(), atol=1e-5, rtol=1e-5)
        same_images(got.images, u8(rt, rt.decode(ref, noise="const")))
    same_images(from_images.images, u8(rt, rt.decode(rt.edit(rt.encode(list(x)), {"up": 1.0}), noise="random", seed=3)))
    seeds_styles = rt.truncate(rt.map(rt.seeds_to_z([2, 4])), 0.6)
    same_images(from_seeds.images, u8(rt, rt.decode(rt.edit(seeds_styles, {"up": -2.0}), noise="const")))


def test_mix_broadcasts_a_batch_of_one(tiny_server, tiny_rt):
    rt = tiny_rt
    b = latents(1, seed=9)
    with AlaeClient(tiny_server.address) as c:
        got = c.mix(Seeds([1, 2]), b, cutoff=3, noise="random", seed=5)
    a = rt.truncate(rt.map(rt.seeds_to_z([1, 2])))
    same_images(got.images, u8(rt, rt.mix(a, torch.from_numpy(b), 3, noise="random", seed=5)))
    assert len(got.images) == 2


def test_interpolate_streams_every_frame(tiny_server, tiny_rt):
    rt = tiny_rt
    a = latents(2, seed=10)
    with AlaeClient(tiny_server.address) as c:
        frames = list(c.interpolate(a, Seeds([4, 5]), steps=5, return_latents=True))
    b = rt.truncate(rt.map(rt.seeds_to_z([4, 5])))
    path = rt.interpolate(rt.styles(torch.from_numpy(a)), b, 5)
    assert [f[0] for f in frames] == [0, 1, 2, 3, 4]
    assert [round(f[1], 6) for f in frames] == [0.0, 0.25, 0.5, 0.75, 1.0]
    for (_, _, res), styles in zip(frames, path):
        same_images(res.images, u8(rt, rt.decode(styles, noise="const")))
        np.testing.assert_allclose(res.latents, styles.numpy(), atol=1e-6)


def test_output_formats(tiny_server):
    w = latents(2, seed=12)
    with AlaeClient(tiny_server.address) as c:
        as_png = c.decode(w, format="png")
        as_raw = c.decode(w, format="raw")
        as_jpeg = c.decode(w, format="jpeg", decode=False)
        only_latents = c.stub.Decode(pb.DecodeRequest(
            latents=pb.Tensor(shape=[2, 32], data=w.tobytes()),
            output=pb.OutputOptions(return_latents=True, skip_images=True)))
    for a, b in zip(as_png.images, as_raw.images):
        np.testing.assert_array_equal(a, b)
    assert all(j[:2] == b"\xff\xd8" for j in as_jpeg.images)  # JPEG files
    jpeg = np.array(Image.open(io.BytesIO(as_jpeg.images[0])))
    assert jpeg.shape == (16, 16, 3) and np.abs(jpeg.astype(int) - as_png.images[0]).mean() < 40
    assert len(only_latents.images) == 0 and list(only_latents.latents.shape) == [2, 32]


def test_model_info(tiny_server, tiny_rt):
    with AlaeClient(tiny_server.address) as c:
        info = c.info()
    assert (info.config_name, info.resolution, info.channels, info.latent_size, info.layer_count,
            info.num_styles) == ("tiny", 16, 3, 32, 3, 6)
    assert list(info.directions) == ["layered", "up"]
    assert (info.backend, info.device, info.dtype) == ("eager", "cpu", "float32")
    assert info.max_batch == tiny_rt.max_batch == 4 and info.max_images == 16
    assert "random weights" in info.weights and '"latent_size": 32' in info.config_json


def test_client_info_lists_directions_with_labels_and_ranges(tiny_server, tiny_rt, capsys):
    """`alae-rt client info` names each direction with its label and strength range, as the editor's sliders do."""
    from alae_rt.cli import main

    before = dict(tiny_rt.direction_info)
    tiny_rt.direction_info["up"] = {"label": "Looking up", "range": [-2.5, 4.0]}
    try:
        assert main(["client", "info", "--server", tiny_server.address]) == 0
    finally:
        tiny_rt.direction_info.clear()
        tiny_rt.direction_info.update(before)
    out = capsys.readouterr().out
    assert "directions:  2, for edit --direction NAME=STRENGTH" in out
    lines = out.splitlines()
    assert "  up       Looking up  [-2.5, 4]" in lines
    assert any(line.startswith("  layered  [") for line in lines)  # no label of its own: the default range
    assert "method alae" in out


def test_health_reflection_and_metrics_endpoint(tiny_server):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with AlaeClient(tiny_server.address) as c:
        assert c.health() == "SERVING" and c.health("alae_rt.v1.Alae") == "SERVING"
        c.encode(images(1))
        stub = reflection_pb2_grpc.ServerReflectionStub(c.channel)
        replies = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    services = {s.name for s in replies[0].list_services_response.service}
    assert {"alae_rt.v1.Alae", "grpc.health.v1.Health"} <= services
    text = urllib.request.urlopen(f"http://127.0.0.1:{tiny_server.server.metrics_port}/metrics", timeout=10).read()
    text = text.decode()
    for needle in ('alae_rt_requests_total{code="OK",method="Encode"}', "alae_rt_request_latency_seconds_bucket",
                   'alae_rt_batch_size_bucket{le="1.0",op="encode"}', "alae_rt_queue_depth",
                   'alae_rt_images_per_second{op="encode"}', 'alae_rt_images_total{op="encode"}',
                   "alae_rt_decoded_images_total", 'alae_rt_decode_pixels{state="waiting"}', "alae_rt_overloaded 0.0"):
        assert needle in text, needle


# ---- many callers at once ------------------------------------------------------------------------------------------


def test_64_concurrent_callers_each_get_their_own_answer(tiny_server, tiny_rt):
    """Distinct inputs and mixed parameters (noise modes, seeds, operations) merged into shared batches."""
    rt, s = tiny_rt, tiny_server
    n_callers = 64
    x = images(n_callers, seed=20)
    w = latents(n_callers, seed=21)

    def request(i: int):
        kind = i % 4
        if kind == 0:
            return "decode", {"latents": w[i:i + 1], "noise": "const"}
        if kind == 1:
            return "decode", {"latents": w[i:i + 1], "noise": "random", "seed": 1000 + i}
        if kind == 2:
            return "generate", {"seeds": [500 + i], "noise": "random"}
        return "reconstruct", {"images": x[i:i + 1], "noise": "none"}

    def reference(i: int) -> np.ndarray:
        op, kw = request(i)
        if op == "decode":
            return u8(rt, rt.decode(torch.from_numpy(kw["latents"]), noise=kw["noise"], seed=kw.get("seed")))
        if op == "generate":
            return u8(rt, rt.generate(seeds=kw["seeds"], noise="random"))
        return u8(rt, rt.reconstruct(list(kw["images"]), noise="none"))

    batches_before = s.metric("alae_rt_batch_size_count", op="decode")
    singles_before = s.metric("alae_rt_batch_size_bucket", op="decode", le="1.0")

    async def main():
        clients = [AsyncAlaeClient(s.address) for _ in range(8)]
        try:
            gate = s.hold_compute()  # everything queues up first: the batches are then as full as they can be
            calls = [asyncio.ensure_future(getattr(clients[i % 8], request(i)[0])(**request(i)[1]))
                     for i in range(n_callers)]
            t0 = time.monotonic()
            service = s.server.service

            def pending():
                return service.decode_batcher.pending, service.encode_batcher.pending

            # 48 decode-only callers and 16 reconstructions, which wait in the encoder's queue first
            while pending() != (48, 16) and time.monotonic() - t0 < 60:
                await asyncio.sleep(0.01)
            assert pending() == (48, 16)
            gate.set()
            return await asyncio.gather(*calls)
        finally:
            for c in clients:
                await c.close()

    results = asyncio.run(main())
    for i, res in enumerate(results):
        same_images(res.images, reference(i))
    batches = s.metric("alae_rt_batch_size_count", op="decode") - batches_before
    singles = s.metric("alae_rt_batch_size_bucket", op="decode", le="1.0") - singles_before
    assert batches - singles > 0, "no decode batch held more than one request"
    assert batches <= n_callers / 2  # 64 single-image decodes merged at least two to a batch on average


def test_grpc_status_is_ok_for_an_empty_model_info_request(tiny_server):
    with grpc.insecure_channel(tiny_server.address) as ch:
        from alae_rt.serve import alae_rt_pb2_grpc as pb_grpc

        info = pb_grpc.AlaeStub(ch).GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert info.resolution == 16


def test_png_through_codec_processes_matches_the_threads(tiny_rt):
    """PNG in and out through the codec processes (the default) gives what the threads give (--codec-processes 0)."""
    x = images(3, seed=21)
    answers = {}
    for processes in (2, 0):
        cfg = ServeConfig(port=0, codec_processes=processes)
        with ServerThread(tiny_rt, cfg) as s, AlaeClient(s.address) as c:
            jobs = s.server.codec.jobs
            w = c.encode([png(a) for a in x])
            out = c.reconstruct([png(a) for a in x], format="png", noise="const")
            answers[processes] = (w, out.images)
            assert s.server.codec.started == processes
            assert s.server.codec.jobs - jobs == (9 if processes else 0)  # 3 decodes for each call, 3 encodes
    np.testing.assert_array_equal(answers[2][0], answers[0][0])
    for a, b in zip(answers[2][1], answers[0][1]):
        np.testing.assert_array_equal(a, b)


def test_a_lone_calls_unencoded_response_is_framed_on_the_loop(tiny_rt, monkeypatch):
    """RAW pixels and latents of a call with no other in flight are framed on the event loop (no hop to the pool and
    back); PNG, and RAW over INLINE_RESPONSE_BYTES, in the pool. The pixels are the same either way."""
    from alae_rt.serve import service as service_module

    threads: list[str] = []
    with ServerThread(tiny_rt, ServeConfig(port=0, max_delay_ms=1)) as st, AlaeClient(st.address) as c:
        service = st.server.service
        frame = service._response

        def recorded(*args, **kwargs):
            threads.append("loop" if threading.current_thread() is st._thread else "pool")
            return frame(*args, **kwargs)

        monkeypatch.setattr(service, "_response", recorded)
        w = latents(2, seed=4)
        inline = c.decode(w, format="raw").images
        c.stub.Decode(pb.DecodeRequest(latents=pb.Tensor(shape=[2, 32], data=w.tobytes()),
                                       output=pb.OutputOptions(return_latents=True, skip_images=True)))
        as_png = c.decode(w, format="png").images
        monkeypatch.setattr(service_module, "INLINE_RESPONSE_BYTES", 16 * 16 * 3)  # one image of this model
        pooled = c.decode(w, format="raw").images
    assert threads == ["loop", "loop", "pool", "pool"]
    for a, b, p in zip(inline, pooled, as_png):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, p)


def test_client_verbs_name_the_bad_file_not_its_index_in_a_request(tiny_rt, tmp_path, capsys):
    """The client sends a folder in requests of --max-images; the server's error names images[k] within one request,
    which the client turns back into the file."""
    from helpers import assert_one_line_error, run_cli

    folder = tmp_path / "faces"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(folder / f"{i:02d}.png")
    (folder / "03.png").write_bytes(b"not a png at all")
    with ServerThread(tiny_rt, ServeConfig(port=0, max_delay_ms=1, max_images=2)) as st:
        for verb in ("encode", "reconstruct"):
            out = tmp_path / ("w.npy" if verb == "encode" else "rec")
            code, _, err = run_cli(capsys, "-q", "client", verb, str(folder), "--server", st.address, "-o", str(out))
            assert_one_line_error(code, err, str(folder / "03.png"))
            assert "images[" not in err and "wrote 2 of 4" in err  # the first request's rows were kept
