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
