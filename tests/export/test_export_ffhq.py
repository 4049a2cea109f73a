"""The 1024x1024 layout (random weights, fixed seed), exported once: onnxruntime against eager at batch 2 (fp32: 1e-4).

By default on the narrow L = 9 config (every 1024 code path, a few channels); the ffhq-1024 preset itself is the
same test marked slow. The export's own check already ran every file at batch 1 (the traced batch is 2); this adds
batch 2 through the `onnxruntime` backend and a fresh onnxruntime session on the files.
"""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch
from helpers import NARROW_1024

from alae_rt import Runtime
from alae_rt.export.onnx_export import VERIFY_BATCH, export_onnx

TOL = {"atol": 1e-4, "rtol": 1e-4}
N = 2


@pytest.fixture(scope="module", params=[NARROW_1024, pytest.param("ffhq-1024", marks=pytest.mark.slow)],
                ids=["narrow-1024", "ffhq-1024"])
def exported_1024(request, tmp_path_factory):
    rt = Runtime.from_config(request.param, seed=1234)
    # Fresh models have zero noise weights: give them some, so that a noise map fed to the wrong layer shows.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in rt.model.named_parameters():
            if "noise_weight" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    out = tmp_path_factory.mktemp("onnx_1024")
    report = export_onnx(rt.model, out)
    return rt, out, report


def test_1024_onnxruntime_matches_eager_at_batch_2(exported_1024):
    rt, out, report = exported_1024
    cfg = rt.config
    assert (cfg.resolution, cfg.num_styles) == (1024, 18)
    assert set(report.verification) == {"encoder", "generator", "mapping"}
    assert all(v["passed"] and v["batch"] == VERIFY_BATCH for v in report.verification.values())
    ort_rt = Runtime(rt.model, backend="onnxruntime", backend_options={"onnx_dir": out})
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(N, 3, 1024, 1024, generator=gen) * 2 - 1
    w = rt.encode(x)
    assert w.shape == (N, cfg.latent_size)
    torch.testing.assert_close(ort_rt.encode(x), w, **TOL)

    d = cfg.latent_size
    styles = rt.truncate(rt.map(torch.randn(N * 18, d, generator=gen)).view(N, 18, d))  # per-layer styles
    noise = rt.noise(N, "random", seed=11)  # block 0's first map has batch 1, the others batch N
    images = rt.decode(styles, noise=noise)
    assert images.shape == (N, 3, 1024, 1024)
    torch.testing.assert_close(ort_rt.decode(styles, noise=noise), images, **TOL)

    # The encoder file alone, in a plain onnxruntime session.
    session = ort.InferenceSession(str(out / "encoder.onnx"), providers=["CPUExecutionProvider"])
    torch.testing.assert_close(torch.from_numpy(session.run(["w"], {"images": x.numpy()})[0]), w, **TOL)
