"""Bad input at the command line and in the client library is refused in one line before any work or connection:
ports, server addresses, seconds, unsigned request fields, interpolation steps, unwritable output folders."""

from __future__ import annotations

import logging

import pytest
from helpers import assert_one_line_error, run_cli

from alae_rt.errors import AlaeError
from alae_rt.serve.client import AlaeClient, Seeds
from alae_rt.serve.logs import LOGGER


@pytest.fixture(autouse=True)
def serve_logging_restored():
    """`serve` run in this process points the server's log at this test's captured stderr; put it back, or the
    servers of later tests in this worker log to a closed stream."""
    logger = logging.getLogger(LOGGER)
    saved = logger.handlers[:], logger.level, logger.propagate
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


@pytest.mark.parametrize("argv, message", [
    (["serve", "--port", "99999"], "argument --port: must be in 0..65535, got 99999"),
    (["serve", "--port", "0", "--metrics-port", "70000"], "argument --metrics-port: must be in 0..65535"),
    (["serve", "--http-port", "-1"], "argument --http-port: must be in 0..65535, got -1"),
    (["client", "info", "--server", "127.0.0.1:99999"], "argument --server: expected HOST:PORT"),
    (["client", "info", "--server", "127.0.0.1:"], "argument --server: expected HOST:PORT"),
    (["client", "info", "--server", "nonsense"], "argument --server: expected HOST:PORT"),
    (["client", "health", "--wait", "nan"], "argument --wait: must be a finite number >= 0, got nan"),
    (["client", "info", "--timeout", "0"], "argument --timeout: must be > 0, got 0"),
])
def test_out_of_range_options_are_refused_by_the_parser(capsys, argv, message):
    """A port of 99999 used to be taken modulo 65536 (the server listened on 34463); --wait nan never returned."""
    with pytest.raises(SystemExit) as exc:
        run_cli(capsys, *argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_client_fields_out_of_range_are_named_before_a_call():
    """Values protobuf would refuse with a bare ValueError (negative, or past uint32/uint64) are named by field; no
    server is contacted (nothing listens on port 1)."""
    w = [[0.0] * 8]
    with AlaeClient("127.0.0.1:1", timeout=5) as c:
        for call, message in ((lambda: c.generate(seeds=[0], cutoff=-1), "cutoff: -1 is out of range"),
                              (lambda: c.generate(seeds=[0], noise="random", seed=-5), "seed: -5 is out of range"),
                              (lambda: c.decode(w, noise="random", seed=2**64), "seed: 18446744073709551616 is out"),
                              (lambda: c.mix(Seeds([0]), Seeds([1]), cutoff=-1), "cutoff: -1 is out of range"),
                              (lambda: c.edit(Seeds([0]), {"pc00": 1.0}, layers=[-1]), "layers: -1 is out of range"),
                              (lambda: list(c.interpolate(Seeds([0]), Seeds([1]), steps=-2)),
                               "steps: -2 is out of range")):
            with pytest.raises(AlaeError, match=message):
                call()


def test_client_interpolate_needs_two_steps_before_connecting(capsys, tmp_path):
    code, _, err = run_cli(capsys, "client", "interpolate", "--a", "seeds:0", "--b", "seeds:1", "--steps", "1",
                           "--server", "127.0.0.1:1", "-o", str(tmp_path / "out"))
    assert_one_line_error(code, err, "--steps must be >= 2", "got 1")


def test_an_output_folder_no_file_can_be_made_in_is_refused_before_the_work(capsys, tmp_path):
    """/proc: root may 'access' it for writing, but no file can be made there; the error comes before encoding (and
    convert gave a safetensors traceback)."""
    face = tmp_path / "face.png"
    from PIL import Image

    Image.new("RGB", (16, 16)).save(face)
    code, _, err = run_cli(capsys, "encode", str(face), "-o", "/proc/w.npy")
    assert_one_line_error(code, err, "/proc", "not writable")


@pytest.mark.parametrize("argv, needles", [
    # a repeated seed named one file twice: "wrote 3 image(s)" and two files
    (["generate", "--seeds", "1,1,2", "-o", "{tmp}/g"], ["seeds: 1 is given more than once"]),
    (["edit", "seeds:0-2,1", "--direction", "pc00=1", "-o", "{tmp}/e"], ["seeds: 1 is given more than once"]),
    # an unknown backend was skipped and the run exited 0
    (["bench", "--preset", "tiny", "--backends", "nope", "--no-save"], ["unknown backend(s) nope"]),
    # digits trained on to a non-finite loss
    (["digits", "--lr", "nan", "--steps", "1"], ["--lr must be a learning rate", "nan"]),
    # a missing folder was described as directions that "do not fit", and the demo went on with PCA
    (["demo", "--faces", "{faces}", "--directions-dir", "{tmp}/absent", "-o", "{tmp}/d"], ["absent", "no such"]),
    # several sources where one .npy or one seeds:SPEC is taken: "seeds:0: no such file or directory"
    (["edit", "seeds:0", "seeds:1", "--direction", "pc00=1", "-o", "{tmp}/e"], ["seeds:0: give one .npy file"]),
    # found unwritable only after the training
    (["digits", "--results", "/proc/r.json", "--steps", "1"], ["/proc", "not writable"]),
    # blamed --holdout 0 "in [1, 0]", an option not given
    (["eval", "--faces", "{faces}/00000.png", "-o", "{tmp}/ev"], ["1 image(s)", "needs at least 2"]),
    # a text file as the certificate was reported as "cannot listen ... (is the port in use?)"
    (["serve", "--port", "0", "--tls-cert", "{tmp}/x.pem", "--tls-key", "{tmp}/x.pem"], ["x.pem", "is not a PEM"]),
])
def test_more_bad_input_in_one_line(capsys, tmp_path, faces128, argv, needles):
    (tmp_path / "x.pem").write_text("not a certificate\n")
    code, _, err = run_cli(capsys, *[a.replace("{tmp}", str(tmp_path)).replace("{faces}", str(faces128)) for a in argv])
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "g").exists() and not (tmp_path / "e").exists()


@pytest.mark.parametrize("argv, message", [
    (["generate", "--seeds", "1", "--psi", "9"], "--psi: 9.0 is out of range"),
    (["edit", "seeds:0", "--direction", "pc00=1", "--layers", "10"], "--layers: 10 is out of range 0..9"),
    (["mix", "--a", "seeds:0", "--b", "seeds:1", "--cutoff", "99"], "--cutoff: 99 is out of range"),
    (["interpolate", "--a", "seeds:0", "--b", "seeds:1", "--steps", "1"], "--steps must be >= 2"),
])
def test_runtime_errors_name_the_command_line_option(capsys, tmp_path, argv, message):
    """The Runtime names its Python arguments (truncation_psi, layers[0]); the CLI says the option."""
    code, _, err = run_cli(capsys, *argv, "-o", str(tmp_path / "out"))
    assert_one_line_error(code, err, message)
