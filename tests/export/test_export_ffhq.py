"""The ffhq-1024 preset (random weights, fixed seed), exported once: onnxruntime against eager at batch 2 (fp32: 1e-4).

The export's own check already ran every file at batch 1 (the traced batch is 2); this adds batch 2 through the
`onnxruntime` backend and a fresh onnxruntime session on the files.
"""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch

from alae_rt import Runtime
from alae_rt.export.onnx_export import VERIFY_BATCH, export_onnx

TOL = {"atol": 1e-4, "rtol": 1e-4}
N = 2


@pytest.fixture(scope="module")
def ffhq(tmp_path_factory):
    rt = Runtime.from_config("ffhq-1024", seed=1234)
    out = tmp_path_factory.mktemp("ffhq_onnx")
    report = export_onnx(rt.model, out)
    return rt, out, report


def test_ffhq_1024_onnxruntime_matches_eager_at_batch_2(ffhq):
    rt, out, report = ffhq
    assert all(v["passed"] and v["batch"] == VERIFY_BATCH for v in report.verification.values())
    ort_rt = Runtime(rt.model, backend="onnxruntime", backend_options={"onnx_dir": out})
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(N, 3, 1024, 1024, generator=gen) * 2 - 1
    w = rt.encode(x)
    torch.testing.assert_close(ort_rt.encode(x), w, **TOL)

    styles = rt.truncate(rt.map(torch.randn(N * 18, 512, generator=gen)).view(N, 18, 512))  # per-layer styles
    noise = rt.noise(N, "random", seed=11)  # block 0's first map has batch 1, the others batch N
    images = rt.decode(styles, noise=noise)
    torch.testing.assert_close(ort_rt.decode(styles, noise=noise), images, **TOL)

    # The encoder file alone, in a plain onnxruntime session.
    session = ort.InferenceSession(str(out / "encoder.onnx"), providers=["CPUExecutionProvider"])
    torch.testing.assert_close(torch.from_numpy(session.run(["w"], {"images": x.numpy()})[0]), w, **TOL)
