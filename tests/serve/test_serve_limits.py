"""Bad input, limits, auth, TLS, deadlines, cancellation, warm-up and drain against a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import datetime
import io
import ipaddress
import time

import grpc
import numpy as np
import pytest
import torch
from PIL import Image
from serve_helpers import ServerThread, images, latents, one_torch_thread, png, same_images, tiny_rt, tiny_server

from alae_rt import Runtime
from alae_rt.serve import alae_rt_pb2 as pb
from alae_rt.serve.client import AlaeClient, AsyncAlaeClient, RemoteError
from alae_rt.serve.config import ServeConfig, read_tokens

INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def tensor(arr: np.ndarray) -> pb.Tensor:
    return pb.Tensor(shape=list(arr.shape), data=np.ascontiguousarray(arr, "<f4").tobytes())


def bomb_png(side: int = 5000) -> bytes:
    """A few KB of PNG that decodes to side x side pixels."""
    buf = io.BytesIO()
    Image.new("L", (side, side)).save(buf, format="PNG")
    return buf.getvalue()


def raw(arr: np.ndarray, channels: int | None = None, pixels: bytes | None = None) -> pb.Image:
    h, w, c = arr.shape
    return pb.Image(raw=pb.RawImage(pixels=arr.tobytes() if pixels is None else pixels, width=w, height=h,
                                    channels=c if channels is None else channels))


GOOD = images(2)
W = latents(2)
NAN = W.copy()
NAN[1, 3] = np.nan
INF = W.copy()
INF[0, 0] = np.inf

# (RPC, request, status, text the message must contain: the field first)
BAD_INPUTS = {
    "corrupt image bytes": ("Encode", pb.EncodeRequest(images=[pb.Image(encoded=b"this is not a PNG at all")]),
                            INVALID, "images[0].encoded: not a readable image"),
    "truncated image": ("Encode", pb.EncodeRequest(images=[pb.Image(encoded=png(GOOD[0])),
                                                           pb.Image(encoded=png(GOOD[1])[:60])]),
                        INVALID, "images[1].encoded"),
    "decompression bomb": ("Encode", pb.EncodeRequest(images=[pb.Image(encoded=bomb_png())]),
                           INVALID, "images[0].encoded: 5000x5000 pixels is over the limit of 1000000"),
    "raw image over the pixel limit": ("Encode", pb.EncodeRequest(images=[pb.Image(raw=pb.RawImage(
        pixels=b"", width=2000, height=1000, channels=3))]), INVALID, "images[0].raw: 2000x1000 pixels is over"),
    "wrong channel count": ("Encode", pb.EncodeRequest(images=[raw(GOOD[0], channels=2)]),
                            INVALID, "images[0].raw.channels: 2"),
    "raw pixels of the wrong length": ("Reconstruct", pb.ReconstructRequest(images=[raw(GOOD[0], pixels=b"x" * 10)]),
                                       INVALID, "images[0].raw.pixels: 10 bytes"),
    "latent of the wrong length": ("Decode", pb.DecodeRequest(latents=tensor(latents(2, d=31))),
                                   INVALID, "latents.shape: [2, 31] does not fit"),
    "latent data shorter than its shape": ("Decode", pb.DecodeRequest(latents=pb.Tensor(shape=[2, 32], data=b"1234")),
                                           INVALID, "latents.data: 4 bytes"),
    "latent with NaN": ("Decode", pb.DecodeRequest(latents=tensor(NAN)), INVALID, "latents.data: holds NaN or Inf"),
    "latent with Inf": ("Edit", pb.EditRequest(source=pb.LatentSource(latents=tensor(INF)),
                                               edits=[pb.DirectionEdit(name="up", strength=1)]),
                        INVALID, "source.latents.data: holds NaN or Inf"),
    "z with styles shape": ("Generate", pb.GenerateRequest(z=tensor(latents(1, styles=6))), INVALID, "z.shape"),
    "empty image batch": ("Encode", pb.EncodeRequest(), INVALID, "images: empty batch"),
    "empty latent batch": ("Decode", pb.DecodeRequest(latents=pb.Tensor(shape=[0, 32])), INVALID,
                           "latents.shape: [0, 32] is empty"),
    "no latents": ("Decode", pb.DecodeRequest(), INVALID, "latents: missing"),
    "neither seeds nor z": ("Generate", pb.GenerateRequest(), INVALID, "seeds: give exactly one of seeds and z"),
    "too many images": ("Encode", pb.EncodeRequest(images=[raw(GOOD[0])] * 9), EXHAUSTED,
                        "images: 9 images; this server takes at most 8"),
    "too many seeds": ("Generate", pb.GenerateRequest(seeds=list(range(9))), EXHAUSTED, "seeds: 9 seeds"),
    "too many latents": ("Decode", pb.DecodeRequest(latents=tensor(latents(9))), EXHAUSTED, "latents.shape: 9 latents"),
    "unknown direction": ("Edit", pb.EditRequest(source=pb.LatentSource(latents=tensor(W)),
                                                 edits=[pb.DirectionEdit(name="up", strength=1),
                                                        pb.DirectionEdit(name="smile", strength=1)]),
                          INVALID, "edits[1].name: unknown direction 'smile'; known: layered, up"),
    "strength out of range": ("Edit", pb.EditRequest(source=pb.LatentSource(latents=tensor(W)),
                                                     edits=[pb.DirectionEdit(name="up", strength=1e6)]),
                              INVALID, "edits[0].strength: 1000000.0 is out of range [-100, 100]"),
    "NaN strength": ("Edit", pb.EditRequest(source=pb.LatentSource(seeds=[1]),
                                            edits=[pb.DirectionEdit(name="up", strength=float("nan"))]),
                     INVALID, "edits[0].strength: nan"),
    "direction vector of the wrong length": ("Edit", pb.EditRequest(
        source=pb.LatentSource(seeds=[1]), edits=[pb.DirectionEdit(vector=tensor(np.ones(5)), strength=1)]),
        INVALID, "edits[0].vector.shape: [5]"),
    "too many edits": ("Edit", pb.EditRequest(source=pb.LatentSource(seeds=[1]),
                                              edits=[pb.DirectionEdit(name="up", strength=1)] * 65),
                       INVALID, "edits: 65 edits; at most 64"),
    "latent with too many dimensions": ("Decode", pb.DecodeRequest(latents=pb.Tensor(shape=[1] * 5, data=b"0000")),
                                        INVALID, "latents.shape: 5 dimensions"),
    "no edits": ("Edit", pb.EditRequest(source=pb.LatentSource(seeds=[1])), INVALID, "edits: no edits given"),
    "layer out of range": ("Edit", pb.EditRequest(source=pb.LatentSource(seeds=[1]), layers=[0, 6],
                                                  edits=[pb.DirectionEdit(name="up", strength=1)]),
                           INVALID, "layers[1]: 6 is out of range 0..5"),
    "two sources at once": ("Mix", pb.MixRequest(a=pb.LatentSource(seeds=[1], latents=tensor(W)),
                                                 b=pb.LatentSource(seeds=[2])),
                            INVALID, "a: give exactly one of images, latents or seeds (got latents and seeds)"),
    "mismatched batches": ("Mix", pb.MixRequest(a=pb.LatentSource(seeds=[1, 2]), b=pb.LatentSource(seeds=[3, 4, 5])),
                           INVALID, "b: batch size 3 differs from a's 2"),
    "cutoff out of range": ("Mix", pb.MixRequest(a=pb.LatentSource(seeds=[1]), b=pb.LatentSource(seeds=[2]), cutoff=7),
                            INVALID, "cutoff: 7 is out of range 0..6"),
    "psi out of range": ("Generate", pb.GenerateRequest(seeds=[1], truncation_psi=50), INVALID,
                         "truncation_psi: 50.0 is out of range"),
    "generation cutoff out of range": ("Generate", pb.GenerateRequest(seeds=[1], truncation_cutoff=7), INVALID,
                                       "truncation_cutoff: 7 is out of range 0..6"),
    "source psi out of range": ("Mix", pb.MixRequest(a=pb.LatentSource(seeds=[1], truncation_psi=-3),
                                                     b=pb.LatentSource(seeds=[2])),
                                INVALID, "a.truncation_psi: -3.0 is out of range [-2.0, 2.0]"),
    "mismatched interpolation ends": ("Interpolate", pb.InterpolateRequest(
        a=pb.LatentSource(latents=tensor(latents(2, styles=6))), b=pb.LatentSource(seeds=[3, 4, 5]), steps=3),
        INVALID, "b: batch size 3 differs from a's 2 (and neither is 1)"),
    "zero direction in set mode": ("Edit", pb.EditRequest(
        source=pb.LatentSource(seeds=[1]), mode=pb.EDIT_MODE_SET,
        edits=[pb.DirectionEdit(name="up", strength=1), pb.DirectionEdit(vector=tensor(np.zeros(32)), strength=1)]),
        INVALID, "edits[1]: direction '#1' is zero; edit mode 'set' needs a non-zero direction"),
    "steps out of range": ("Interpolate", pb.InterpolateRequest(a=pb.LatentSource(seeds=[1]),
                                                                b=pb.LatentSource(seeds=[2]), steps=1),
                           INVALID, "steps: 1 is out of range 2..256"),
    "noise seed without random noise": ("Decode", pb.DecodeRequest(latents=tensor(W), noise=pb.Noise(
        mode=pb.NOISE_MODE_CONST, seed=3)), INVALID, "noise.seed: only applies to NOISE_MODE_RANDOM"),
    "unknown output format": ("Decode", pb.DecodeRequest(latents=tensor(W), output=pb.OutputOptions(format=9)),
                              INVALID, "output.format: unknown format 9"),
}


@pytest.fixture(scope="module")
def strict_server(tiny_rt):
    cfg = ServeConfig(port=0, max_images=8, max_queue=64, max_pixels=1_000_000, max_message_mb=0.25)
    with ServerThread(tiny_rt, cfg) as s:
        yield s


def _call(stub, method: str, request):
    result = getattr(stub, method)(request, timeout=30)
    return list(result) if method == "Interpolate" else result


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_a_precise_status_naming_the_field(strict_server, case):
    from alae_rt.serve import alae_rt_pb2_grpc as pb_grpc

    method, request, code, text = BAD_INPUTS[case]
    with grpc.insecure_channel(strict_server.address) as ch:
        with pytest.raises(grpc.RpcError) as err:
            _call(pb_grpc.AlaeStub(ch), method, request)
    assert err.value.code() == code, err.value.details()
    assert text in err.value.details()


def test_bad_input_disturbs_neither_other_callers_nor_health(strict_server, tiny_rt):
    """All the bad calls at once, interleaved with good ones: the good ones get their right answers."""
    from alae_rt.serve import alae_rt_pb2_grpc as pb_grpc

    async def main():
        async with grpc.aio.insecure_channel(strict_server.address) as ch, \
                AsyncAlaeClient(strict_server.address) as client:
            stub = pb_grpc.AlaeStub(ch)
            bad = []
            for method, request, _, _ in BAD_INPUTS.values():
                call = getattr(stub, method)(request)
                bad.append(call if method != "Interpolate" else _drain_stream(call))
            good = [client.decode(W, noise="random", seed=i) for i in range(8)]
            results = await asyncio.gather(*bad, *good, return_exceptions=True)
            return results[:len(bad)], results[len(bad):], await client.health()

    bad, good, health = asyncio.run(main())
    assert all(isinstance(r, grpc.RpcError) for r in bad)
    for i, res in enumerate(good):
        same_images(res.images, tiny_rt.to_uint8(tiny_rt.decode(torch.from_numpy(W), noise="random", seed=i)))
    assert health == "SERVING"
    assert strict_server.metric("alae_rt_requests_total", method="Encode", code="INVALID_ARGUMENT") >= 5


async def _drain_stream(call):
    return [f async for f in call]


def test_message_over_the_size_limit(strict_server):
    big = np.zeros((300, 300, 3), np.uint8)  # 270 KB raw, over the 0.25 MiB limit
    with AlaeClient(strict_server.address) as c:
        with pytest.raises(RemoteError) as err:
            c.encode(big)
        assert err.value.code == EXHAUSTED
        assert "larger than max" in err.value.details.lower()
    # A response over the limit is refused by the server itself, with a message that says what to do.
    with ServerThread(strict_server.server.rt, ServeConfig(port=0, max_message_mb=0.004)) as s, \
            AlaeClient(s.address) as c:
        with pytest.raises(RemoteError) as err:
            c.decode(latents(8), format="raw")  # 8 x 768 bytes of pixels > 4 KiB
        assert err.value.code == EXHAUSTED
        assert err.value.details.startswith("output: the response would be")
        assert len(c.decode(latents(1), format="raw").images) == 1


# ---- queue, deadline, cancellation ------------------------------------------------------------------------------


def _wait(cond, timeout: float = 30) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not reached")
        time.sleep(0.005)


@pytest.fixture
def queue_server(tiny_rt):
    cfg = ServeConfig(port=0, max_images=4, max_queue=4, max_delay_ms=0)
    with ServerThread(tiny_rt, cfg) as s:
        yield s


def test_a_full_queue_answers_resource_exhausted(queue_server):
    s = queue_server
    decoder = s.server.service.decode_batcher

    async def main():
        async with AsyncAlaeClient(s.address) as c:
            gate = s.hold_compute()
            first = asyncio.ensure_future(c.decode(latents(2)))  # taken into a batch, waits for the compute thread
            await _until(lambda: decoder.pending == 2 and decoder.queued == 0)
            second = asyncio.ensure_future(c.decode(latents(4, seed=1)))  # fills the queue: 4 of 4
            await _until(lambda: decoder.queued == 4)
            with pytest.raises(RemoteError) as err:
                await c.decode(latents(1, seed=2))
            gate.set()
            return err.value, await first, await second

    err, first, second = asyncio.run(main())
    assert err.code == EXHAUSTED and "the decode queue is full (4 of 4 images waiting)" in err.details
    assert len(first.images) == 2 and len(second.images) == 4
    assert s.metric("alae_rt_requests_total", method="Decode", code="RESOURCE_EXHAUSTED") == 1


async def _until(cond, timeout: float = 30) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("how", ["deadline", "cancel"])
def test_requests_whose_caller_gave_up_are_dropped_before_compute(queue_server, how):
    s = queue_server
    decoder = s.server.service.decode_batcher
    images_before = s.metric("alae_rt_images_total", op="decode")

    async def main():
        async with AsyncAlaeClient(s.address) as c:
            gate = s.hold_compute()
            blocker = asyncio.ensure_future(c.decode(latents(1)))
            await _until(lambda: decoder.pending == 1 and decoder.queued == 0)
            if how == "deadline":
                late = asyncio.ensure_future(c.decode(latents(3, seed=5), timeout=1.5))
                await _until(lambda: decoder.queued == 3)
                with pytest.raises(RemoteError) as err:
                    await late
                code = err.value.code
            else:
                call = c.stub.Decode(pb.DecodeRequest(latents=tensor(latents(3, seed=5))))
                await _until(lambda: decoder.queued == 3)
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call
                code = grpc.StatusCode.CANCELLED
            # the server sees the call end while it still waits in the queue
            await _until(lambda: s.server.service.inflight == 1)
            gate.set()
            await blocker
            return code

    code = asyncio.run(main())
    assert code == (grpc.StatusCode.DEADLINE_EXCEEDED if how == "deadline" else grpc.StatusCode.CANCELLED)
    _wait(lambda: decoder.pending == 0)
    reason = "deadline" if how == "deadline" else "cancelled"
    assert s.metric("alae_rt_dropped_images_total", op="decode", reason=reason) >= 3
    assert s.metric("alae_rt_images_total", op="decode") - images_before == 1  # only the blocker was computed


# ---- auth and TLS -----------------------------------------------------------------------------------------------

TOKEN = "test-token-5f0c2a9e1b7d4c38"


def test_bearer_token_auth(tiny_rt, tmp_path):
    token_file = tmp_path / "tokens"
    token_file.write_text(f"# tokens, one a line\nan-older-token-still-valid\n{TOKEN}\n")
    cfg = ServeConfig(port=0, auth_tokens=read_tokens(token_file))
    with ServerThread(tiny_rt, cfg) as s:
        with AlaeClient(s.address) as anonymous:
            assert anonymous.health() == "SERVING"  # load balancers probe without credentials
            for call in (lambda: anonymous.info(), lambda: anonymous.encode(GOOD),
                         lambda: list(anonymous.interpolate(W, W, steps=2))):
                with pytest.raises(RemoteError) as err:
                    call()
                assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
                assert "bearer token" in err.value.details
        with AlaeClient(s.address, token="wrong-token-0000000000") as wrong, pytest.raises(RemoteError) as err:
            wrong.info()
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
        (tmp_path / "mine").write_text(TOKEN + "\n")
        with AlaeClient(s.address, token_file=tmp_path / "mine") as ok:
            assert ok.info().resolution == 16
            assert ok.encode(GOOD).shape == (2, 32)
        assert s.metric("alae_rt_requests_total", method="Encode", code="UNAUTHENTICATED") == 1
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(Exception, match="shorter than 16"):
        read_tokens(short)


def _self_signed(tmp_path):
    crypto = pytest.importorskip("cryptography")
    del crypto
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_with_a_self_signed_certificate_and_a_token(tiny_rt, tmp_path):
    cert, key = _self_signed(tmp_path)
    cfg = ServeConfig(port=0, tls_cert=cert, tls_key=key, auth_tokens=(TOKEN,))
    with ServerThread(tiny_rt, cfg) as s:
        with AlaeClient(s.address, tls_ca=cert, server_name="localhost", token=TOKEN) as c:
            w = c.encode(GOOD)
            np.testing.assert_allclose(w, tiny_rt.encode(list(GOOD)).numpy(), atol=1e-5)
        with AlaeClient(s.address, tls_ca=cert, server_name="localhost") as no_token, pytest.raises(RemoteError) as err:
            no_token.info()
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
        with AlaeClient(s.address, timeout=5) as plaintext, pytest.raises(RemoteError) as err:
            plaintext.info()
        assert err.value.code == grpc.StatusCode.UNAVAILABLE


# ---- health while warming up and draining -------------------------------------------------------------------------


def test_health_is_not_serving_while_warming_up(tiny_rt):
    st = ServerThread(tiny_rt, ServeConfig(port=0), wait_ready=False)
    gate = st.hold_compute()  # the warm-up waits behind it
    with st, AlaeClient(st.address) as c:
        assert c.health() == "NOT_SERVING" and c.health("alae_rt.v1.Alae") == "NOT_SERVING"
        with pytest.raises(RemoteError) as err:
            c.encode(GOOD)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE and "warming up" in err.value.details
        assert c.info().resolution == 16  # the model is loaded: info answers
        gate.set()
        st.call(st.server.wait_ready(30))
        assert c.health() == "SERVING"
        assert c.encode(GOOD).shape == (2, 32)


class SignatureRecorder:
    """Wraps a backend and records what a compiler specialises on: dtype, device, layout and shapes, with the
    batch axis read as 1 or "n" (a compiled backend goes dynamic on it after its second batch size)."""

    def __init__(self, inner):
        self.inner, self.name, self.seen = inner, "recorded", set()

    @staticmethod
    def sig(t):
        if t is None:
            return None
        return (t.dtype, t.device.type, t.is_contiguous(), 1 if t.shape[0] == 1 else "n", tuple(t.shape[1:]))

    def encode(self, x):
        self.seen.add(("encode", self.sig(x)))
        return self.inner.encode(x)

    def decode(self, styles, noise):
        self.seen.add(("decode", self.sig(styles), tuple(self.sig(m) for m in noise)))
        return self.inner.decode(styles, noise)


def test_warm_up_runs_what_serving_runs():
    """A compiled backend compiles each new input signature (tens of seconds at 1024 on a CPU): the warm-up must
    present every signature that merged batches of encodes and of decodes with noise maps present later."""
    rt = Runtime.from_config("tiny", seed=3, max_batch=4)
    rt.backend = recorder = SignatureRecorder(rt.backend)
    with ServerThread(rt, ServeConfig(port=0, max_delay_ms=50)) as st:
        warm = set(recorder.seen)
        assert {s[0] for s in warm} == {"encode", "decode"}
        recorder.seen.clear()

        async def main():
            async with AsyncAlaeClient(st.address) as c:
                calls = [c.decode(latents(1, seed=k), noise=("const", "random")[k % 2]) for k in range(8)]
                calls += [c.reconstruct(images(1, seed=k)) for k in range(4)]
                calls += [c.generate(seeds=[k, k + 1]) for k in range(3)]
                calls += [c.decode(latents(3, seed=9)), c.encode(images(4))]
                await asyncio.gather(*calls)

        st.call(main())
        assert recorder.seen - warm == set()
        assert any(s[0] == "decode" and s[1][3] == "n" for s in recorder.seen)  # merged batches were served


def test_drain_finishes_calls_in_flight_and_refuses_new_ones(tiny_rt):
    with ServerThread(tiny_rt, ServeConfig(port=0, max_delay_ms=0)) as st:
        service = st.server.service

        async def main():
            async with AsyncAlaeClient(st.address) as c:
                gate = st.hold_compute()
                calls = [asyncio.ensure_future(c.decode(latents(1, seed=i))) for i in range(6)]
                await _until(lambda: service.inflight == 6)
                drained = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(st.server.drain(30), st.loop))
                await _until(lambda: service.state == "draining")
                health = await c.health()
                with pytest.raises(RemoteError) as err:
                    await c.decode(latents(1))
                gate.set()
                results = await asyncio.gather(*calls)
                await drained
                return health, err.value, results

        health, err, results = asyncio.run(main())
    assert health == "NOT_SERVING"
    assert err.code == grpc.StatusCode.UNAVAILABLE and "shutting down" in err.details
    for i, res in enumerate(results):
        same_images(res.images, tiny_rt.to_uint8(tiny_rt.decode(torch.from_numpy(latents(1, seed=i)), noise="const")))
