"""An IntroVAE and a LIA model behind a real server on 127.0.0.1: the same RPCs as ALAE, the method in ModelInfo,
and INVALID_ARGUMENT (not a crash) for what IntroVAE's single z cannot do."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from serve_helpers import ServerThread, images, latents, one_torch_thread  # noqa: F401 - fixture

from alae_rt import ModelConfig, Runtime
from alae_rt.methods import MethodConfig
from alae_rt.serve.client import AlaeClient, RemoteError
from alae_rt.serve.config import ServeConfig


@pytest.fixture(scope="module", params=["introvae", "lia"])
def method_server(request):
    method = MethodConfig.of(request.param, ModelConfig.preset("tiny"))
    rt = Runtime.from_config("tiny", seed=4, method=method, max_batch=4)
    with ServerThread(rt, ServeConfig(port=0, max_delay_ms=5)) as s:
        yield request.param, rt, s


def test_info_names_the_method(method_server):
    method, _, server = method_server
    with AlaeClient(server.address) as c:
        info = c.info()
    assert info.method == method
    assert (len(info.style_ranges) > 0) == (method == "lia")  # IntroVAE: no per-layer styles to group
    assert info.truncation_cutoff == (6 if method == "introvae" else 8)


def test_encode_decode_and_generate_match_the_runtime(method_server):
    _, rt, server = method_server
    x = images(2)
    with AlaeClient(server.address) as c:
        w = c.encode(x)
        out = c.decode(w, noise="const", return_latents=True)
        gen = c.generate([3, 4], noise="const")
    np.testing.assert_allclose(w, rt.encode(list(x)).numpy(), atol=1e-5, rtol=1e-5)
    assert len(out.images) == 2 and len(gen.images) == 2


def test_mix_is_invalid_argument_for_introvae_only(method_server):
    method, _, server = method_server
    with AlaeClient(server.address) as c:
        if method == "lia":
            assert len(c.mix(latents(1, seed=1), latents(1, seed=2), cutoff=2).images) == 1
            return
        with pytest.raises(RemoteError) as exc:
            c.mix(latents(1, seed=1), latents(1, seed=2), cutoff=2)
        assert exc.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "introvae" in exc.value.details and "one z" in exc.value.details
        assert len(c.decode(latents(1, seed=1), noise="const").images) == 1  # still serving after the refusal
