"""On a GPU: TensorRT engines built from the gray32 export, run by the `tensorrt` backend against eager on CUDA, and
the onnxruntime CUDA provider. Tolerances: TensorRT fp32 1e-3 (TF32 off), fp16 5e-2; onnxruntime CUDA fp32 1e-4."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import OFFICIAL, require

from alae_rt import Runtime
from alae_rt.cli import main
from alae_rt.export.onnx_export import export_onnx
from alae_rt.export.tensorrt_build import TOLERANCES

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gray32():
    folder = require(OFFICIAL / "gray32")
    return folder / "checkpoint.pth", torch.load(folder / "reference.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def onnx_dirs(gray32, tmp_path_factory):
    model = Runtime.load(gray32[0]).model
    dirs = {}
    for dtype in ("fp32", "fp16"):
        dirs[dtype] = tmp_path_factory.mktemp(f"gray32_{dtype}")
        export_onnx(model, dirs[dtype], dtype=dtype)
    return dirs


@pytest.fixture(scope="module")
def engines(onnx_dirs, tmp_path_factory):
    pytest.importorskip("tensorrt")
    out = tmp_path_factory.mktemp("engines")
    code = main(["-q", "export", "tensorrt", "--onnx", str(onnx_dirs["fp32"]), "-o", str(out), "--min-batch", "2",
                 "--opt-batch", "2", "--max-batch", "4"])
    assert code == 0
    return out


def test_engines_match_eager_on_cuda(engines, gray32):
    import tensorrt

    ckpt, ref = gray32
    meta = json.loads((engines / "engines.json").read_text())
    assert meta["tensorrt_version"] == tensorrt.__version__
    assert meta["gpu"]["name"] == torch.cuda.get_device_name()
    assert meta["batch_profile"] == {"min": 2, "opt": 2, "max": 4}
    assert (engines / "timing.cache").stat().st_size > 0
    assert all(e["verification"]["passed"] for e in meta["engines"].values())

    eager = Runtime.load(ckpt, device="cuda")
    trt_rt = Runtime.load(ckpt, device="cuda", backend="tensorrt", backend_options={"engine_dir": engines})
    tol = TOLERANCES["fp32"]
    x = ref["x"].cuda()
    torch.testing.assert_close(trt_rt.encode(x), eager.encode(x), **tol)
    torch.testing.assert_close(trt_rt.encode(x).cpu(), ref["encode_w"], **tol)
    noise = [t.cuda() for t in ref["reconstruct_noise"]]
    torch.testing.assert_close(trt_rt.decode(ref["encode_w"], noise=noise).cpu(), ref["reconstruct_img"], **tol)
    # Outside the profile [2, 4]: batch 1 is padded, batch 7 runs in chunks.
    for n in (1, 7):
        xs = torch.rand(n, 1, 32, 32, device="cuda") * 2 - 1
        torch.testing.assert_close(trt_rt.encode(xs), eager.encode(xs), **tol)
        w = eager.encode(xs)
        torch.testing.assert_close(trt_rt.decode(w, noise="const"), eager.decode(w, noise="const"), **tol)


def test_fp16_engines_from_the_fp16_export(onnx_dirs, gray32, tmp_path):
    pytest.importorskip("tensorrt")
    ckpt, ref = gray32
    out = tmp_path / "engines16"
    assert main(["-q", "export", "tensorrt", "--onnx", str(onnx_dirs["fp16"]), "-o", str(out), "--fp16",
                 "--opt-batch", "2", "--max-batch", "4"]) == 0
    assert json.loads((out / "engines.json").read_text())["precision"] == "fp16"
    rt = Runtime.load(ckpt, device="cuda", backend="tensorrt", backend_options={"engine_dir": out})
    w = rt.encode(ref["x"].cuda())
    torch.testing.assert_close(w.cpu(), ref["encode_w"], **TOLERANCES["fp16"])


def test_triton_repository_of_engines(onnx_dirs, tmp_path):
    pytest.importorskip("tensorrt")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    out = tmp_path / "repo"
    assert main(["-q", "export", "triton-repo", "--onnx", str(onnx_dirs["fp32"]), "-o", str(out),
                 "--format", "tensorrt", "--max-batch-size", "4", "--preferred-batch-sizes", "2,4"]) == 0
    for name in ("alae_encoder", "alae_generator", "alae_mapping"):
        config = text_format.Parse((out / name / "config.pbtxt").read_text(), mc.ModelConfig())
        assert config.platform == "tensorrt_plan" and config.max_batch_size == 4
        assert (out / name / "1" / "model.plan").stat().st_size > 0
        assert config.parameters["tensorrt_version"].string_value


def test_onnxruntime_cuda_provider_matches_eager(onnx_dirs, gray32):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    ckpt, ref = gray32
    rt = Runtime.load(ckpt, device="cuda", backend="onnxruntime", backend_options={"onnx_dir": onnx_dirs["fp32"]})
    assert rt.backend.providers[0] == "CUDAExecutionProvider"
    tol = {"atol": 1e-4, "rtol": 1e-4}
    torch.testing.assert_close(rt.encode(ref["x"]).cpu(), ref["encode_w"], **tol)
    noise = [t.cuda() for t in ref["reconstruct_noise"]]
    torch.testing.assert_close(rt.decode(ref["encode_w"], noise=noise).cpu(), ref["reconstruct_img"], **tol)
