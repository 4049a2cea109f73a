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
from helpers import DIRECTIONS, FACES128, assert_one_line_error, find_row, has_text, require
from helpers import run_cli as run

from alae_rt import Runtime, save_checkpoint
from alae_rt.cli import main, parse_int_list
from alae_rt.images import read_image
from alae_rt.runtime import default_checkpoint


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


def test_encode_decode_reconstruct(capsys, tmp_path, faces3):
    """On the bundled 64x64 model (no --checkpoint; the official checkpoints' loading: test_convert_..., test_info_...,
    test_generate_...): the 128x128 faces resized to 64, its 64x64 outputs shown 2x in the grid."""
    ck = default_checkpoint()
    assert run(capsys, "encode", *faces3, "-o", str(tmp_path / "w.npy"))[0] == 0
    w = np.load(tmp_path / "w.npy")
    assert w.shape == (3, 64) and w.dtype == np.float32
    code, _, _ = run(capsys, "decode", str(tmp_path / "w.npy"), "-o", str(tmp_path / "dec"))
    assert code == 0
    decoded = sorted((tmp_path / "dec").glob("*.png"))
    assert [p.name for p in decoded] == ["w_0000.png", "w_0001.png", "w_0002.png"]
    rt = Runtime.load(ck)
    assert rt.config.resolution == 64
    expected = rt.to_uint8(rt.decode(torch.from_numpy(w), noise="const"))
    assert np.array_equal(read_image(decoded[1]), expected[1])
    code, out, _ = run(capsys, "reconstruct", *faces3, "-o", str(tmp_path / "rec"), "--batch-size", "2")
    assert code == 0 and "grid.png" in out
    assert len(list((tmp_path / "rec").glob("0*.png"))) == 3
    grid = read_image(tmp_path / "rec" / "grid.png")
    # One row of 3 (original, reconstruction) pairs under a header, the caption below them; 64x64 cells shown 2x.
    big = lambda img: np.repeat(np.repeat(img, 2, 0), 2, 1)  # noqa: E731
    y = find_row(grid, big(rt.to_uint8(rt.prepare_images(faces3[:1]))[0]), column=0)
    assert y is not None and y > 2 and grid.shape[1] == 2 + 6 * 130 and grid.shape[0] > y + 130
    reconstruction = read_image(tmp_path / "rec" / f"0000_{Path(faces3[0]).stem}.png")
    assert reconstruction.shape == (64, 64, 3) and np.array_equal(grid[y:y + 128, 132:260], big(reconstruction))
    assert has_text(grid[:y]) and has_text(grid[y + 130:])  # the column labels, the caption (weights, PSNR)


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
    grid = read_image(tmp_path / "mix" / "grid.png")
    assert grid.shape[1] == 2 + 4 * 130
    # The a inputs down the left are the photos as the model sees them (they were reconstructions), the corner
    # holds a note instead of a blank, b's decoded seeds run along the top, mix (a1, b2) at row 2, column 3.
    rt = Runtime.load(rgb128_checkpoint)
    photos = rt.to_uint8(rt.prepare_images(faces3[:2]))
    y1, y2 = find_row(grid, photos[0], 0), find_row(grid, photos[1], 0)
    assert y1 is not None and y2 is not None and y2 > y1
    top = find_row(grid, rt.to_uint8(rt.decode(rt.seed_styles([0, 1, 2]), noise="const"))[0], 1)
    assert top is not None and top < y1 and has_text(grid[top + 10:top + 100, 10:120])
    mixed = read_image(tmp_path / "mix" / f"mix_0001_{Path(faces3[1]).stem}__seed0002.png")
    assert np.array_equal(grid[y2:y2 + 128, 2 + 3 * 130:2 + 3 * 130 + 128], mixed)
    d = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    np.save(tmp_path / "d.npy", d)
    code, out, _ = run(capsys, "edit", *faces3, "-c", ck, "--direction", f"{tmp_path / 'd.npy'}=2",
                       "-o", str(tmp_path / "edit"))
    assert code == 0 and "original | reconstruction | edited" in out
    edited = np.load(tmp_path / "edit" / "edited.npy")
    w = Runtime.load(rgb128_checkpoint).encode(faces3).numpy()
    np.testing.assert_allclose(edited, w + 2 * d, atol=1e-5)


def test_edit_grid_layout_for_images_and_for_latents(capsys, rgb128_checkpoint, tmp_path, faces3):
    """One edit layout, drawn by grids.edit_grid for the local command and the client alike: original |
    reconstruction | edited for images, decoded | edited for latents and seeds, two groups a row, labelled."""
    ck, d = str(rgb128_checkpoint), tmp_path / "d.npy"
    np.save(d, np.random.default_rng(0).standard_normal(64).astype(np.float32))
    code, out, _ = run(capsys, "edit", *faces3, "-c", ck, "--direction", f"{d}=2", "-o", str(tmp_path / "img"))
    assert code == 0 and "(original | reconstruction | edited)" in out
    grid = read_image(tmp_path / "img" / "grid.png")
    assert grid.shape[1] == 2 + 6 * 130  # 3 triples, 2 a row
    rt = Runtime.load(rgb128_checkpoint)
    first, third = (rt.to_uint8(rt.prepare_images([f]))[0] for f in (faces3[0], faces3[2]))
    y0, y1 = find_row(grid, first, 0), find_row(grid, third, 0)  # row 2 starts with the third face
    assert y0 is not None and y1 is not None and y1 > y0 + 128
    assert has_text(grid[:y0])  # original, reconstruction, d +2 over the columns
    code, out, _ = run(capsys, "edit", "seeds:0-2", "-c", ck, "--direction", f"{d}=2", "-o", str(tmp_path / "seeds"))
    assert code == 0 and "(decoded | edited)" in out
    grid = read_image(tmp_path / "seeds" / "grid.png")
    assert grid.shape[1] == 2 + 4 * 130
    styles = rt.seed_styles([0, 1, 2], truncation_psi=None)  # decoded as one batch, as the command does
    decoded = rt.to_uint8(rt.decode(styles, noise="const"))[0]
    assert find_row(grid, decoded, 0) is not None


def test_labelled_grid_layout():
    """Labels over the columns (or cells), a note in an empty cell and a caption; small images enlarged by a whole
    factor so the labels fit, each cell still exactly its image."""
    from alae_rt.cli import grids

    imgs = [np.full((16, 16, 3), 40 * i, np.uint8) for i in range(6)]
    grid = grids.Grid([imgs[:3], imgs[3:5]], header=["original", "reconstruction", "smile +3"],
                      caption=["weights: random weights (preset tiny)", "reconstruction PSNR: 12.00 dB"])
    image, layout = grids.render(grid)
    assert layout.scale == 8 and layout.size == 128 and image.shape[1] == 2 + 3 * 130
    for k, (i, j) in enumerate([(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]):
        assert np.array_equal(layout.crop(image, i, j), imgs[k])
    y0 = layout.cells[(0, 0)][0]
    for j in range(3):  # a label over each column
        assert has_text(image[:y0, 2 + j * 130:2 + j * 130 + 128])
    assert has_text(image[layout.cells[(1, 0)][0] + 128:])  # the caption
    assert not has_text(image[layout.cells[(1, 0)][0]:, 2 + 2 * 130 + 10:2 + 3 * 130 - 10][:128])  # no image there
    mix = grids.mix_grid(imgs[:1], imgs[1:3], [imgs[3:5]], ["a0"], ["b0", "b1"], 4, "w")
    image, layout = grids.render(mix)
    y, x = layout.cells[(0, 0)]
    assert has_text(image[y:y + 128, x:x + 128])  # the corner says what the rows and columns are
    assert np.array_equal(layout.crop(image, 1, 0), imgs[0]) and np.array_equal(layout.crop(image, 0, 2), imgs[2])
    grey = grids.render(grids.Grid([[np.zeros((64, 64, 1), np.uint8)]], header=["x"]))[0]
    assert grey.shape[2] == 1 and grey.shape[1] == 2 + 130


def test_model_view_matches_the_runtime(rgb128_checkpoint, faces3, image_folder):
    """The client draws its originals with numpy (no torch): within 1 level of the Runtime's preparation, for faces
    (2x2 pooling) and for odd sizes, grey and RGBA (adaptive pooling, alpha on white)."""
    from alae_rt.cli.grids import model_view

    rt = Runtime.load(rgb128_checkpoint)
    for path in [*faces3, *sorted(image_folder.iterdir())[:4]]:
        ours = model_view(read_image(path), 128, 3).astype(int)
        theirs = rt.to_uint8(rt.prepare_images([path]))[0].astype(int)
        assert ours.shape == theirs.shape and np.abs(ours - theirs).max() <= 1, path


def test_grid_rows():
    from alae_rt.cli import grids

    imgs = [np.full((4, 4, 3), i, np.uint8) for i in range(10)]
    grid, cols = grids.edit_grid(imgs[:3], imgs[3:6], imgs[6:9], "d +2", "w")
    assert cols == "original | reconstruction | edited" and grid.header == ["original", "reconstruction", "d +2"] * 2
    assert [[int(a[0, 0, 0]) for a in row] for row in grid.rows] == [[0, 3, 6, 1, 4, 7], [2, 5, 8]]
    assert any("PSNR" in line for line in grid.caption) and "weights: w" in grid.caption
    grid, cols = grids.edit_grid(None, imgs[:3], imgs[3:6], "d +2", "w")
    assert cols == "decoded | edited" and [[int(a[0, 0, 0]) for a in row] for row in grid.rows] == [[0, 3, 1, 4],
                                                                                                       [2, 5]]
    assert [len(r) for r in grids.reconstruct_grid(imgs[:5], imgs[5:], "w").rows] == [8, 2]
    assert [len(r) for r in grids.generate_grid(imgs, [str(i) for i in range(10)], []).rows] == [8, 2]
    grid = grids.mix_grid(imgs[:2], imgs[2:5], [imgs[5:8], imgs[7:10]], ["a0", "a1"], ["b0", "b1", "b2"], 4, "w")
    assert [[None if a is None else int(a[0, 0, 0]) for a in row] for row in grid.rows] == [
        [None, 2, 3, 4], [0, 5, 6, 7], [1, 7, 8, 9]]
    assert grids.edit_label([("out/dir.npy", 1.0), ("smile", -2.5)]) == "dir +1, smile -2.5"
    assert grids.edit_label([("smile", 3.0)], mode="set") == "smile = 3"


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
    """--batch-size is the chunk: one Runtime call each, written before the next (a run stopped part-way keeps what
    it wrote, and memory holds one chunk); the bar moves once per chunk."""
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
    assert calls == {"encode": 3, "decode_uint8": 3}


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
    assert np.array_equal(read_image(tmp_path / "dec" / "w_0002.png"), expected[2])


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


def test_demo_says_which_weights(capsys, rgb128_checkpoint, faces3, tmp_path):
    """Three faces (the fewest the principal components take), two of them shown."""
    faces = tmp_path / "faces"
    faces.mkdir()
    for f in faces3:
        (faces / Path(f).name).symlink_to(f)
    code, out, _ = run(capsys, "demo", "-c", str(rgb128_checkpoint), "--faces", str(faces), "--count", "2",
                       "-o", str(tmp_path / "demo"))
    assert code == 0
    assert f"weights: official ALAE checkpoint {rgb128_checkpoint}" in out
    assert "principal components of the 3 faces' w" in out and "reconstruction PSNR over the 2 faces" in out
    grid = read_image(tmp_path / "demo" / "grid.png")
    assert grid.shape[1] == 2 + 6 * 130
    rt = Runtime.load(rgb128_checkpoint)
    first = rt.to_uint8(rt.prepare_images(faces3[:1]))[0]
    y = find_row(grid, first, 0)
    # The columns are labelled above the first face; the weights and the PSNR are written under the 2 rows.
    assert y is not None and has_text(grid[:y]) and has_text(grid[y + 2 * 130:])
    assert "2 rows (faces)" in out


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
    (tmp_path / "text.npy").write_text("hello\n")  # 6 bytes of text: numpy called it pickled data
    code, _, err = run(capsys, "decode", str(tmp_path / "text.npy"), "-c", ck, "-o", str(tmp_path / "d"))
    assert_one_line_error(code, err, "text.npy", "not a .npy file")
    assert "pickle" not in err
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    code, _, err = run(capsys, "decode", str(tmp_path / "obj.npy"), "-c", ck, "-o", str(tmp_path / "d"))
    assert_one_line_error(code, err, "obj.npy", "holds Python objects, not numbers")
    assert "allow_pickle" not in err
    d = tmp_path / "dir.npy"
    d.write_bytes(b"\x00" * 7)
    code, _, err = run(capsys, "edit", "seeds:0", "-c", ck, "--direction", f"{d}=1", "-o", str(tmp_path / "e"))
    assert_one_line_error(code, err, "dir.npy", "not a .npy file")


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
    err = capsys.readouterr().err  # the subcommand's usage and the option's problem, not the top-level usage
    assert "usage: alae-rt generate" in err and "argument --batch-size: must be >= 1, got 0" in err


def test_backend_options_reach_the_backend(capsys, rgb128_checkpoint, tmp_path, faces3):
    from alae_rt.cli import backend_options, build_parser

    args = build_parser("encode").parse_args(["encode", "x.png", "-o", "w.npy", "--backend-option", "onnx_dir=a/b",
                                              "--backend-option", "threads=2", "--backend-option", "cuda_graphs=false"])
    assert backend_options(args) == {"onnx_dir": "a/b", "threads": 2, "cuda_graphs": False}
    code, _, err = run(capsys, "encode", faces3[0], "-c", str(rgb128_checkpoint), "--backend", "eager",
                       "--backend-option", "speed=11", "-o", str(tmp_path / "w.npy"))
    assert_one_line_error(code, err, "backend 'eager' has no option(s) speed; it takes channels_last")
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


# ---- issue 17: what a new user hit ------------------------------------------------------------------------------

BIG_SEED = "99999999999999999999"  # > 2**64 - 1


def test_seeds_beyond_64_bits_are_one_line_errors(capsys, rgb128_checkpoint, tmp_path):
    ck = str(rgb128_checkpoint)
    code, _, err = run(capsys, "generate", "-c", ck, "--seeds", BIG_SEED, "-o", str(tmp_path / "g"))
    assert_one_line_error(code, err, "seeds", "[0, 2**64 - 1]")
    code, _, err = run(capsys, "mix", "-c", ck, "--a", f"seeds:{BIG_SEED}", "--b", "seeds:0", "-o", str(tmp_path / "m"))
    assert_one_line_error(code, err, "seeds", "[0, 2**64 - 1]")
    # The client refuses it before any call (the wire's seeds are uint64): no server is needed to see it.
    code, _, err = run(capsys, "client", "generate", "--seeds", BIG_SEED, "--server", "127.0.0.1:1", "--retry-s", "0",
                       "-o", str(tmp_path / "cg"))
    assert_one_line_error(code, err, "seeds", "[0, 2**64 - 1]")
    assert not (tmp_path / "cg").exists()


def test_psi_has_one_range_for_every_command(capsys, rgb128_checkpoint, tmp_path, faces3):
    ck = str(rgb128_checkpoint)
    for argv in (["generate", "--seeds", "0"], ["mix", "--a", "seeds:0", "--b", faces3[0]],
                 ["edit", "seeds:0", "--direction", f"{tmp_path / 'd.npy'}=1"]):
        np.save(tmp_path / "d.npy", np.ones(64, np.float32))
        code, _, err = run(capsys, *argv, "--psi", "1e30", "-c", ck, "-o", str(tmp_path / "out"))
        assert_one_line_error(code, err, "--psi: 1e+30 is out of range [-2.0, 2.0]")


def test_a_direction_named_twice_is_refused(capsys, rgb128_checkpoint, tmp_path):
    d = tmp_path / "d.npy"
    np.save(d, np.ones(64, np.float32))
    code, _, err = run(capsys, "edit", "seeds:0", "-c", str(rgb128_checkpoint), "--direction", f"{d}=2",
                       "--direction", f"{d}=-2", "-o", str(tmp_path / "e"))
    assert_one_line_error(code, err, "is given twice (2 and -2)", f"{d}=0 for the sum")
    code, _, err = run(capsys, "client", "edit", "seeds:0", "--direction", "smile=2", "--direction", "smile=1",
                       "--server", "127.0.0.1:1", "--retry-s", "0", "-o", str(tmp_path / "ce"))
    assert_one_line_error(code, err, "'smile' is given twice")


def test_directions_for_another_latent_size_say_so(capsys, tmp_path):
    """The official FFHQ directions (D=512) on the bundled model (D=64)."""
    code, _, err = run(capsys, "edit", "seeds:0", "--directions-dir", str(require(DIRECTIONS)), "--direction",
                       "smile=3", "-o", str(tmp_path / "e"))
    assert_one_line_error(code, err, "these directions are for a model with D=512 (the official FFHQ); this model "
                                     "has D=64", ".npy)")
    assert "torch." not in err


def test_quiet_after_the_subcommand(capsys, rgb128_checkpoint, tmp_path, faces3):
    code, out, err = run(capsys, "encode", "-q", faces3[0], "-c", str(rgb128_checkpoint), "-o", str(tmp_path / "w.npy"))
    assert code == 0 and err == "" and "wrote" in out
    code, out, err = run(capsys, "-q", "encode", faces3[0], "-c", str(rgb128_checkpoint), "-o", str(tmp_path / "w.npy"))
    assert code == 0 and err == ""
    from alae_rt.cli import build_parser

    args = build_parser("client").parse_args(["client", "info", "-q"])
    assert args.quiet is True
    assert build_parser("encode").parse_args(["encode", "x.png", "-o", "w.npy"]).quiet is False


def test_inputs_are_checked_before_the_model_loads(capsys, tmp_path, faces3, monkeypatch):
    """A missing .npy, a bad --layers or seed list, a missing directions folder: reported without loading weights."""
    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr("alae_rt.runtime.Runtime.load", no_load)
    out = str(tmp_path / "o")
    cases = [
        (["decode", str(tmp_path / "missing.npy")], "missing.npy: no such latent file"),
        (["edit", "seeds:0", "--direction", f"{tmp_path / 'x.npy'}=1"], "x.npy: no such direction file"),
        (["edit", faces3[0], "--direction", "smile=1", "--layers", "0-x"], "--layers: cannot read"),
        (["edit", "seeds:0", "--direction", "smile=1", "--directions-dir", str(tmp_path / "nodir")],
         "nodir: no such directions folder"),
        (["mix", "--a", "seeds:3-1", "--b", "seeds:0"], "runs backwards"),
        (["mix", "--a", str(tmp_path / "none.npy"), "--b", "seeds:0"], "none.npy: no such latent file"),
        (["reconstruct", str(tmp_path / "nope.png")], "nope.png: no such file"),
    ]
    for argv, needle in cases:
        code, _, err = run(capsys, *argv, "-o", out)
        assert_one_line_error(code, err, needle)
        assert not (tmp_path / "o").exists()  # and no output folder is left behind


def test_failed_runs_leave_no_empty_output_folders(capsys, rgb128_checkpoint, tmp_path):
    np.save(tmp_path / "short.npy", np.zeros((2, 10), np.float32))
    out = tmp_path / "new" / "deeper"
    code, _, _ = run(capsys, "decode", str(tmp_path / "short.npy"), "-c", str(rgb128_checkpoint), "-o", str(out))
    assert code == 2 and not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()  # a folder that was there before stays
    code, _, _ = run(capsys, "generate", "--seeds", "0", "--psi", "9", "-c", str(rgb128_checkpoint),
                     "-o", str(tmp_path / "kept"))
    assert code == 2 and (tmp_path / "kept").is_dir()


def test_checkpoint_folder_and_single_latent(capsys, rgb128_checkpoint, tmp_path):
    code, _, err = run(capsys, "info", "-c", str(tmp_path))
    assert_one_line_error(code, err, "is a directory")
    np.save(tmp_path / "one.npy", np.zeros(64, np.float32))  # one w [D]: decoded as [1, D], and said so
    code, out, err = run(capsys, "decode", str(tmp_path / "one.npy"), "-c", str(rgb128_checkpoint),
                         "-o", str(tmp_path / "d"))
    assert code == 0 and "one w [64], decoded as [1, 64]" in err and "wrote 1 image(s)" in out


def test_compile_says_it_is_compiling(capsys, rgb128_checkpoint, tmp_path):
    np.save(tmp_path / "short.npy", np.zeros((2, 10), np.float32))  # fails after the model loads, before any call
    code, _, err = run(capsys, "decode", str(tmp_path / "short.npy"), "-c", str(rgb128_checkpoint), "--backend",
                       "compile", "-o", str(tmp_path / "d"))
    assert code == 2 and "compiling on the first call of each batch size (first call only" in err


def test_openmp_threads_sleep_when_idle(capsys, monkeypatch):
    """The CLI sets OMP_WAIT_POLICY=PASSIVE before torch loads (spinning threads on a shared machine made small
    models ~100x slower on 2 threads), and keeps a policy the user set."""
    import os

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert run(capsys, "info", "--preset", "tiny")[0] == 0
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert run(capsys, "info", "--preset", "tiny")[0] == 0
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_local_interpolate(capsys, rgb128_checkpoint, tmp_path):
    code, out, _ = run(capsys, "interpolate", "--a", "seeds:0", "--b", "seeds:1-2", "--steps", "3",
                       "-c", str(rgb128_checkpoint), "-o", str(tmp_path / "i"))
    assert code == 0 and "6 frame(s) of 2 interpolation(s)" in out
    path = np.load(tmp_path / "i" / "latents.npy")
    rt = Runtime.load(rgb128_checkpoint)
    expected = rt.interpolate(rt.seed_styles([0]), rt.seed_styles([1, 2]), 3)
    np.testing.assert_allclose(path, expected.numpy(), atol=1e-6)
    frame = read_image(tmp_path / "i" / "seed0000__seed0002_t001.png").astype(int)
    ref = rt.to_uint8(rt.decode(expected[1], noise="const"))[1].astype(int)
    assert np.abs(frame - ref).max() <= 1
    code, _, err = run(capsys, "interpolate", "--a", "seeds:0-1", "--b", "seeds:1-3", "-c", str(rgb128_checkpoint),
                       "-o", str(tmp_path / "j"))
    assert_one_line_error(code, err, "--b: 3 input(s) against 2 in --a")


def test_backend_needing_an_option_names_the_flag(capsys, rgb128_checkpoint, tmp_path, faces3):
    pytest.importorskip("onnxruntime")
    code, _, err = run(capsys, "encode", faces3[0], "-c", str(rgb128_checkpoint), "--backend", "onnxruntime",
                       "-o", str(tmp_path / "w.npy"))
    assert_one_line_error(code, err, "backend 'onnxruntime' needs --backend-option onnx_dir=DIR")
