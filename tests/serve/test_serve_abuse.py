"""Abusive requests against a real server on 127.0.0.1 (issue 13): cheap requests must not buy expensive work, work
for a caller who has gone stops, health shows overload, shutdown keeps its grace, every bad message is a precise
INVALID_ARGUMENT, outputs are finite. Budgets are small, so that each abuse is cheap to make and the protection
shows."""

from __future__ import annotations

import asyncio
import io
import logging
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image
from serve_helpers import ServerThread, images, latents, one_torch_thread, png, tiny_rt

from alae_rt import Runtime, save_checkpoint
from alae_rt.latents import LATENT_LIMIT
from alae_rt.serve import alae_rt_pb2 as pb
from alae_rt.serve import alae_rt_pb2_grpc as pb_grpc
from alae_rt.serve.client import AlaeClient, AsyncAlaeClient, RemoteError
from alae_rt.serve.config import ServeConfig

INVALID = grpc.StatusCode.INVALID_ARGUMENT
SIDE = 2048  # the attack's images: all black, 12 KB as PNG, ~0.15 s each to decode and pool on this machine
CFG = ServeConfig(port=0, max_images=32, max_queue=64, max_delay_ms=5, workers=2, image_workers=2,
                  max_pixels=SIDE * SIDE, max_request_pixels=16 * SIDE * SIDE, max_decode_pixels=2 * SIDE * SIDE,
                  metrics_port=0)
# A Decode during the attack may take longer than alone by at most this: the attack's decoding shares the CPU
# (and, for a few ms a image, the GIL), never a thread that the Decode needs. Before, it waited for the whole attack.
STALL_BOUND_S = 0.5
# After its caller has gone, a request's decoding stops at the next image: the images already running finish.
STOP_BOUND_S = 2.0


def black_png(side: int = SIDE, width: int | None = None) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width or side, side)).save(buf, format="PNG")
    return buf.getvalue()


BLACK = black_png()


def tensor(arr: np.ndarray) -> pb.Tensor:
    return pb.Tensor(shape=list(arr.shape), data=np.ascontiguousarray(arr, "<f4").tobytes())


@pytest.fixture(scope="module")
def server(tiny_rt):
    with ServerThread(tiny_rt, CFG) as s:
        yield s


def _until(cond, timeout: float = 30) -> None:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "condition not reached"
        time.sleep(0.005)


def _stage_idle(s: ServerThread) -> bool:
    stage = s.server.service.images
    return stage.running == 0 and stage.waiting == 0


# ---- cost bounded before it is spent ------------------------------------------------------------------------------


def test_two_abusive_callers_do_not_stall_a_decode_and_their_work_stops_at_their_deadline(server):
    """Issue 13, item 1: two Encodes of 16 all-black 2048x2048 PNGs (200 KB each) with a 1 s deadline. A Decode
    meanwhile takes its own time plus at most STALL_BOUND_S (before: it waited for both requests to be decoded), and
    once the attackers have gone their images stop: the running ones finish, the rest are never decoded."""
    decoded0 = server.metric("alae_rt_decoded_images_total")
    dropped0 = server.metric("alae_rt_dropped_images_total", op="image", reason="cancelled") + server.metric(
        "alae_rt_dropped_images_total", op="image", reason="deadline")
    w = latents(1)

    async def main():
        async with AsyncAlaeClient(server.address) as c, grpc.aio.insecure_channel(server.address) as ch:
            stub = pb_grpc.AlaeStub(ch)
            alone = []
            for _ in range(4):
                t0 = time.perf_counter()
                await c.decode(w)
                alone.append(time.perf_counter() - t0)
            attack = pb.EncodeRequest(images=[pb.Image(encoded=BLACK)] * 16)
            attackers = [stub.Encode(attack, timeout=1.0) for _ in range(2)]
            await asyncio.sleep(0.3)  # both are decoding now
            t0 = time.perf_counter()
            await c.decode(w)
            during = time.perf_counter() - t0
            codes = []
            for call in attackers:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call
                codes.append(err.value.code())
            return min(alone), during, codes, time.monotonic()

    alone, during, codes, gone = asyncio.run(main())
    assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 2
    assert during - alone < STALL_BOUND_S, f"a Decode took {during:.3f} s during the attack, {alone:.3f} s alone"
    _until(lambda: _stage_idle(server))
    assert time.monotonic() - gone < STOP_BOUND_S
    decoded = server.metric("alae_rt_decoded_images_total") - decoded0
    dropped = server.metric("alae_rt_dropped_images_total", op="image", reason="cancelled") + server.metric(
        "alae_rt_dropped_images_total", op="image", reason="deadline") - dropped0
    assert decoded < 32 and dropped > 0 and decoded + dropped <= 32, (decoded, dropped)
    assert server.server.service.images.peak_pixels <= CFG.max_decode_pixels  # the budget of pixels in flight


def test_a_request_over_the_pixel_budget_is_refused_before_decoding(server):
    decoded0 = server.metric("alae_rt_decoded_images_total")
    request = pb.EncodeRequest(images=[pb.Image(encoded=BLACK)] * 16 + [pb.Image(encoded=black_png(64))])
    with grpc.insecure_channel(server.address) as ch:
        t0 = time.perf_counter()
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.AlaeStub(ch).Encode(request, timeout=30)
        took = time.perf_counter() - t0
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.value.details() == f"images: 17 images of {16 * SIDE * SIDE + 64 * 64} pixels in all; this server " \
                                  f"decodes at most {16 * SIDE * SIDE} pixels per request (--max-request-pixels)"
    assert took < 1.0 and server.metric("alae_rt_decoded_images_total") == decoded0


def test_callers_take_turns_and_a_cancelled_caller_stops_at_the_next_image(server):
    """One caller sends 16 large images, another one small image just after: the small one is decoded after at most
    one of the large ones (not after all 16), and when the first caller cancels, its remaining images are dropped."""
    small = pb.EncodeRequest(images=[pb.Image(encoded=png(images(1)[0]))])
    cancelled0 = server.metric("alae_rt_dropped_images_total", op="image", reason="cancelled")
    decoded0 = server.metric("alae_rt_decoded_images_total")

    async def main():
        # Two connections (channels of one process share one unless told not to): two callers to the server.
        own = [("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.insecure_channel(server.address, options=own) as ch1, \
                grpc.aio.insecure_channel(server.address, options=own) as ch2:
            big = pb_grpc.AlaeStub(ch1).Encode(pb.EncodeRequest(images=[pb.Image(encoded=BLACK)] * 16))
            await asyncio.to_thread(_until, lambda: server.server.service.images.running == 2)
            await pb_grpc.AlaeStub(ch2).Encode(small, timeout=30)
            big_done = big.done()
            big.cancel()
            return big_done

    assert asyncio.run(main()) is False
    _until(lambda: _stage_idle(server))
    cancelled = server.metric("alae_rt_dropped_images_total", op="image", reason="cancelled") - cancelled0
    decoded = server.metric("alae_rt_decoded_images_total") - decoded0
    # the images running when it cancelled finish unanswered: neither decoded for a caller nor dropped unstarted
    assert cancelled >= 8 and 17 - CFG.image_workers <= decoded + cancelled < 17, (decoded, cancelled)


def test_latent_only_calls_never_wait_for_image_decoding(server):
    """With every image-decoding thread occupied, Decode, Generate and Edit of latents still answer."""
    with AlaeClient(server.address, timeout=10) as c, grpc.insecure_channel(server.address) as ch:
        gate = server.hold_images()
        try:
            stuck = pb_grpc.AlaeStub(ch).Encode.future(pb.EncodeRequest(images=[pb.Image(encoded=png(images(1)[0]))]))
            t0 = time.perf_counter()
            assert len(c.decode(latents(2)).images) == 2
            assert len(c.generate(seeds=[1, 2]).images) == 2
            assert len(c.edit(latents(1), {"up": 1.0}).images) == 1
            assert time.perf_counter() - t0 < 5 and not stuck.done()
        finally:
            gate.set()
        assert stuck.result(30).latents.shape == [1, 32]


def test_health_says_not_serving_while_a_queue_is_over_its_threshold(server, caplog):
    w = latents(16)
    caplog.set_level(logging.INFO, logger="alae_rt.serve")

    async def main():
        async with AsyncAlaeClient(server.address) as c:
            gate = server.hold_compute()
            try:
                calls = [asyncio.ensure_future(c.decode(w)) for _ in range(3)]  # 48 images, 32 (max_queue/2) wait
                await asyncio.to_thread(_until, lambda: server.server.service.decode_batcher.queued >= 32)
                await asyncio.to_thread(_until, lambda: server.metric("alae_rt_overloaded") == 1, 5)
                during = await c.health(), await c.health("alae_rt.v1.Alae")
            finally:
                gate.set()
            await asyncio.gather(*calls)
            await asyncio.to_thread(_until, lambda: server.metric("alae_rt_overloaded") == 0, 5)
            return during, await c.health()

    during, after = asyncio.run(main())
    assert during == ("NOT_SERVING", "NOT_SERVING") and after == "SERVING"
    events = [getattr(r, "fields", {}).get("event") for r in caplog.records]
    assert "overloaded" in events and "recovered" in events


# ---- bad messages are INVALID_ARGUMENT, counted and logged once ------------------------------------------------

HUGE_SHAPES = {"four 65536s": [65536] * 4, "two 2**32 - 1": [4294967295, 4294967295]}


def _requests_with(t: pb.Tensor) -> dict[str, tuple[str, object]]:
    return {
        "latents.data": ("Decode", pb.DecodeRequest(latents=t)),
        "edits[0].vector.data": ("Edit", pb.EditRequest(source=pb.LatentSource(seeds=[1]),
                                                        edits=[pb.DirectionEdit(vector=t, strength=1)])),
        "z.data": ("Generate", pb.GenerateRequest(z=t)),
        "a.latents.data": ("Mix", pb.MixRequest(a=pb.LatentSource(latents=t), b=pb.LatentSource(seeds=[1]))),
    }


@pytest.mark.parametrize("shape", list(HUGE_SHAPES))
def test_a_crafted_shape_is_invalid_argument_naming_the_field(server, shape, caplog):
    dims = HUGE_SHAPES[shape]
    caplog.set_level(logging.INFO, logger="alae_rt.serve")
    with grpc.insecure_channel(server.address) as ch:
        stub = pb_grpc.AlaeStub(ch)
        for field, (method, request) in _requests_with(pb.Tensor(shape=dims, data=b"")).items():
            with pytest.raises(grpc.RpcError) as err:
                getattr(stub, method)(request, timeout=30)
            assert err.value.code() == INVALID, err.value.details()
            need = 4 * int(np.prod(dims, dtype=object))
            assert err.value.details() == f"{field}: 0 bytes, but shape {dims} needs {need} (packed little-endian " \
                                          "float32)"
    assert not [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "internal_error"]


@pytest.mark.parametrize("method", ["Decode", "Encode", "Interpolate", "GetModelInfo"])
def test_a_corrupt_message_is_invalid_argument_counted_and_logged(server, method, caplog):
    caplog.set_level(logging.INFO, logger="alae_rt.serve")
    before = server.metric("alae_rt_requests_total", method=method, code="INVALID_ARGUMENT")
    with grpc.insecure_channel(server.address) as ch:
        kind = ch.unary_stream if method == "Interpolate" else ch.unary_unary
        call = kind(f"/alae_rt.v1.Alae/{method}")  # raw bytes out and in
        with pytest.raises(grpc.RpcError) as err:
            result = call(b"\xff" * 16, timeout=30)
            list(result) if method == "Interpolate" else result
    assert err.value.code() == INVALID
    assert err.value.details() == f"request: not a valid alae_rt.v1.{method}Request message (Wire format was corrupt)"
    assert server.metric("alae_rt_requests_total", method=method, code="INVALID_ARGUMENT") == before + 1
    lines = [r.fields for r in caplog.records if getattr(r, "fields", {}).get("event") == "rpc"]
    assert [(f["method"], f["code"]) for f in lines] == [(method, "INVALID_ARGUMENT")]


def test_an_unauthenticated_corrupt_message_is_refused_unread(tiny_rt):
    """gRPC receives a message before any interceptor sees the call (--max-message-mb bounds it); without a token
    it is refused as UNAUTHENTICATED, never parsed."""
    with ServerThread(tiny_rt, ServeConfig(port=0, auth_tokens=("a-token-of-16-chars-or-more",), warmup=False)) as s:
        with grpc.insecure_channel(s.address) as ch:
            with pytest.raises(grpc.RpcError) as err:
                ch.unary_unary("/alae_rt.v1.Alae/Decode")(b"\xff" * 16, timeout=30)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


# ---- outputs are finite ---------------------------------------------------------------------------------------


def test_latents_and_edits_that_would_overflow_are_refused_naming_the_field(server):
    huge = np.full((1, 32), 1e38, np.float32)
    cases = {
        "edits[0]: direction '#0' holds values up to 1e+38; directions lie within +-10000": pb.EditRequest(
            source=pb.LatentSource(seeds=[1]), edits=[pb.DirectionEdit(vector=tensor(huge[0]), strength=100)]),
        "latents.data: holds values up to 1e+38; latents lie within +-10000": pb.DecodeRequest(latents=tensor(huge)),
        "z.data: holds values up to 1e+38": pb.GenerateRequest(z=tensor(huge)),
        "source.latents.data: holds values up to 1e+38": pb.EditRequest(
            source=pb.LatentSource(latents=tensor(huge)), edits=[pb.DirectionEdit(name="up", strength=1)]),
    }
    with grpc.insecure_channel(server.address) as ch:
        stub = pb_grpc.AlaeStub(ch)
        for text, request in cases.items():
            method = {pb.EditRequest: "Edit", pb.DecodeRequest: "Decode", pb.GenerateRequest: "Generate"}[type(request)]
            with pytest.raises(grpc.RpcError) as err:
                getattr(stub, method)(request, timeout=30)
            assert err.value.code() == INVALID and err.value.details().startswith(text), err.value.details()


def test_edits_that_add_up_beyond_the_latent_range_are_clamped_to_it(server):
    big = np.full(32, 90.0, np.float32)  # two steps of 100 x 90 = 9000 each: 18000 in all
    with AlaeClient(server.address) as c:
        res = c.edit(latents(1), [(big, 100.0), (big, 100.0)], return_latents=True)
        again = c.decode(res.latents)  # what Edit returns, Decode takes
    assert np.isfinite(res.latents).all() and np.abs(res.latents).max() == LATENT_LIMIT
    assert len(res.images) == 1 and len(again.images) == 1


# ---- image messages: limits, EXIF, alpha, frames, truncation -------------------------------------------------------


def _encode_error(s: ServerThread, data: bytes) -> str:
    with grpc.insecure_channel(s.address) as ch, pytest.raises(grpc.RpcError) as err:
        pb_grpc.AlaeStub(ch).Encode(pb.EncodeRequest(images=[pb.Image(encoded=data)]), timeout=30)
    assert err.value.code() == INVALID
    return err.value.details()


def _gif_claiming(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("P", (1, 1)).save(buf, format="GIF")
    data = bytearray(buf.getvalue())
    data[6:10] = struct.pack("<HH", width, height)  # the logical screen: Pillow's size
    return bytes(data)


def test_an_image_over_the_limit_is_over_the_limit_and_named_once(server):
    message = _encode_error(server, black_png(SIDE, width=SIDE + 1))
    assert message == f"images[0].encoded: {SIDE + 1}x{SIDE} pixels is over the limit of {SIDE * SIDE}"
    # past Pillow's own decompression-bomb limit (~179 M pixels), the message is still ours
    assert _encode_error(server, _gif_claiming(20000, 20000)) == \
        f"images[0].encoded: 400000000 pixels is over the limit of {SIDE * SIDE}"


def test_a_jpeg_whose_header_claims_more_than_its_data_is_truncated(server):
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 2000, 2000)  # 8x8 pixels of data under a 2000x2000 header
    assert _encode_error(server, bytes(data)).startswith("images[0].encoded: corrupt or truncated image (the header "
                                                         "says 2000x2000 pixels")


def _encode(s: ServerThread, imgs) -> np.ndarray:
    with grpc.insecure_channel(s.address) as ch:
        resp = pb_grpc.AlaeStub(ch).Encode(pb.EncodeRequest(images=list(imgs)), timeout=30)
    return np.frombuffer(resp.latents.data, "<f4").reshape(list(resp.latents.shape))


def _raw(arr: np.ndarray) -> pb.Image:
    h, w, ch = arr.shape
    return pb.Image(raw=pb.RawImage(pixels=arr.tobytes(), width=w, height=h, channels=ch))


def test_exif_orientation_alpha_and_animation_are_decided(server):
    """A photo taken on its side comes out upright (EXIF orientation applied); a transparent pixel counts as white;
    an animated GIF gives its first frame."""
    face = images(1, r=24, seed=3)[0][:, :16]  # 24 high, 16 wide
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter anticlockwise: to be shown a quarter clockwise
    stored = np.rot90(face, 1)
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, format="PNG", exif=exif)
    upright, turned = _encode(server, [pb.Image(encoded=buf.getvalue()), _raw(face)])
    np.testing.assert_allclose(upright, turned, atol=1e-5)

    rgba = np.zeros((16, 16, 4), np.uint8)  # black under alpha 0
    rgba[4:12, 4:12] = (200, 30, 30, 255)
    white = np.full((16, 16, 3), 255, np.uint8)
    white[4:12, 4:12] = (200, 30, 30)
    composited, reference = _encode(server, [pb.Image(encoded=png(rgba)), _raw(white)])
    np.testing.assert_allclose(composited, reference, atol=1e-5)

    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    first, red = _encode(server, [pb.Image(encoded=gif.getvalue()), _raw(np.asarray(frames[0]))])
    np.testing.assert_allclose(first, red, atol=1e-5)


def test_model_info_names_the_weights_file_without_its_folder(tmp_path):
    path = tmp_path / "served" / "weights.safetensors"
    path.parent.mkdir()
    rt = Runtime.from_config("tiny", seed=1)
    save_checkpoint(path, rt.model.state_dict(), rt.config)
    with ServerThread(Runtime.load(path, max_batch=2), ServeConfig(port=0, warmup=False)) as s, \
            AlaeClient(s.address) as c:
        weights = c.info().weights
    assert "weights.safetensors" in weights and str(tmp_path) not in weights and "/" not in weights


# ---- SIGTERM keeps its grace ----------------------------------------------------------------------------------

SLOW_SERVER = """
import sys, time
from alae_rt.backends.eager import EagerBackend
decode = EagerBackend.decode
EagerBackend.decode = lambda self, styles, noise: (time.sleep(30), decode(self, styles, noise))[1]  # a long batch
from alae_rt.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_exits_within_grace_plus_a_second_though_work_still_runs(tmp_path):
    """SIGTERM with --grace-s 1 while a decode batch has 30 s to go: the call is cut at the end of the grace period and
    the process exits with status 0 within a second of it (before: it waited for the batch to end)."""
    grace = 1.0
    port_file, log_path = tmp_path / "port", tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", SLOW_SERVER, "serve", "--preset", "tiny", "--no-warmup",
                                 "--port", "0", "--port-file", str(port_file), "--metrics-port", "0",
                                 "--grace-s", str(grace), "--threads", "1"], stdout=log, stderr=subprocess.STDOUT)
    try:
        _until(lambda: proc.poll() is not None or (port_file.exists() and port_file.read_text().strip()), 60)
        assert proc.poll() is None, log_path.read_text()
        address = f"127.0.0.1:{port_file.read_text().strip()}"
        with AlaeClient(address, timeout=60) as c:
            _until(lambda: c.health() == "SERVING", 60)
            result: list = []
            caller = threading.Thread(target=lambda: result.append(_call_decode(c)))
            caller.start()
            metrics_port = _metrics_port(log_path)
            _until(lambda: _metric(metrics_port, "alae_rt_batch_size_count") == 0 and
                   _metric(metrics_port, "alae_rt_inflight_requests") == 1, 30)
            time.sleep(0.3)  # the batch is in the compute thread now
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
            took = time.monotonic() - t0
            caller.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert code == 0, log_path.read_text()
    assert took <= grace + 1.0, f"exited {took:.2f} s after SIGTERM with --grace-s {grace}"
    text = log_path.read_text()
    assert '"event": "grace_over"' in text and '"event": "abandoned"' in text
    assert isinstance(result[0], RemoteError)


def _call_decode(c: AlaeClient):
    try:
        return c.decode(latents(1))
    except RemoteError as exc:
        return exc


def _metrics_port(log_path: Path) -> int:
    import json

    for line in log_path.read_text().splitlines():
        if '"event": "listening"' in line:
            return json.loads(line)["metrics_port"]
    raise AssertionError("no listening line")


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))


def test_budgets_below_the_image_limit_are_refused_at_start():
    with pytest.raises(Exception, match=r"--max-request-pixels \(5\) and --max-decode-pixels .* must be >= "
                                        r"--max-pixels \(10\)"):
        ServeConfig(max_pixels=10, max_request_pixels=5).check(1)
