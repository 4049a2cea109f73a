"""What a new user hit at the command line: checks that need only the input come before the model loads, client
errors name the options, sortable output names shared by the local and the client commands, output written as it
goes (kept on Ctrl-C), capped grids, the demo on the bundled model, `info` on a small preset."""

from __future__ import annotations

import asyncio
import threading

import pytest
from helpers import assert_one_line_error, run_cli

BIG_SEED = str(2**64)


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: what is checked with it in place was checked before any weights were read."""
    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr("alae_rt.runtime.Runtime.load", no_load)


@pytest.mark.parametrize("argv, needles", [
    (["generate", "--psi", "5"], ["--psi: 5.0 is out of range [-2.0, 2.0]"]),
    (["generate", "--seeds", BIG_SEED], ["--seeds: 18446744073709551616 is not a seed", "[0, 2**64 - 1]"]),
    (["mix", "--a", f"seeds:{BIG_SEED}", "--b", "seeds:0"], ["seeds: 18446744073709551616 is not a seed"]),
    (["mix", "--a", "seeds:0", "--b", "seeds:1", "--psi", "nan"], ["--psi: nan is out of range"]),
    (["edit", "seeds:0", "--direction", "pc00=1", "--psi", "-3"], ["--psi: -3.0 is out of range"]),
    (["interpolate", "--a", "seeds:0", "--b", "seeds:1", "--steps", "1"], ["--steps must be >= 2", "got 1"]),
    (["eval", "--faces", "{tmp}/empty"], ["empty: directory holds no image files"]),
    (["eval", "--faces", "{tmp}/one"], ["1 image(s)", "needs at least 2"]),
])
def test_checks_that_need_only_the_input_come_before_the_model_loads(capsys, tmp_path, no_model, argv, needles):
    """The README says they come first; they ran after the weights were read and the model built."""
    from PIL import Image

    (tmp_path / "empty").mkdir()
    (tmp_path / "one").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "one" / "a.png")
    code, _, err = run_cli(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in argv], "-o", str(tmp_path / "out"))
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "out").exists()


def test_client_checks_the_inputs_before_a_call(capsys, tmp_path):
    """Nothing listens on port 1, and no retry is allowed: an error about the connection would mean a call was made."""
    no_server = ["--server", "127.0.0.1:1", "--retry-s", "0", "-o", str(tmp_path / "out")]
    for argv, needle in ((["generate", "--psi", "5"], "--psi: 5.0 is out of range [-2.0, 2.0]"),
                         (["mix", "--a", "seeds:0", "--b", "seeds:1", "--psi", "9"], "--psi: 9.0 is out of range"),
                         (["interpolate", "--a", "seeds:0", "--b", "seeds:1", "--steps", "1"],
                          "--steps must be >= 2")):
        code, _, err = run_cli(capsys, "client", *argv, *no_server)
        assert_one_line_error(code, err, needle)


# ---- a real server on 127.0.0.1 ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    """The tiny preset (6 style inputs) served on an ephemeral port, on its own event loop in a thread."""
    pytest.importorskip("grpc", reason="the serve extra is not installed (make setup installs it)")
    from alae_rt import Runtime
    from alae_rt.serve.config import ServeConfig
    from alae_rt.serve.server import AlaeServer

    srv = AlaeServer(Runtime.from_config("tiny", seed=3, max_batch=4), ServeConfig(port=0, max_delay_ms=1))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def call(coro):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(120)

    call(srv.start())
    try:
        call(srv.wait_ready(120))
        yield srv.address
    finally:
        call(srv.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.mark.parametrize("argv, needle", [
    (["mix", "--a", "seeds:0", "--b", "seeds:1", "--cutoff", "99"], "--cutoff: 99 is out of range 0..6"),
    (["generate", "--seeds", "0", "--cutoff", "7"], "--cutoff: 7 is out of range 0..6"),
    (["edit", "seeds:0", "--direction", "d.npy=1", "--layers", "6"], "--layers: 6 is out of range 0..5"),
    (["mix", "--a", "seeds:0", "--b", "seeds:1", "--cutoff", "-1"], "--cutoff: -1 is out of range"),
])
def test_client_errors_name_the_options_not_the_request_fields(capsys, tmp_path, monkeypatch, server, argv, needle):
    """The server names its request fields (truncation_cutoff, cutoff, layers[0]); the client command, as the local
    one, names the option the value came from."""
    import numpy as np

    monkeypatch.chdir(tmp_path)
    np.save("d.npy", np.ones(32, np.float32))
    code, _, err = run_cli(capsys, "client", *argv, "--server", server, "-o", str(tmp_path / "out"))
    assert_one_line_error(code, err, needle)
    assert "truncation_cutoff" not in err and "INVALID_ARGUMENT" not in err


def test_directions_fit_without_scikit_learn_names_the_extra_before_the_model_loads(capsys, tmp_path, faces128,
                                                                                      no_model, monkeypatch):
    """It was a ModuleNotFoundError traceback after loading the model and encoding the examples."""
    import sys

    monkeypatch.setitem(sys.modules, "sklearn", None)  # as if not installed: find_spec and import both fail
    faces = sorted(map(str, faces128.glob("*.png")))
    code, _, err = run_cli(capsys, "directions", "fit", "--positive", *faces[:4], "--negative", *faces[4:8],
                           "--name", "x", "-o", str(tmp_path / "d"))
    assert_one_line_error(code, err, "directions fit needs sklearn", "pip install 'alae-rt[train]'")
    assert not (tmp_path / "d").exists()


# ---- output written as it goes ---------------------------------------------------------------------------------


def test_ctrl_c_keeps_every_image_written_and_their_styles(tmp_path):
    """A real SIGINT to `alae-rt generate --seeds 0-19999`: it exited 130 having written nothing (5,368 images lost
    at 27%). Now every chunk is written before the next: the images so far stay, whole, with their styles."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import numpy as np

    from alae_rt.images import read_image

    gen = tmp_path / "gen"
    log = tmp_path / "stderr.txt"  # a file, not a pipe: the progress bar must never block on a full pipe
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "alae_rt.cli", "generate", "--seeds", "0-19999",
                                 "--batch-size", "4", "--noise", "const", "-o", str(gen)], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=stderr, env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            t0 = time.monotonic()
            while len(list(gen.glob("seed*.png"))) < 8:  # the run is under way: some chunks are on disk
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() - t0 < 300, "no images written"
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            proc.wait(120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    err = log.read_text()
    assert proc.returncode == 130, err
    files = sorted(p.name for p in gen.iterdir())
    images = [name for name in files if name.startswith("seed")]
    written = len(images)
    assert 8 <= written < 20000
    assert images == [f"seed{s:04d}.png" for s in range(written)]  # the first seeds, in order, no gaps
    assert set(files) == {*images, "styles.npy"}  # no half-written file left behind, no grid of a stopped run
    assert f"wrote {written} of 20000 image(s) to {gen} before the interruption" in err
    assert err.strip().splitlines()[-1] == "alae-rt: interrupted"
    for name in images[-3:]:  # whole PNGs
        assert read_image(gen / name).shape == (64, 64, 3)
    styles = np.load(gen / "styles.npy")
    assert styles.shape == (written, 10, 64)
    from alae_rt import Runtime

    rt = Runtime.load()
    np.testing.assert_allclose(styles[[0, -1]], rt.seed_styles([0, written - 1]).numpy(), atol=1e-5)


def test_a_long_run_draws_a_capped_grid(capsys, tmp_path):
    """5,000 seeds made a 1042 x 26398 grid.png holding every image (and the run held them all in memory); the grid
    shows the first grids.grid_capacity images and says so. Every image is still written."""
    import numpy as np
    from helpers import find_row

    from alae_rt.cli import grids
    from alae_rt.images import read_image

    assert grids.grid_capacity(64) == 64 and grids.grid_capacity(1024) == 16  # bounded pixels at any resolution
    code, out, _ = run_cli(capsys, "-q", "generate", "--seeds", "0-69", "--noise", "const", "--batch-size", "16",
                           "-o", str(tmp_path / "g"))
    assert code == 0 and "wrote 70 image(s)" in out
    assert len(list((tmp_path / "g").glob("seed*.png"))) == 70
    grid = read_image(tmp_path / "g" / "grid.png")
    assert grid.shape[1] == 2 + 8 * 130  # 8 a row, cells enlarged to 128
    big = lambda name: np.repeat(np.repeat(read_image(tmp_path / "g" / name), 2, 0), 2, 1)  # noqa: E731
    assert find_row(grid, big("seed0063.png"), column=7) is not None  # the 64th is shown
    assert all(find_row(grid, big("seed0064.png"), column=j) is None for j in range(8))  # the 65th is not
    assert np.load(tmp_path / "g" / "styles.npy").shape[0] == 70


# ---- names -------------------------------------------------------------------------------------------------------


def test_output_names_sort_in_input_order_and_the_mix_grid_names_the_files(capsys, tmp_path, faces128, monkeypatch,
                                                                            server):
    """`client edit w.npy` wrote w_0 ... w_109 (sorting w_0, w_1, w_10), `decode` 000000.png, and mix grid rows said
    `a: 0000_00000` instead of the file's name: one naming for the local and the client commands."""
    import numpy as np

    from alae_rt.cli import grids

    rng = np.random.default_rng(0)
    np.save(tmp_path / "w64.npy", rng.standard_normal((11, 64)).astype(np.float32))  # the bundled model's D
    np.save(tmp_path / "w32.npy", rng.standard_normal((11, 32)).astype(np.float32))  # the tiny server's
    direction = tmp_path / "d.npy"
    np.save(direction, np.ones(64, np.float32))
    np.save(tmp_path / "d32.npy", np.ones(32, np.float32))
    shown = []
    mix_grid = grids.mix_grid
    monkeypatch.setattr(grids, "mix_grid", lambda *a, **k: shown.append((a[3], a[4])) or mix_grid(*a, **k))
    face = str(sorted(faces128.glob("*.png"))[0])
    local, remote = ["--noise", "const"], ["--noise", "const", "--server", server]
    runs = [(["edit", str(tmp_path / "w64.npy"), "--direction", f"{direction}=1", *local], "w64"),
            (["decode", str(tmp_path / "w64.npy"), *local], "w64"),
            (["client", "edit", str(tmp_path / "w32.npy"), "--direction", f"{tmp_path / 'd32.npy'}=1", *remote], "w32"),
            (["client", "decode", str(tmp_path / "w32.npy"), *remote], "w32")]
    for k, (argv, stem) in enumerate(runs):
        out = tmp_path / f"out{k}"
        code, _, err = run_cli(capsys, "-q", *argv, "-o", str(out))
        assert code == 0, err
        names = sorted(p.stem for p in out.glob(f"{stem}_*.png"))
        assert names == [f"{stem}_{i:04d}" for i in range(11)], argv  # sorted = row order
    for argv in (["mix", "--a", face, "--b", "seeds:3", *local],
                 ["client", "mix", "--a", face, "--b", "seeds:3", *remote]):
        code, _, err = run_cli(capsys, "-q", *argv, "-o", str(tmp_path / "mix"))
        assert code == 0, err
        assert (tmp_path / "mix" / "mix_0000_00000__seed0003.png").is_file()
    assert shown == [(["00000.png"], ["seed 3"])] * 2  # the grid's row and column labels


def test_info_and_the_generate_caption_say_which_style_inputs_truncation_takes(capsys):
    """`info` on the tiny preset said cutoff=8 for a model with 6 style inputs."""
    from alae_rt.cli.ops import generate_caption

    code, out, _ = run_cli(capsys, "info", "--preset", "tiny")
    assert code == 0 and "truncation:     psi=0.7 on all 6 style inputs (cutoff 8)" in out
    code, out, _ = run_cli(capsys, "info")  # the bundled model: 10 style inputs
    assert code == 0 and "truncation:     psi=0.7 on style inputs < 8 (of 10)" in out
    assert "on all 6 style inputs (cutoff 8)" in generate_caption(1, 0.7, 8, 6, "const", None)


# ---- the demo ------------------------------------------------------------------------------------------------------


def test_make_demo_on_the_bundled_model_edits_along_its_own_directions(capsys, tmp_path, monkeypatch):
    """`make demo` passed the official 512-d directions to the bundled model (D=64), so its caption always said
    "(the directions do not fit this model ...)"; its columns said pca0/pca1, not the bundled pc00/pc01; and the
    caption gave the weights' absolute path (the client's grids give the file's name)."""
    import shlex
    import subprocess

    from helpers import ROOT

    from alae_rt import demo

    line = subprocess.run(["make", "-n", "-s", "demo", f"OUT={tmp_path / 'demo'}"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.strip().splitlines()[-1]
    argv = shlex.split(line)
    assert argv[0].endswith("alae-rt") and "--directions-dir" not in argv  # no checkpoint: the bundled model
    with_checkpoint = subprocess.run(["make", "-n", "-s", "demo", "CHECKPOINT=model_157.pth"], cwd=ROOT,
                                     capture_output=True, text=True, check=True).stdout
    assert "--directions-dir" in with_checkpoint
    captions = []
    save_grid = demo.save_grid
    monkeypatch.setattr(demo, "save_grid", lambda grid, path: captions.append(grid.caption) or save_grid(grid, path))
    monkeypatch.chdir(ROOT)  # the Makefile's paths are the checkout's
    code, out, _ = run_cli(capsys, *argv[1:], "--count", "2")
    assert code == 0
    assert "edits: the model's own principal directions pc00, pc01" in out and "do not fit" not in out
    assert "columns: original | reconstruction | pc00 -" in out and "pca0" not in out
    assert captions[0][0].startswith("weights: alae-rt checkpoint default.safetensors (alae-rt default model")
    assert not any("/" in line for line in captions[0])


def test_a_disk_that_fills_part_way_keeps_the_images_written_and_says_how_many(capsys, tmp_path, monkeypatch):
    """The fifth PNG meets a full disk: the four before it stay, with their latents, and the one line says so."""
    import errno

    import numpy as np

    from alae_rt import images

    np.save(tmp_path / "w.npy", np.random.default_rng(0).standard_normal((9, 64)).astype(np.float32))
    save_image, calls = images.save_image, []

    def filling(image, path):
        calls.append(path)
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return save_image(image, path)

    monkeypatch.setattr(images, "save_image", filling)
    out = tmp_path / "e"
    code, _, err = run_cli(capsys, "-q", "edit", str(tmp_path / "w.npy"), "--direction", "pc00=1", "--batch-size", "2",
                           "-o", str(out))
    assert_one_line_error(code, err, f"{out / 'w_0004.png'}: No space left on device; wrote 4 of 9 edited image(s) "
                                     f"to {out} before the failure")
    assert sorted(p.name for p in out.iterdir()) == ["edited.npy", *(f"w_{i:04d}.png" for i in range(4))]
    assert np.load(out / "edited.npy").shape == (4, 64)
