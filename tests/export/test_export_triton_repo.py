"""Triton Inference Server repositories: every config.pbtxt parsed with Triton's own model-config schema and checked
against the ONNX files beside it; the repository's files run in the `onnxruntime` backend; the fp16 export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from google.protobuf import text_format
from helpers import OFFICIAL, require
from tritonclient.grpc import model_config_pb2 as mc

from alae_rt import Runtime
from alae_rt.cli import main
from alae_rt.export.onnx_export import TOLERANCES, export_onnx

TOL = {"atol": 1e-4, "rtol": 1e-4}
MODELS = {"alae_encoder": "encoder", "alae_generator": "generator", "alae_mapping": "mapping"}
TRITON_TYPE_OF_ONNX = {onnx.TensorProto.FLOAT: mc.TYPE_FP32, onnx.TensorProto.FLOAT16: mc.TYPE_FP16}


@pytest.fixture(scope="module")
def gray32():
    folder = require(OFFICIAL / "gray32")
    return folder / "checkpoint.pth", torch.load(folder / "reference.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def repo(gray32, tmp_path_factory) -> Path:
    """`alae-rt export triton-repo` straight from the gray32 checkpoint, with non-default Triton settings."""
    out = tmp_path_factory.mktemp("triton_repo")
    code = main(["-q", "export", "triton-repo", "-c", str(gray32[0]), "-o", str(out), "--max-batch-size", "4",
                 "--preferred-batch-sizes", "2,4", "--max-queue-delay-us", "250", "--instances", "2",
                 "--instance-kind", "cpu"])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def fp16_export(gray32, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gray32_fp16")
    export_onnx(Runtime.load(gray32[0]).model, out, dtype="fp16")
    return out


def parse_config(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def check_repository(repo: Path, *, max_batch_size: int, preferred: list[int], delay_us: int, instances: int,
                     kind: int, elem_type: int) -> None:
    """Each model folder: a config that Triton's schema reads, whose inputs/outputs are those of its model file."""
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == sorted(MODELS)
    for name, role in MODELS.items():
        config = parse_config(repo / name / "config.pbtxt")
        model = onnx.load(str(repo / name / "1" / "model.onnx"))
        assert config.name == name and config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == max_batch_size
        for declared, actual in ((config.input, model.graph.input), (config.output, model.graph.output)):
            assert [t.name for t in declared] == [v.name for v in actual]
            for t, v in zip(declared, actual):
                dims = v.type.tensor_type.shape.dim
                assert dims[0].dim_param == "batch"  # the batch axis Triton adds is the file's dynamic one
                assert list(t.dims) == [d.dim_value for d in dims[1:]]
                assert v.type.tensor_type.elem_type == elem_type
                assert t.data_type == TRITON_TYPE_OF_ONNX[elem_type]
        assert list(config.dynamic_batching.preferred_batch_size) == preferred
        assert config.dynamic_batching.max_queue_delay_microseconds == delay_us
        assert [(g.count, g.kind) for g in config.instance_group] == [(instances, kind)]
        meta = {p.key: p.value for p in model.metadata_props}
        assert config.parameters["alae_rt.role"].string_value == role == meta["alae_rt.role"]
        assert json.loads(config.parameters["alae_rt.config"].string_value) == json.loads(meta["alae_rt.config"])


def test_configs_follow_tritons_schema_and_the_onnx_files(repo, gray32):
    check_repository(repo, max_batch_size=4, preferred=[2, 4], delay_us=250, instances=2,
                     kind=mc.ModelInstanceGroup.KIND_CPU, elem_type=onnx.TensorProto.FLOAT)
    generator = parse_config(repo / "alae_generator" / "config.pbtxt")
    assert [(t.name, list(t.dims)) for t in generator.input][:3] == [
        ("styles", [8, 32]), ("noise_4x4_1", [1, 4, 4]), ("noise_4x4_2", [1, 4, 4])]
    assert [(t.name, list(t.dims)) for t in generator.output] == [("images", [1, 32, 32])]
    np.testing.assert_allclose(np.load(repo / "alae_mapping" / "dlatent_avg.npy"), gray32[1]["dlatent_avg"].numpy())


def test_the_repository_files_reproduce_the_official_outputs(repo, gray32):
    """The `onnxruntime` backend reads a Triton repository too: the files served are the verified ones."""
    ckpt, ref = gray32
    rt = Runtime.load(ckpt, backend="onnxruntime", backend_options={"onnx_dir": repo})
    torch.testing.assert_close(rt.encode(ref["x"]), ref["encode_w"], **TOL)
    torch.testing.assert_close(rt.reconstruct(ref["x"], noise=ref["reconstruct_noise"]), ref["reconstruct_img"], **TOL)
    generated = rt.generate(z=ref["z"], truncation_psi=ref["truncation_psi"],
                            truncation_cutoff=ref["truncation_cutoff"], noise=ref["generate_noise"])
    torch.testing.assert_close(generated, ref["generate_img"], **TOL)
    mixed = rt.mix(ref["encode_w"], ref["mapped_w"], ref["mix_cutoff"], noise=ref["mix_noise"])
    torch.testing.assert_close(mixed, ref["mix_img"], **TOL)


def test_fp16_export_loads_and_runs(fp16_export, gray32):
    """fp16 files (weights and I/O) run in onnxruntime; against the official fp32 outputs within the fp16 tolerance."""
    ckpt, ref = gray32
    model = onnx.load(str(fp16_export / "generator.onnx"))
    assert {v.type.tensor_type.elem_type for v in model.graph.input} == {onnx.TensorProto.FLOAT16}
    assert {p.key: p.value for p in model.metadata_props}["alae_rt.dtype"] == "fp16"
    manifest = json.loads((fp16_export / "export.json").read_text())
    assert manifest["dtype"] == "fp16" and all(v["passed"] for v in manifest["verification"].values())
    tol = TOLERANCES["fp16"]
    rt = Runtime.load(ckpt, backend="onnxruntime", backend_options={"onnx_dir": fp16_export})
    w = rt.encode(ref["x"])
    assert w.dtype == torch.float32 and torch.isfinite(w).all()
    torch.testing.assert_close(w, ref["encode_w"], **tol)
    img = rt.decode(ref["encode_w"], noise=ref["reconstruct_noise"])
    torch.testing.assert_close(img, ref["reconstruct_img"], **tol)
    rt16 = Runtime.load(ckpt, dtype="fp16", backend="onnxruntime", backend_options={"onnx_dir": fp16_export})
    assert rt16.decode(ref["encode_w"], noise="const").dtype == torch.float16


def test_repository_from_an_existing_fp16_export_with_default_settings(fp16_export, tmp_path, capsys):
    """The default instance kind is this machine's (a KIND_GPU config does not load in a CPU-only Triton), and the
    last line says which and why."""
    out = tmp_path / "repo"
    assert main(["-q", "export", "triton-repo", "--onnx", str(fp16_export), "-o", str(out)]) == 0
    gpu = torch.cuda.is_available()
    check_repository(out, max_batch_size=8, preferred=[4, 8], delay_us=100, instances=1,
                     kind=mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU,
                     elem_type=onnx.TensorProto.FLOAT16)
    said = capsys.readouterr().out
    assert ("KIND_GPU instances: this machine has a CUDA device" if gpu else
            "KIND_CPU instances: no CUDA device here; --instance-kind gpu for a GPU server") in said, said
    for name, role in MODELS.items():
        assert (out / name / "1" / "model.onnx").read_bytes() == (fp16_export / f"{role}.onnx").read_bytes()


def test_instance_kind_auto_is_the_machines_and_gpu_for_tensorrt():
    from alae_rt.export.triton_repo import instance_kind_for

    assert instance_kind_for("auto", "onnx")[0] == ("gpu" if torch.cuda.is_available() else "cpu")
    assert instance_kind_for("auto", "tensorrt")[0] == "gpu"
    assert [instance_kind_for(k, "onnx")[0] for k in ("gpu", "cpu")] == ["gpu", "cpu"]
