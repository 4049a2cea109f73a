"""`alae-rt export`: help that explains, and bad input ending in one line naming the problem, exit status 2."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from helpers import OFFICIAL, assert_one_line_error, require
from helpers import run_cli as run

from alae_rt.cli import main


@pytest.fixture(scope="module")
def gray32_checkpoint():
    return require(OFFICIAL / "gray32" / "checkpoint.pth")


def test_help_explains_the_formats_and_the_files(capsys):
    for argv, needles in (
        (["export", "--help"], ["onnx", "tensorrt", "triton-repo", "backend_options"]),
        (["export", "onnx", "--help"], ["noise_4x4_1", "dynamic batch", "--opset", "onnx.checker", "1e-4"]),
        (["export", "tensorrt", "--help"], ["--min-batch", "--opt-batch", "--max-batch", "timing cache", "GPU"]),
        (["export", "triton-repo", "--help"], ["config.pbtxt", "--max-batch-size", "--preferred-batch-sizes",
                                               "--format", "tritonserver"]),
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
        out = capsys.readouterr().out
        for needle in needles:
            assert needle in out, (argv, needle)
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "export" in capsys.readouterr().out


def test_missing_or_unreadable_checkpoint(capsys, tmp_path):
    missing = tmp_path / "missing.pth"
    code, _, err = run(capsys, "export", "onnx", "-c", str(missing), "-o", str(tmp_path / "out"))
    assert_one_line_error(code, err, str(missing), "no such checkpoint")
    assert not (tmp_path / "out").exists()
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"PK\x03\x04 not really a zip")
    code, _, err = run(capsys, "export", "triton-repo", "-c", str(junk), "-o", str(tmp_path / "repo"))
    assert_one_line_error(code, err, str(junk), "not a readable PyTorch checkpoint")


def test_unwritable_output_folder(capsys, tmp_path, gray32_checkpoint):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    code, _, err = run(capsys, "export", "onnx", "-c", str(gray32_checkpoint), "-o", str(a_file / "sub"))
    assert_one_line_error(code, err, str(a_file / "sub"), "cannot create output directory")
    code, _, err = run(capsys, "export", "onnx", "-c", str(gray32_checkpoint), "-o", str(a_file))
    assert_one_line_error(code, err, str(a_file), "not a directory")


@pytest.mark.parametrize("opset", ["7", "17", "99"])
def test_unsupported_opset(capsys, tmp_path, gray32_checkpoint, opset):
    code, _, err = run(capsys, "export", "onnx", "-c", str(gray32_checkpoint), "-o", str(tmp_path), "--opset", opset)
    assert_one_line_error(code, err, f"opset {opset} is not supported", "from 18 to")


def test_unsupported_dtype_is_refused_by_the_parser(capsys, tmp_path, gray32_checkpoint):
    with pytest.raises(SystemExit) as exc:
        main(["export", "onnx", "-c", str(gray32_checkpoint), "-o", str(tmp_path), "--dtype", "bf16"])
    assert exc.value.code == 2
    assert "invalid choice: 'bf16'" in capsys.readouterr().err


def _tensorrt_usable() -> bool:
    return importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


@pytest.mark.skipif(_tensorrt_usable(), reason="TensorRT and a GPU are present here")
def test_tensorrt_without_tensorrt_or_a_gpu_says_what_is_needed(capsys, tmp_path):
    code, _, err = run(capsys, "export", "tensorrt", "--onnx", str(tmp_path), "-o", str(tmp_path / "engines"))
    needed = "TensorRT is needed" if importlib.util.find_spec("tensorrt") is None else "needs an NVIDIA GPU"
    assert_one_line_error(code, err, needed)
    assert not (tmp_path / "engines").exists()
    code, _, err = run(capsys, "export", "triton-repo", "--onnx", str(tmp_path), "-o", str(tmp_path / "repo"),
                       "--format", "tensorrt")
    assert_one_line_error(code, err, needed)


def test_bad_tensorrt_and_triton_settings(capsys, tmp_path, gray32_checkpoint):
    code, _, err = run(capsys, "export", "tensorrt", "--onnx", str(tmp_path), "-o", str(tmp_path / "e"),
                       "--min-batch", "8", "--opt-batch", "4")
    assert_one_line_error(code, err, "--min-batch <= --opt-batch <= --max-batch")
    repo = str(tmp_path / "repo")
    code, _, err = run(capsys, "export", "triton-repo", "-c", str(gray32_checkpoint), "-o", repo,
                       "--preferred-batch-sizes", "4,16")
    assert_one_line_error(code, err, "--preferred-batch-sizes", "--max-batch-size 8")
    code, _, err = run(capsys, "export", "triton-repo", "-c", str(gray32_checkpoint), "--onnx", str(tmp_path),
                       "-o", repo)
    assert_one_line_error(code, err, "either --checkpoint", "or --onnx")
    code, _, err = run(capsys, "export", "triton-repo", "--onnx", str(tmp_path / "nowhere"), "-o", repo)
    assert_one_line_error(code, err, "no such ONNX export folder")
    code, _, err = run(capsys, "export", "triton-repo", "--onnx", str(tmp_path), "-o", repo)
    assert_one_line_error(code, err, "encoder.onnx", "missing")
    code, _, err = run(capsys, "export", "triton-repo", "-c", str(gray32_checkpoint), "-o", repo,
                       "--format", "tensorrt", "--instance-kind", "cpu")
    assert_one_line_error(code, err, "GPU instances only")
    with pytest.raises(SystemExit) as exc:
        main(["export", "tensorrt", "--onnx", str(tmp_path), "-o", repo, "--max-batch", "0"])
    assert exc.value.code == 2 and "must be >= 1, got 0" in capsys.readouterr().err
