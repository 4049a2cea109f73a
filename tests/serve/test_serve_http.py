"""The HTTP API (alae-rt serve --http-port): the same calls, limits, errors and tokens as gRPC, with HTTP status
codes; CORS off unless asked; uploads bounded before decoding; no endpoint that reads a path the caller names."""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from PIL import Image
from serve_helpers import ServerThread, images, latents, one_torch_thread, png, tiny_rt

from alae_rt.serve import alae_rt_pb2 as pb
from alae_rt.serve import alae_rt_pb2_grpc as pb_grpc
from alae_rt.serve.config import ServeConfig

TOKEN = "http-test-token-8d1f4b2a6c"


def call(s: ServerThread, path: str, body=None, headers: dict | None = None, method: str | None = None):
    """(status, headers, body) of one HTTP request to the server; a dict body is sent as JSON."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    hdrs = {"Content-Type": "application/json"} if isinstance(body, dict) else {}
    hdrs.update(headers or {})
    req = urllib.request.Request(s.server.http_url.rstrip("/") + path, data=data, headers=hdrs, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def tensor(arr: np.ndarray) -> dict:
    return {"shape": list(arr.shape), "data": b64(arr.astype("<f4").tobytes())}


def pixels(b64_png: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64_png))))


@pytest.fixture(scope="module")
def http_server(tiny_rt):
    cfg = ServeConfig(port=0, http_port=0, max_images=4, max_queue=8, max_delay_ms=0, max_pixels=64 * 64,
                      max_message_mb=0.05)
    with ServerThread(tiny_rt, cfg) as s:
        yield s


def test_edit_over_http_equals_edit_over_grpc_and_its_latent_round_trips(http_server):
    s = http_server
    face = png(images(1)[0])
    req = {"source": {"images": [{"encoded": b64(face)}]}, "edits": [{"name": "up", "strength": 1.5}],
           "layers": [0, 1], "output": {"return_latents": True}}
    status, headers, body = call(s, "/api/v1/edit", req)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    got = json.loads(body)
    with grpc.insecure_channel(s.address) as ch:
        ref = pb_grpc.AlaeStub(ch).Edit(pb.EditRequest(
            source=pb.LatentSource(images=[pb.Image(encoded=face)]), layers=[0, 1],
            edits=[pb.DirectionEdit(name="up", strength=1.5)], output=pb.OutputOptions(return_latents=True)))
    ref_pixels = np.asarray(Image.open(io.BytesIO(ref.images[0].encoded)))
    assert np.abs(pixels(got["images"][0]["encoded"]).astype(int) - ref_pixels).max() <= 1
    assert got["latents"]["shape"] == [1, 6, 32]  # layers given: per-layer styles
    # the edited latent decodes to the same image: the page keeps latents, not only pixels
    status, _, body = call(s, "/api/v1/decode", {"latents": got["latents"]})
    assert status == 200
    assert np.abs(pixels(json.loads(body)["images"][0]["encoded"]).astype(int) - ref_pixels).max() <= 1


def test_info_names_directions_with_labels_ranges_and_layer_groups(http_server):
    status, _, body = call(http_server, "/api/v1/info")
    info = json.loads(body)
    assert status == 200 and info["resolution"] == 16
    assert [d["name"] for d in info["direction_info"]] == info["directions"] == ["layered", "up"]
    assert all(d["min"] == -10 and d["max"] == 10 for d in info["direction_info"])  # no directions.json: default
    assert {r["name"]: r["layers"] for r in info["style_ranges"]} == {"coarse": [0, 1, 2, 3], "middle": [4, 5]}


def test_binary_images_in_and_out_and_psnr(http_server):
    face = png(images(1, seed=4)[0])
    status, headers, body = call(http_server, "/api/v1/reconstruct", face,
                                 {"Content-Type": "image/png", "Accept": "image/png"})
    assert status == 200 and headers["Content-Type"] == "image/png" and body.startswith(b"\x89PNG")
    status, _, body = call(http_server, "/api/v1/reconstruct", {"images": [{"encoded": b64(face)}],
                                                                "return_psnr": True})
    got = json.loads(body)
    assert status == 200 and len(got["psnr"]) == 1 and 0 < got["psnr"][0] < 100
    status, _, body = call(http_server, "/api/v1/interpolate", {"a": {"seeds": [1]}, "b": {"seeds": [2]},
                                                                "steps": 3})
    assert status == 200 and [f.get("index", 0) for f in json.loads(body)["frames"]] == [0, 1, 2]


@pytest.mark.parametrize("path, body, status, message", [
    ("/api/v1/edit", {"source": {"seeds": [1]}, "edits": [{"name": "nope", "strength": 1}]}, 400,
     "edits[0].name: unknown direction 'nope'"),
    ("/api/v1/edit", {"source": {"seeds": [1]}, "edits": [{"name": "/etc/passwd", "strength": 1}]}, 400,
     "edits[0].name: unknown direction '/etc/passwd'"),
    ("/api/v1/mix", {"a": {"seeds": [1]}, "b": {"seeds": [2]}, "cutoff": 99}, 400, "cutoff"),
    ("/api/v1/generate", {"seeds": [1, 2, 3, 4, 5]}, 413, "seeds: 5 seeds; this server takes at most 4"),
    ("/api/v1/reconstruct", {"images": [{"encoded": b64(b"not an image")}]}, 400, "images[0].encoded: not a readable"),
    ("/api/v1/generate", {"seeds": [1], "colour": 3}, 400, "request: not a valid alae_rt.v1.GenerateRequest JSON"),
    ("/api/v1/nothing", {}, 404, "no such call /api/v1/nothing"),
])
def test_errors_are_json_with_the_grpc_message_and_an_http_status(http_server, path, body, status, message):
    got, headers, data = call(http_server, path, body)
    assert got == status and headers["Content-Type"].startswith("application/json")
    assert message in json.loads(data)["message"]
    assert "Traceback" not in data.decode()


def test_a_get_says_whether_the_call_exists(http_server):
    """GET of an unknown path under the API is 404 with the calls (it was 405 for any name, since POST matched it);
    GET of a call is 405: calls take a POST body."""
    status, _, data = call(http_server, "/api/v1/nope")
    assert status == 404 and "no such call /api/v1/nope; the calls are" in json.loads(data)["message"]
    status, _, data = call(http_server, "/api/v1/decode")
    assert status == 405 and "takes a POST with a JSON body" in json.loads(data)["message"]
    assert call(http_server, "/api/v1/info")[0] == 200 and call(http_server, "/api/v1/health")[0] == 200


def test_uploads_are_bounded_before_decoding(http_server):
    s = http_server
    decoded = s.metric("alae_rt_decoded_images_total")
    big = png(images(1, r=128)[0])  # 128x128 > --max-pixels 64x64: refused from the PNG header
    status, _, data = call(s, "/api/v1/encode", big, {"Content-Type": "image/png"})
    assert status == 400 and "over the limit" in json.loads(data)["message"]
    huge = b"x" * 60_000  # over --max-message-mb (0.05 MiB): refused from Content-Length, unread
    status, _, data = call(s, "/api/v1/encode", huge, {"Content-Type": "image/png"})
    assert status == 413 and json.loads(data)["message"].startswith("request: 60000 bytes, over this server's")
    assert s.metric("alae_rt_decoded_images_total") == decoded


def test_no_endpoint_serves_a_path_the_caller_names(http_server):
    for path in ("/api/v1/samples/..%2F..%2Fetc%2Fpasswd", "/../../etc/passwd", "/editor/../http_api.py",
                 "/alae_rt.proto"):
        status, _, data = call(http_server, path)
        assert status == 404 and b"root:" not in data
    status, headers, data = call(http_server, "/")
    assert status == 200 and b"alae-rt face editor" in data
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    spec = json.loads(call(http_server, "/api/openapi.json")[2])
    assert {"/api/v1/edit", "/api/v1/interpolate", "/api/v1/info"} <= set(spec["paths"])
    assert "edits" in spec["components"]["schemas"]["EditRequest"]["properties"]


def test_cors_is_off_unless_origins_are_named(http_server, tiny_rt):
    origin = {"Origin": "https://tools.example.com"}
    status, headers, _ = call(http_server, "/api/v1/info", headers=origin)
    assert status == 200 and "Access-Control-Allow-Origin" not in headers
    assert call(http_server, "/api/v1/edit", headers=origin, method="OPTIONS")[0] == 403
    cfg = ServeConfig(port=0, http_port=0, http_cors_origins=("https://tools.example.com",), warmup=False)
    with ServerThread(tiny_rt, cfg) as s:
        status, headers, _ = call(s, "/api/v1/edit", headers={**origin, "Access-Control-Request-Method": "POST"},
                                  method="OPTIONS")
        assert status == 204 and "Authorization" in headers["Access-Control-Allow-Headers"]
        assert call(s, "/api/v1/info", headers=origin)[1]["Access-Control-Allow-Origin"] == origin["Origin"]
        other = call(s, "/api/v1/info", headers={"Origin": "https://elsewhere.example.com"})[1]
        assert "Access-Control-Allow-Origin" not in other


def test_bearer_token_guards_the_api_not_health_or_the_page(tiny_rt):
    cfg = ServeConfig(port=0, http_port=0, auth_tokens=(TOKEN,), warmup=False)
    with ServerThread(tiny_rt, cfg) as s:
        status, headers, data = call(s, "/api/v1/generate", {"seeds": [1]})
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
        assert "bearer token" in json.loads(data)["message"]
        assert call(s, "/api/v1/info", headers={"Authorization": "Bearer wrong-token-0000000"})[0] == 401
        assert call(s, "/api/v1/generate", {"seeds": [1]}, {"Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert call(s, "/api/v1/health")[0] == 200 and call(s, "/")[0] == 200
        assert s.metric("alae_rt_requests_total", method="Generate", code="UNAUTHENTICATED") == 1


def test_warming_up_is_503_and_health_says_so(tiny_rt):
    st = ServerThread(tiny_rt, ServeConfig(port=0, http_port=0), wait_ready=False)
    gate = st.hold_compute()  # the warm-up waits behind it
    with st as s:
        try:
            status, _, data = call(s, "/api/v1/generate", {"seeds": [1]})
            assert status == 503 and "warming up" in json.loads(data)["message"]
            assert call(s, "/api/v1/health")[0] == 503
        finally:
            gate.set()
        s.call(s.server.wait_ready(60))
        assert call(s, "/api/v1/health")[0] == 200


def _until(cond, timeout: float = 30) -> None:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "condition not reached"
        time.sleep(0.005)


def test_a_full_queue_is_429_and_a_passed_deadline_504(tiny_rt):
    cfg = ServeConfig(port=0, http_port=0, max_images=4, max_queue=4, max_delay_ms=0)
    with ServerThread(tiny_rt, cfg) as s, ThreadPoolExecutor(4) as pool:
        decoder = s.server.service.decode_batcher
        gate = s.hold_compute()
        try:
            blocker = pool.submit(call, s, "/api/v1/decode", {"latents": tensor(latents(2))})
            _until(lambda: decoder.pending == 2 and decoder.queued == 0)  # in a batch, waiting for compute
            late = pool.submit(call, s, "/api/v1/decode", {"latents": tensor(latents(4, seed=1))},
                               {"X-Timeout-Ms": "300"})
            _until(lambda: decoder.queued == 4)
            status, headers, data = call(s, "/api/v1/decode", {"latents": tensor(latents(1, seed=2))})
            assert status == 429 and headers["Retry-After"] == "1"
            assert "the decode queue is full" in json.loads(data)["message"]
            status, _, data = late.result(30)  # its deadline passes while it waits
            assert status == 504 and "X-Timeout-Ms" in json.loads(data)["message"]
        finally:
            gate.set()
        assert blocker.result(30)[0] == 200
        _until(lambda: decoder.pending == 0)
        assert s.metric("alae_rt_dropped_images_total", op="decode", reason="deadline") >= 4
        assert s.metric("alae_rt_requests_total", method="Decode", code="RESOURCE_EXHAUSTED") == 1
