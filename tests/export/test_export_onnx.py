"""ONNX export of the official rgb128 fixture through the CLI: the files, a fresh onnxruntime session, and the
`onnxruntime` backend against the official outputs and against eager at other batch sizes (fp32: 1e-4)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import OFFICIAL, require

from alae_rt import CheckpointError, InputError, ModelConfig, Runtime
from alae_rt.cli import main
from alae_rt.export.errors import ExportError
from alae_rt.export.onnx_export import EXPORT_BATCH, TOLERANCES, export_onnx
from alae_rt.exported import noise_names

TOL = {"atol": 1e-4, "rtol": 1e-4}  # fp32: onnxruntime against eager and against the official code


@pytest.fixture(scope="module")
def rgb128():
    folder = require(OFFICIAL / "rgb128")
    return folder / "checkpoint.pth", torch.load(folder / "reference.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def exported(rgb128, tmp_path_factory):
    """The rgb128 fixture exported by `alae-rt export onnx` (fp32, default opset)."""
    out = tmp_path_factory.mktemp("rgb128_onnx")
    assert main(["-q", "export", "onnx", "-c", str(rgb128[0]), "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def eager(rgb128):
    return Runtime.load(rgb128[0])


@pytest.fixture(scope="module")
def ort_rt(rgb128, exported):
    return Runtime.load(rgb128[0], backend="onnxruntime", backend_options={"onnx_dir": exported})


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_files_pass_the_full_checker_and_carry_names_shapes_and_metadata(exported, eager):
    cfg = eager.config
    assert sorted(p.name for p in exported.iterdir()) == [
        "dlatent_avg.npy", "encoder.onnx", "export.json", "generator.onnx", "mapping.onnx"]
    expected = {
        "encoder": ({"images": ["batch", 3, 128, 128]}, {"w": ["batch", 64]}),
        "generator": ({"styles": ["batch", 12, 64],
                       **{f"noise_{r}x{r}_{j}": ["batch", 1, r, r] for r in (4, 8, 16, 32, 64, 128) for j in (1, 2)}},
                      {"images": ["batch", 3, 128, 128]}),
        "mapping": ({"z": ["batch", 64]}, {"w": ["batch", 64]}),
    }
    for role, (inputs, outputs) in expected.items():
        path = exported / f"{role}.onnx"
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path))
        assert [(v.name, _dims(v)) for v in model.graph.input] == list(inputs.items())  # in the generator's order
        assert [(v.name, _dims(v)) for v in model.graph.output] == list(outputs.items())
        assert len(model.graph.value_info) > 0  # inferred shapes are written into the file
        assert [o.version for o in model.opset_import if o.domain == ""] == [18]
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["alae_rt.role"] == role and meta["alae_rt.dtype"] == "fp32"
        assert json.loads(meta["alae_rt.config"]) == cfg.to_dict()
        assert set(json.loads(meta["alae_rt.weights_signature"])) == set(getattr(eager.model, role).state_dict())
    assert list(expected["generator"][0])[1:] == noise_names(cfg)
    manifest = json.loads((exported / "export.json").read_text())
    assert manifest["config"] == cfg.to_dict() and manifest["opset"] == 18
    assert all(v["passed"] and v["max_abs_error"] <= 1e-4 for v in manifest["verification"].values())
    np.testing.assert_array_equal(np.load(exported / "dlatent_avg.npy"), eager.model.dlatent_avg.numpy())


def test_a_fresh_onnxruntime_session_matches_the_runtime(exported, eager, rgb128):
    """The files alone, in a plain onnxruntime session, against the eager Runtime on the official inputs."""
    ref = rgb128[1]
    enc = ort.InferenceSession(str(exported / "encoder.onnx"), providers=["CPUExecutionProvider"])
    w = enc.run(["w"], {"images": ref["x"].numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(w), eager.encode(ref["x"]), **TOL)
    torch.testing.assert_close(torch.from_numpy(w), ref["encode_w"], **TOL)

    gen = ort.InferenceSession(str(exported / "generator.onnx"), providers=["CPUExecutionProvider"])
    n = ref["x"].shape[0]
    styles = eager.styles(ref["encode_w"])
    feed = {"styles": styles.numpy()}
    for name, noise in zip(noise_names(eager.config), ref["reconstruct_noise"]):
        feed[name] = noise.expand(n, -1, -1, -1).numpy()  # block 0's shared map, repeated over the batch
    img = gen.run(["images"], feed)[0]
    torch.testing.assert_close(torch.from_numpy(img), ref["reconstruct_img"], **TOL)

    mapping = ort.InferenceSession(str(exported / "mapping.onnx"), providers=["CPUExecutionProvider"])
    torch.testing.assert_close(torch.from_numpy(mapping.run(["w"], {"z": ref["z"].numpy()})[0]), ref["mapped_w"], **TOL)


def test_onnxruntime_backend_reproduces_the_official_outputs(ort_rt, rgb128):
    ref = rgb128[1]
    assert ort_rt.backend.name == "onnxruntime" and ort_rt.backend.providers == ["CPUExecutionProvider"]
    torch.testing.assert_close(ort_rt.encode(ref["x"]), ref["encode_w"], **TOL)
    torch.testing.assert_close(ort_rt.decode(ref["encode_w"], noise=ref["reconstruct_noise"]), ref["reconstruct_img"],
                               **TOL)
    torch.testing.assert_close(ort_rt.reconstruct(ref["x"], noise=ref["reconstruct_noise"]), ref["reconstruct_img"],
                               **TOL)
    generated = ort_rt.generate(z=ref["z"], truncation_psi=ref["truncation_psi"],
                                truncation_cutoff=ref["truncation_cutoff"], noise=ref["generate_noise"])
    torch.testing.assert_close(generated, ref["generate_img"], **TOL)
    mixed = ort_rt.mix(ref["encode_w"], ref["mapped_w"], ref["mix_cutoff"], noise=ref["mix_noise"])
    torch.testing.assert_close(mixed, ref["mix_img"], **TOL)


def test_openvino_backend_reads_the_export_folder_from_the_cli(rgb128, exported, faces128, tmp_path):
    """The `openvino` backend on the same folder (tests/test_backend_openvino.py has its options): the official
    outputs in f32, and `--backend openvino --backend-option onnx_dir=DIR` from the command line."""
    pytest.importorskip("openvino")
    from helpers import check_all_outputs

    faces3 = sorted(faces128.glob("*.png"))[:3]
    check_all_outputs(Runtime.load(rgb128[0], backend="openvino", backend_options={"onnx_dir": exported}), rgb128[1])
    out = tmp_path / "w.npy"
    assert main(["-q", "encode", *map(str, faces3), "-c", str(rgb128[0]), "--backend", "openvino",
                 "--backend-option", f"onnx_dir={exported}", "-o", str(out)]) == 0
    want = Runtime.load(rgb128[0]).encode(list(map(str, faces3)))
    np.testing.assert_allclose(np.load(out), want.numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("n,noise_modes", [(1, ["random"]), (3, ["random", "const", "none"])])
def test_batch_sizes_other_than_the_export_batch(ort_rt, eager, n, noise_modes):
    assert n != EXPORT_BATCH
    gen = torch.Generator().manual_seed(n)
    x = torch.rand(n, 3, 128, 128, generator=gen) * 2 - 1
    torch.testing.assert_close(ort_rt.encode(x), eager.encode(x), **TOL)
    styles = eager.truncate(eager.map(torch.randn(n * 12, 64, generator=gen)).view(n, 12, 64))  # per-layer styles
    for noise in noise_modes:  # random: batch-1 and batch-n maps; const: all batch 1; none: zeros
        expected = eager.decode(styles, noise=noise, seed=7)
        torch.testing.assert_close(ort_rt.decode(styles, noise=noise, seed=7), expected, **TOL)


def test_chunked_batches_and_other_runtime_dtypes(rgb128, exported, eager):
    ref = rgb128[1]
    chunked = Runtime.load(rgb128[0], backend="onnxruntime", backend_options={"onnx_dir": exported}, max_batch=1)
    torch.testing.assert_close(chunked.reconstruct(ref["x"], noise=ref["reconstruct_noise"]), ref["reconstruct_img"],
                               **TOL)
    # A bf16 Runtime keeps its dtype at the boundary; the fp32 files still compute in fp32.
    low = Runtime.load(rgb128[0], dtype="bf16", backend="onnxruntime", backend_options={"onnx_dir": exported})
    w = low.encode(ref["x"])
    assert w.dtype == torch.bfloat16
    torch.testing.assert_close(w.float(), ref["encode_w"], atol=0.1, rtol=0.02)


def test_backend_refuses_files_of_other_weights_or_architectures(rgb128, exported, tmp_path):
    ck = torch.load(rgb128[0], map_location="cpu", weights_only=True)
    for name in ("discriminator", "generator", "mapping_tl", "mapping_fl"):
        ck["models"][name + "_s"] = ck["models"][name]  # the training copies: same shapes, other weights
    swapped = tmp_path / "swapped.pth"
    torch.save(ck, swapped)
    with pytest.raises(CheckpointError, match="other weights"):
        Runtime.load(swapped, backend="onnxruntime", backend_options={"onnx_dir": exported})
    gray = require(OFFICIAL / "gray32" / "checkpoint.pth")
    with pytest.raises(CheckpointError, match="another architecture"):
        Runtime.load(gray, backend="onnxruntime", backend_options={"onnx_dir": exported})
    with pytest.raises(InputError, match="onnx_dir"):
        Runtime.load(rgb128[0], backend="onnxruntime")
    with pytest.raises(InputError, match="no option"):
        Runtime.load(rgb128[0], backend="onnxruntime", backend_options={"onnx_dir": exported, "threadz": 2})
    with pytest.raises(CheckpointError, match="no such export folder"):
        Runtime.load(rgb128[0], backend="onnxruntime", backend_options={"onnx_dir": tmp_path / "nothing"})
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "encoder.onnx").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="onnxruntime cannot load it"):
        Runtime.load(rgb128[0], backend="onnxruntime", backend_options={"onnx_dir": broken})


def test_a_failed_verification_fails_loudly_and_writes_nothing(tmp_path, monkeypatch):
    """Past the tolerance the export raises, naming the error, and leaves the output folder empty."""
    monkeypatch.setitem(TOLERANCES, "fp32", {"atol": -1.0, "rtol": 0.0})  # a tolerance nothing meets
    out = tmp_path / "out"
    one_block = ModelConfig(1, 4, 4, 4, 1)  # the smallest network: the failure path does not depend on its size
    with pytest.raises(ExportError, match=r"encoder: verification failed: .* past the fp32 tolerance"):
        export_onnx(Runtime.from_config(one_block).model, out)
    assert list(out.iterdir()) == []
