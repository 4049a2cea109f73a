"""End to end at 1024x1024: a 1024 network (random weights) behind a real server, batch 1, on a real 1024 face.

By default the narrow L = 9 config (every 1024 code path, a few channels); the ffhq-1024 preset itself is the same
test marked slow."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import FACES1024, NARROW_1024, require
from serve_helpers import ServerThread

from alae_rt import Runtime
from alae_rt.serve.client import AlaeClient
from alae_rt.serve.server import ServeConfig


@pytest.mark.parametrize("config", [NARROW_1024, pytest.param("ffhq-1024", marks=pytest.mark.slow)],
                         ids=["narrow-1024", "ffhq-1024"])
def test_reconstruct_a_1024_face_end_to_end(config):
    face = sorted(require(FACES1024).glob("*.png"))[0]
    rt = Runtime.from_config(config, max_batch=1)
    st = ServerThread(rt, ServeConfig(port=0), wait_ready=False)
    gate = st.hold_compute()  # the warm-up waits behind it: health must say so
    with st, AlaeClient(st.address, timeout=600) as c:
        assert c.health() == "NOT_SERVING"
        gate.set()
        st.call(st.server.wait_ready(600), timeout=600)
        assert c.health() == "SERVING"
        info = c.info()
        got = c.reconstruct([face], return_latents=True)
    assert (info.resolution, info.latent_size, info.num_styles) == (1024, rt.config.latent_size, 18)
    w = rt.encode([face])
    np.testing.assert_allclose(got.latents, w.numpy(), atol=1e-4, rtol=1e-4)
    assert got.images[0].shape == (1024, 1024, 3)
    ref = rt.to_uint8(rt.decode(w, noise="const"))[0].astype(int)
    assert np.abs(got.images[0].astype(int) - ref).max() <= 1
