"""The `alae-rt` command line end to end on real files, and every bad input ending in one line and exit 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import DIRECTIONS, FACES128, assert_one_line_error, require
from helpers import run_cli as run

from alae_rt import Runtime, save_checkpoint
from alae_rt.cli import main, parse_int_list
from alae_rt.images import read_image


@pytest.fixture(scope="module")
def faces3(faces128) -> list[str]:
    return [str(p) for p in sorted(faces128.glob("*.png"))[:3]]


def test_info_on_a_preset_and_a_checkpoint(capsys, rgb128_checkpoint):
    code, out, _ = run(capsys, "info", "--preset", "ffhq-1024")
    assert code == 0 and "1024x1024" in out and "GFLOPs/image" in out and "encode 64." in out
    code, out, _ = run(capsys, "info", "-c", str(rgb128_checkpoint), "--json")
    info = json.loads(out)
    assert code == 0 and info["resolution"] == 128 and info["parameters"]["total"] > 0
    assert "official ALAE checkpoint" in info["weights"]


def test_convert_then_use_the_safetensors(capsys, rgb128_checkpoint, tmp_path, faces3):
    dst = tmp_path / "model.safetensors"
    code, out, _ = run(capsys, "convert", str(rgb128_checkpoint), "-o", str(dst))
    assert code == 0 and dst.is_file() and "wrote" in out
    code, out, err = run(capsys, "encode", *faces3, "-c", str(dst), "-o", str(tmp_path / "w.npy"))
    assert code == 0 and "alae-rt checkpoint" in err
    w = np.load(tmp_path / "w.npy")
    expected = Runtime.load(rgb128_checkpoint).encode(faces3)
    np.testing.assert_allclose(w, expected.numpy(), atol=1e-5)


def test_encode_decode_reconstruct(capsys, rgb128_checkpoint, tmp_path, faces3):
    ck = str(rgb128_checkpoint)
    assert run(capsys, "encode", *faces3, "-c", ck, "-o", str(tmp_path / "w.npy"))[0] == 0
    w = np.load(tmp_path / "w.npy")
    assert w.shape == (3, 64) and w.dtype == np.float32
    code, _, _ = run(capsys, "decode", str(tmp_path / "w.npy"), "-c", ck, "-o", str(tmp_path / "dec"))
    assert code == 0
    decoded = sorted((tmp_path / "dec").glob("*.png"))
    assert [p.name for p in decoded] == ["000000.png", "000001.png", "000002.png"]
    rt = Runtime.load(rgb128_checkpoint)
    expected = rt.to_uint8(rt.decode(torch.from_numpy(w), noise="const"))
    assert np.array_equal(read_image(decoded[1]), expected[1])
    code, out, _ = run(capsys, "reconstruct", *faces3, "-c", ck, "-o", str(tmp_path / "rec"), "--batch-size", "2")
    assert code == 0 and "grid.png" in out
    assert len(list((tmp_path / "rec").glob("0*.png"))) == 3
    grid = read_image(tmp_path / "rec" / "grid.png")
    assert grid.shape == (2 + 130, 2 + 6 * 130, 3)  # one row of 3 (original, reconstruction) pairs


def test_generate_writes_images_styles_and_grid(capsys, rgb128_checkpoint, tmp_path):
    code, _, err = run(capsys, "generate", "-c", str(rgb128_checkpoint), "--seeds", "0-2,7", "--psi", "0.5",
                       "-o", str(tmp_path / "gen"))
    assert code == 0 and "generate" in err  # the progress bar
    names = sorted(p.name for p in (tmp_path / "gen").glob("seed*.png"))
    assert names == ["seed0000.png", "seed0001.png", "seed0002.png", "seed0007.png"]
    styles = np.load(tmp_path / "gen" / "styles.npy")
    assert styles.shape == (4, 12, 64)
    rt = Runtime.load(rgb128_checkpoint)
    expected = rt.to_uint8(rt.generate(seeds=[7], truncation_psi=0.5))
    assert np.array_equal(read_image(tmp_path / "gen" / "seed0007.png"), expected[0])


def test_mix_and_edit(capsys, rgb128_checkpoint, tmp_path, faces3):
    ck = str(rgb128_checkpoint)
    code, out, _ = run(capsys, "mix", "-c", ck, "--a", *faces3[:2], "--b", "seeds:0-2", "--cutoff", "6",
                       "-o", str(tmp_path / "mix"))
    assert code == 0 and "6 mix(es)" in out
    assert read_image(tmp_path / "mix" / "grid.png").shape == (2 + 3 * 130, 2 + 4 * 130, 3)
    d = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    np.save(tmp_path / "d.npy", d)
    code, out, _ = run(capsys, "edit", *faces3, "-c", ck, "--direction", f"{tmp_path / 'd.npy'}=2",
                       "-o", str(tmp_path / "edit"))
    assert code == 0 and "original | reconstruction | edited" in out
    edited = np.load(tmp_path / "edit" / "edited.npy")
    w = Runtime.load(rgb128_checkpoint).encode(faces3).numpy()
    np.testing.assert_allclose(edited, w + 2 * d, atol=1e-5)


def test_edit_grid_layout_for_images_and_for_latents(capsys, rgb128_checkpoint, tmp_path, faces3):
    """One edit layout, drawn by grids.edit_rows for the local command and the client alike: original |
    reconstruction | edited for images, decoded | edited for latents and seeds, two groups a row."""
    ck, d = str(rgb128_checkpoint), tmp_path / "d.npy"
    np.save(d, np.random.default_rng(0).standard_normal(64).astype(np.float32))
    code, out, _ = run(capsys, "edit", *faces3, "-c", ck, "--direction", f"{d}=2", "-o", str(tmp_path / "img"))
    assert code == 0 and "(original | reconstruction | edited)" in out
    grid = read_image(tmp_path / "img" / "grid.png")
    assert grid.shape == (2 + 2 * 130, 2 + 6 * 130, 3)  # 3 triples, 2 a row
    rt = Runtime.load(rgb128_checkpoint)
    original = rt.to_uint8(rt.prepare_images(faces3[2:]))[0]
    assert np.array_equal(grid[132:260, 2:130], original)  # row 2 starts with the third face as the model sees it
    code, out, _ = run(capsys, "edit", "seeds:0-2", "-c", ck, "--direction", f"{d}=2", "-o", str(tmp_path / "seeds"))
    assert code == 0 and "(decoded | edited)" in out
    assert read_image(tmp_path / "seeds" / "grid.png").shape == (2 + 2 * 130, 2 + 4 * 130, 3)
    styles = rt.seed_styles([0], truncation_psi=None)
    decoded = rt.to_uint8(rt.decode(styles, noise="const"))[0]
    assert np.array_equal(read_image(tmp_path / "seeds" / "grid.png")[2:130, 2:130], decoded)


def test_grid_layouts():
    from alae_rt.cli import grids

    imgs = [np.full((4, 4, 3), i, np.uint8) for i in range(10)]
    rows, cols = grids.edit_rows(imgs[:3], imgs[3:6], imgs[6:9])
    assert cols == "original | reconstruction | edited"
    assert [[int(a[0, 0, 0]) for a in row] for row in rows] == [[0, 3, 6, 1, 4, 7], [2, 5, 8]]
    rows, cols = grids.edit_rows(None, imgs[:3], imgs[3:6])
    assert cols == "decoded | edited" and [[int(a[0, 0, 0]) for a in row] for row in rows] == [[0, 3, 1, 4], [2, 5]]
    rows = grids.reconstruct_rows(imgs[:5], imgs[5:])
    assert [len(r) for r in rows] == [8, 2]
    assert [len(r) for r in grids.generate_rows(imgs)] == [8, 2]
    rows = grids.mix_rows(imgs[:2], imgs[2:5], [imgs[5:8], imgs[7:10]])
    assert [[int(a[0, 0, 0]) for a in row] for row in rows] == [[255, 2, 3, 4], [0, 5, 6, 7], [1, 7, 8, 9]]


class _Bar:
    """Stands in for the tqdm bar: records its updates."""

    def __init__(self, bars: list, total: int, desc: str):
        self.desc, self.total, self.updates = desc, total, []
        bars.append(self)

    def update(self, k: int) -> None:
        self.updates.append(k)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def test_progress_comes_from_the_runtimes_chunks(capsys, rgb128_checkpoint, faces128, tmp_path, monkeypatch):
    """--batch-size is the Runtime's chunk; the bar moves once per chunk, from one Runtime call (no second loop)."""
    bars: list[_Bar] = []
    monkeypatch.setattr("alae_rt.cli.ops.progress_bar", lambda args, total, desc: _Bar(bars, total, desc))
    calls = {"encode": 0, "decode_uint8": 0}

    def counting(name: str):
        fn = getattr(Runtime, name)

        def counted(self, *args, **kwargs):
            calls[name] += 1
            return fn(self, *args, **kwargs)
        return counted

    for name in calls:
        monkeypatch.setattr(Runtime, name, counting(name))
    five = [str(p) for p in sorted(faces128.glob("*.png"))[:5]]
    ck = str(rgb128_checkpoint)
    assert run(capsys, "encode", *five, "-c", ck, "--batch-size", "2", "-o", str(tmp_path / "w.npy"))[0] == 0
    assert run(capsys, "generate", "--seeds", "0-4", "-c", ck, "--batch-size", "2", "-o", str(tmp_path / "g"))[0] == 0
    assert [(b.desc, b.total, b.updates) for b in bars] == [("encode", 5, [2, 2, 1]), ("generate", 5, [2, 2, 1])]
    assert calls == {"encode": 1, "decode_uint8": 1}


def test_random_noise_with_a_seed_does_not_depend_on_the_batch_size(capsys, rgb128_checkpoint, tmp_path):
    """decode --noise random --seed S draws the noise of all N rows once (it was drawn again for every batch,
    so image k depended on --batch-size)."""
    w = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    np.save(tmp_path / "w.npy", w)
    code, _, _ = run(capsys, "decode", str(tmp_path / "w.npy"), "-c", str(rgb128_checkpoint), "--noise", "random",
                     "--seed", "3", "--batch-size", "2", "-o", str(tmp_path / "dec"))
    assert code == 0
    rt = Runtime.load(rgb128_checkpoint)
    expected = rt.to_uint8(rt.decode(torch.from_numpy(w), noise="random", seed=3))
    assert np.array_equal(read_image(tmp_path / "dec" / "000002.png"), expected[2])


def test_edit_with_named_official_directions(capsys, tmp_path):
    rt = Runtime.from_config(Runtime.from_config("tiny").config.replace(latent_size=512, name="d512"))
    ck = save_checkpoint(tmp_path / "d512.safetensors", rt.model.state_dict(), rt.config)
    code, _, _ = run(capsys, "edit", "seeds:0-1", "-c", str(ck), "--directions-dir", str(require(DIRECTIONS)),
                     "--direction", "smile=3", "--direction", "young=-1", "--layers", "0-3", "-o", str(tmp_path / "e"))
    assert code == 0
    edited = np.load(tmp_path / "e" / "edited.npy")
    assert edited.shape == (2, rt.config.num_styles, 512)
    code, out, _ = run(capsys, "demo", "-c", str(ck), "--faces", str(require(FACES128)), "--count", "2",
                       "--directions-dir", str(DIRECTIONS), "-o", str(tmp_path / "demo"))
    assert code == 0 and "official FFHQ principal directions smile, young" in out
    assert "smile +3.00" in out


def test_demo_says_which_weights(capsys, rgb128_checkpoint, faces128, tmp_path):
    code, out, _ = run(capsys, "demo", "-c", str(rgb128_checkpoint), "--faces", str(faces128), "--count", "3",
                       "-o", str(tmp_path / "demo"))
    assert code == 0
    assert f"weights: official ALAE checkpoint {rgb128_checkpoint}" in out
    assert "principal components" in out and "reconstruction PSNR" in out
    assert read_image(tmp_path / "demo" / "grid.png").shape == (2 + 3 * 130, 2 + 6 * 130, 3)


# ---- bad input ---------------------------------------------------------------------------------------------


def test_missing_and_corrupt_images(capsys, rgb128_checkpoint, tmp_path, faces3):
    ck = str(rgb128_checkpoint)
    code, _, err = run(capsys, "encode", str(tmp_path / "nope.png"), "-c", ck, "-o", str(tmp_path / "w.npy"))
    assert_one_line_error(code, err, "nope.png", "no such file")
    bad = tmp_path / "bad.png"
    bad.write_bytes(Path(faces3[0]).read_bytes()[:300])
    code, _, err = run(capsys, "reconstruct", faces3[0], str(bad), "-c", ck, "-o", str(tmp_path / "r"))
    assert_one_line_error(code, err, "bad.png", "corrupt or truncated")
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, "encode", str(empty), "-c", ck, "-o", str(tmp_path / "w.npy"))
    assert_one_line_error(code, err, "empty", "holds no image files")


def test_unreadable_and_missing_checkpoints(capsys, tmp_path, faces3, monkeypatch):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x80\x04 this is not a checkpoint")
    code, _, err = run(capsys, "encode", *faces3, "-c", str(junk), "-o", str(tmp_path / "w.npy"))
    assert_one_line_error(code, err, "junk.pth")
    code, _, err = run(capsys, "info", "-c", str(tmp_path / "absent.safetensors"))
    assert_one_line_error(code, err, "absent.safetensors", "no such checkpoint")
    monkeypatch.setattr("alae_rt.runtime.default_checkpoint", lambda: None)  # an install without the model
    code, _, err = run(capsys, "generate", "-o", str(tmp_path / "g"))
    assert_one_line_error(code, err, "no bundled default model")


def test_bad_latent_files(capsys, rgb128_checkpoint, tmp_path):
    ck = str(rgb128_checkpoint)
    np.save(tmp_path / "short.npy", np.zeros((2, 10), np.float32))
    code, _, err = run(capsys, "decode", str(tmp_path / "short.npy"), "-c", ck, "-o", str(tmp_path / "d"))
    assert_one_line_error(code, err, "short.npy", "[2, 10]", "[N, 64]")
    nan = np.zeros((2, 64), np.float32)
    nan[1, 3] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    code, _, err = run(capsys, "decode", str(tmp_path / "nan.npy"), "-c", ck, "-o", str(tmp_path / "d"))
    assert_one_line_error(code, err, "nan.npy", "NaN")
    (tmp_path / "text.npy").write_text("hello")
    code, _, err = run(capsys, "decode", str(tmp_path / "text.npy"), "-c", ck, "-o", str(tmp_path / "d"))
    assert_one_line_error(code, err, "text.npy", "not a readable .npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    code, _, err = run(capsys, "decode", str(tmp_path / "obj.npy"), "-c", ck, "-o", str(tmp_path / "d"))
    assert_one_line_error(code, err, "obj.npy")


def test_bad_arguments(capsys, rgb128_checkpoint, tmp_path, faces3):
    ck = str(rgb128_checkpoint)
    code, _, err = run(capsys, "generate", "-c", ck, "--seeds", "5-2", "-o", str(tmp_path / "g"))
    assert_one_line_error(code, err, "runs backwards")
    code, _, err = run(capsys, "edit", faces3[0], "-c", ck, "--direction", "smile=3", "-o", str(tmp_path / "e"))
    assert_one_line_error(code, err, "direction 'smile'", "neither a loaded direction")
    code, _, err = run(capsys, "edit", faces3[0], "-c", ck, "--direction", "smile", "-o", str(tmp_path / "e"))
    assert_one_line_error(code, err, "NAME=STRENGTH")
    (tmp_path / "file").write_text("x")
    code, _, err = run(capsys, "reconstruct", faces3[0], "-c", ck, "-o", str(tmp_path / "file"))
    assert_one_line_error(code, err, "exists and is not a directory")
    code, _, err = run(capsys, "convert", ck, "-o", str(tmp_path / "model.pt"))
    assert_one_line_error(code, err, "must end in .safetensors")
    code, _, err = run(capsys, "mix", "-c", ck, "--a", faces3[0], "--b", faces3[1], "--cutoff", "40",
                       "-o", str(tmp_path / "m"))
    assert_one_line_error(code, err, "cutoff: 40 is out of range 0..12")
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--batch-size", "0", "-o", str(tmp_path / "g")])
    assert exc.value.code == 2


def test_backend_options_reach_the_backend(capsys, rgb128_checkpoint, tmp_path, faces3):
    from alae_rt.cli import backend_options, build_parser

    args = build_parser("encode").parse_args(["encode", "x.png", "-o", "w.npy", "--backend-option", "onnx_dir=a/b",
                                              "--backend-option", "threads=2", "--backend-option", "cuda_graphs=false"])
    assert backend_options(args) == {"onnx_dir": "a/b", "threads": 2, "cuda_graphs": False}
    code, _, err = run(capsys, "encode", faces3[0], "-c", str(rgb128_checkpoint), "--backend", "eager",
                       "--backend-option", "speed=11", "-o", str(tmp_path / "w.npy"))
    assert_one_line_error(code, err, "backend 'eager' has no option(s) speed; it takes none")
    code, _, err = run(capsys, "encode", faces3[0], "-c", str(rgb128_checkpoint), "--backend-option", "novalue",
                       "-o", str(tmp_path / "w.npy"))
    assert_one_line_error(code, err, "expected KEY=VALUE")


def test_parse_int_list():
    assert parse_int_list("0-3,7, 9-10") == [0, 1, 2, 3, 7, 9, 10]


def test_bench_help_names_the_benchmarks_ops():
    from alae_rt.bench import OPS
    from alae_rt.cli.bench import BENCH_OPS

    assert BENCH_OPS == OPS


def test_console_script_help_and_a_real_process(rgb128_checkpoint, tmp_path):
    exe = shutil.which("alae-rt", path=str(Path(sys.executable).parent))
    assert exe, "the alae-rt console script is not installed"
    help_text = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("info", "convert", "encode", "decode", "reconstruct", "generate", "mix", "edit", "demo"):
        assert command in help_text
    bad = subprocess.run([exe, "decode", str(tmp_path / "none.npy"), "-c", str(rgb128_checkpoint), "-o",
                          str(tmp_path / "o")], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "none.npy: no such latent file" in bad.stderr
