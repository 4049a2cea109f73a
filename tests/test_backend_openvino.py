"""The `openvino` backend against the official fixtures (gray32, exported on the fly into a cache folder), in each
precision, with several streams, and its refusals; rgb128 runs it on its `alae-rt export onnx` folder
(tests/export/test_export_onnx.py)."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch
from helpers import OFFICIAL, ROOT, check_all_outputs, require

from alae_rt import CheckpointError, InputError, Runtime

pytest.importorskip("openvino")
pytest.importorskip("onnx")

from alae_rt.backends.onnxruntime import weights_hash  # noqa: E402
from alae_rt.backends.openvino import TOLERANCES  # noqa: E402


@pytest.fixture(scope="module")
def gray32():
    folder = require(OFFICIAL / "gray32")
    return folder / "checkpoint.pth", torch.load(folder / "reference.pt", weights_only=True)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("ov_cache")


@pytest.fixture(scope="module")
def ov_rt(gray32, cache):
    """gray32 through OpenVINO f32: no onnx_dir, so the backend exports it into the cache first."""
    return Runtime.load(gray32[0], backend="openvino", backend_options={"cache_dir": cache})


def test_openvino_f32_matches_the_fixtures_from_a_cached_export(ov_rt, gray32, cache):
    check_all_outputs(ov_rt, gray32[1])
    backend = ov_rt.backend
    assert backend.precision == "f32" and backend.threads == torch.get_num_threads()
    # the export landed in a folder named by the weights' hash, and a second Runtime reads it instead of exporting
    assert backend.onnx_dir.parent == cache and backend.onnx_dir.name.endswith(weights_hash(ov_rt.model)[:24])
    stamp = (backend.onnx_dir / "generator.onnx").stat().st_mtime_ns
    again = Runtime.load(gray32[0], backend="openvino", backend_options={"cache_dir": cache})
    assert again.backend.onnx_dir == backend.onnx_dir
    assert (backend.onnx_dir / "generator.onnx").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("precision", ["bf16", "f16"])
def test_openvino_reduced_precision_within_its_tolerance(ov_rt, gray32, precision):
    ref = gray32[1]
    rt = Runtime(ov_rt.model, backend="openvino",
                 backend_options={"onnx_dir": ov_rt.backend.onnx_dir, "precision": precision})
    assert rt.backend.encoder.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == precision
    w = rt.encode(ref["x"])
    assert (w - ref["encode_w"]).abs().max() <= TOLERANCES[precision] * ref["encode_w"].abs().max()
    img = rt.decode(ref["encode_w"], noise=ref["reconstruct_noise"])
    assert 0 < (img - ref["reconstruct_img"]).abs().max() <= TOLERANCES[precision]  # really reduced, and close


def test_openvino_follows_a_bf16_runtime_and_splits_a_batch_over_streams(ov_rt, gray32):
    ref = gray32[1]
    bf16 = Runtime.load(gray32[0], dtype="bf16", backend="openvino",
                        backend_options={"onnx_dir": ov_rt.backend.onnx_dir, "check_weights_match": True})
    assert bf16.backend.precision == "bf16"
    assert bf16.encode(ref["x"]).dtype == torch.bfloat16
    rt = Runtime(ov_rt.model, backend="openvino", backend_options={"onnx_dir": ov_rt.backend.onnx_dir, "streams": 2})
    x = torch.cat([ref["x"]] * 3)[:5]  # 5 rows over 2 streams: parts of 3 and 2, put back in order
    torch.testing.assert_close(rt.encode(x), ov_rt.encode(x), atol=1e-5, rtol=1e-5)
    styles = ov_rt.styles(torch.cat([ref["encode_w"]] * 3)[:5])
    torch.testing.assert_close(rt.decode(styles, noise="const"), ov_rt.decode(styles, noise="const"), atol=1e-5,
                               rtol=1e-5)


def test_openvino_refuses_bad_options_and_other_weights(ov_rt, rt128, tmp_path):
    folder = ov_rt.backend.onnx_dir
    for options, message in (({"precision": "int4"}, "option precision: 'int4'; choose from f32, bf16, f16"),
                             ({"threads": -1}, "option threads: -1 is out of range"),
                             ({"streams": 0}, "option streams: 0 is out of range 1..4096"),
                             ({"threads": "two"}, "option threads: expected int | None")):
        with pytest.raises(InputError, match=message):
            Runtime(ov_rt.model, backend="openvino", backend_options={"onnx_dir": folder, **options})
    with pytest.raises(CheckpointError, match="exported for another architecture"):
        Runtime(rt128.model, backend="openvino", backend_options={"onnx_dir": folder})
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    shutil.copy(folder / "generator.onnx", swapped / "encoder.onnx")
    shutil.copy(folder / "generator.onnx", swapped / "generator.onnx")
    for backend in ("openvino", "onnxruntime"):  # one check of the files for both (alae_rt.exported.check_graph)
        with pytest.raises(CheckpointError, match="encoder.onnx: holds the generator graph, expected the encoder"):
            Runtime(ov_rt.model, backend=backend, backend_options={"onnx_dir": swapped})
    with pytest.raises(CheckpointError, match="no such export folder"):
        Runtime(ov_rt.model, backend="openvino", backend_options={"onnx_dir": folder / "nope"})
    other = Runtime.load(OFFICIAL / "gray32" / "checkpoint.pth")
    with torch.no_grad():
        other.model.encoder.from_rgb[0].weight.mul_(2)
    with pytest.raises(CheckpointError, match="exported from other weights"):
        Runtime(other.model, backend="openvino", backend_options={"onnx_dir": folder})


def test_auto_on_cpu_picks_by_measurement_and_records_it(tmp_path, monkeypatch):
    """`auto` on a CPU times the candidates on the model itself, keeps the fastest within tolerance, records the
    figures in the cache under a key naming the CPU, threads, dtype, weights and versions, and reads them there next
    time (no second measurement)."""
    import alae_rt.backends as backends

    monkeypatch.setenv("ALAE_RT_CACHE", str(tmp_path))
    monkeypatch.setattr(backends, "COMPILE_MIN_GFLOPS", 0.0)  # the tiny preset stands in for a large model
    # tensorrt cannot run on a CPU: a candidate that fails to build is passed over, with a warning
    monkeypatch.setattr(backends, "cpu_candidates", lambda model: ["eager", "openvino", "tensorrt"])
    built = []  # the candidates the measurement builds (the Runtime builds its backend through its own import)
    real = backends.create_backend
    monkeypatch.setattr(backends, "create_backend", lambda name, *a, **k: built.append(name) or real(name, *a, **k))
    with pytest.warns(UserWarning, match="backend auto: tensorrt left out of the measurement"):
        rt = Runtime.from_config("tiny", seed=0, backend="auto")
    assert built == ["eager", "openvino", "tensorrt"]
    [record] = json.loads((tmp_path / backends.AUTO_RECORD).read_text()).values()
    assert set(record["ms"]) == {"eager", "openvino"} and all(t > 0 for t in record["ms"].values())
    assert record["choice"] == min(record["ms"], key=record["ms"].get) == rt.backend.name
    assert record["errors"]["openvino"] < 1e-3 and record["key"]["threads"] == torch.get_num_threads()
    x = torch.rand(2, 3, rt.config.resolution, rt.config.resolution) * 2 - 1
    torch.testing.assert_close(rt.encode(x), Runtime(rt.model, backend="eager").encode(x), atol=1e-4, rtol=1e-4)

    assert Runtime.from_config("tiny", seed=0, backend="auto").backend.name == record["choice"]
    assert len(built) == 3  # read from the record, not measured again


@pytest.mark.slow  # an export and four runtimes: a minute on two busy cores
def test_cpu_peers_benchmark_runs_and_tags_its_results(tmp_path, monkeypatch):
    """benchmarks/cpu_peers.py end to end on the tiny preset (eager, onnxruntime and the two OpenVINO rows)."""
    pytest.importorskip("onnxruntime")
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import cpu_peers

    only = "Runtime fp32 (eager),onnxruntime,OpenVINO"
    assert cpu_peers.main(["--preset", "tiny", "--reps", "2", "--only", only, "-o", str(tmp_path)]) == 0
    report = json.loads(next(tmp_path.glob("cpu_peers_tiny_*.json")).read_text())
    rows = {r["candidate"]: r for r in report["rows"]}
    default = f"OpenVINO default ({report['openvino_default_precision']})"
    assert set(rows) == {"Runtime fp32 (eager)", "onnxruntime", "OpenVINO f32", default}
    assert rows["OpenVINO f32"]["encode_vs_openvino"] == rows[default]["decode_vs_openvino"] == 1.0
    assert all(len(r["times_ms"]["encode"]) == 2 and r["decode_max_err"] < 1e-4 for r in rows.values()
               if r["class"] == "fp32")
    assert {"openvino", "onnxruntime", "torch"} <= set(report["machine"]["versions"])
    assert report["machine"]["commit"] and report["machine"]["date"]
    assert "| OpenVINO f32 | openvino f32 |" in next(tmp_path.glob("cpu_peers_tiny_*.md")).read_text()
    sys.modules.pop("cpu_peers", None)
