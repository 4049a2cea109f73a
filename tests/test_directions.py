"""Edit directions (alae_rt.directions, `alae-rt directions pca | fit`): the math on known data, the digits and
face-brightness checks of a fitted direction, the folder the Runtime reads, the bundled model's set, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import FACES128, ROOT, assert_one_line_error, require, run_cli
from PIL import Image

from alae_rt import InputError, Runtime
from alae_rt.directions import fit_direction, orthogonalize, principal_directions, read_info, save_directions

# ---- the math on data whose answer is known -----------------------------------------------------------------


def test_principal_directions_find_the_axes_of_known_variance():
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((6, 6)))  # a random rotation
    w = (rng.standard_normal((4000, 6)) * [5.0, 3.0, 2.0, 1.0, 0.5, 0.1]) @ basis.T + 7.0  # [N, 6]
    pcs = principal_directions(w, 4)
    assert [d.name for d in pcs] == ["pc00", "pc01", "pc02", "pc03"]
    variance = [d.stats["variance"] for d in pcs]
    assert all(a > b for a, b in zip(variance, variance[1:])) and sum(variance) <= 1.0
    expected = np.array([25.0, 9.0, 4.0, 1.0]) / (25 + 9 + 4 + 1 + 0.25 + 0.01)
    np.testing.assert_allclose(variance, expected, rtol=0.08)
    for k, d in enumerate(pcs):
        assert np.linalg.norm(d.vector) == pytest.approx(1.0, abs=1e-6)
        assert abs(d.vector @ basis[:, k]) > 0.99  # the axis itself, up to sign
        assert d.vector[np.argmax(np.abs(d.vector))] > 0  # the sign rule: reruns give the same file
        assert d.range == pytest.approx((-3 * d.std, 3 * d.std))
    assert pcs[0].std == pytest.approx(5.0, rel=0.05)
    assert principal_directions(w, 6)[-1].stats["variance"] > 0  # K = D is allowed
    with pytest.raises(InputError, match="D = 6"):
        principal_directions(w, 7)
    with pytest.raises(InputError, match="3 sample"):
        principal_directions(w[:3], 3)
    with pytest.raises(InputError, match="no variance"):
        principal_directions(np.ones((5, 6)), 2)


def test_fit_direction_finds_the_separating_axis_and_says_when_it_cannot():
    rng = np.random.default_rng(1)
    axis = np.zeros(8)
    axis[2] = 1.0
    neg = rng.standard_normal((60, 8))
    pos = rng.standard_normal((60, 8)) + 3.0 * axis
    d = fit_direction(pos, neg, "up", classes=("pos", "neg"))
    assert d.vector @ axis > 0.9  # towards the positive class
    s = d.stats
    assert s["accuracy"] > 0.9 and s["better_than_chance"] and s["chance"] == 0.5 and len(s["fold_accuracy"]) == 5
    assert s["separation"] == pytest.approx(float((pos.mean(0) - neg.mean(0)) @ d.vector), rel=1e-4)
    assert s["examples"] == {"positive": 60, "negative": 60}
    logistic = fit_direction(pos, neg, "up", classifier="logistic")
    assert logistic.vector @ d.vector > 0.95
    # Two samples of the same distribution: nothing to find, and the stats say so.
    same = fit_direction(rng.standard_normal((60, 8)), rng.standard_normal((60, 8)), "noise")
    assert not same.stats["better_than_chance"]
    # Projecting out a direction leaves the edit orthogonal to it.
    other = rng.standard_normal(8)
    ortho = fit_direction(pos, neg, "up", orthogonal_to={"other": other})
    assert abs(ortho.vector @ other) < 1e-5 and ortho.stats["orthogonal_to"] == ["other"]
    assert ortho.vector @ axis > 0.8
    with pytest.raises(InputError, match="span"):
        orthogonalize(axis, {"same": 2 * axis})
    with pytest.raises(InputError, match="neg: 4 example"):
        fit_direction(pos, neg[:4], "up", classes=("pos", "neg"))


def test_the_folder_round_trip_and_what_the_runtime_reads(tmp_path):
    rt = Runtime.from_config("tiny")
    d = rt.config.latent_size
    rng = np.random.default_rng(2)
    pcs = principal_directions(rng.standard_normal((50, d)), 2)
    save_directions(tmp_path, pcs, {"samples": 50})
    fitted = fit_direction(rng.standard_normal((10, d)) + 1, rng.standard_normal((10, d)), "smile", "smiling")
    save_directions(tmp_path, [fitted], {"positive": ["a/"], "negative": ["b/"]})  # added beside the others
    record = read_info(tmp_path)
    assert record["count"] == 3 and record["method"] == "mixed"
    assert record["directions"]["pc00"]["data"] == {"samples": 50}  # entries keep the data they were made from
    assert sorted(rt.load_directions(tmp_path)) == ["pc00", "pc01", "smile"]
    assert rt.direction_info["smile"] == {"label": "smiling", "range": [pytest.approx(v, rel=1e-5)
                                                                        for v in fitted.range]}
    assert rt.direction_info["pc01"]["label"] == "principal component 1"
    np.testing.assert_allclose(rt.directions["smile"].numpy(), fitted.vector)
    rt.load_directions({"smile": fitted.vector})  # registered again without a folder: no stale label
    assert "smile" not in rt.direction_info
    (tmp_path / "pc01.npy").unlink()
    with pytest.raises(InputError, match="names 'pc01', but pc01.npy is not there"):
        rt.load_directions(tmp_path)
    (tmp_path / "directions.json").write_text("{not json")
    with pytest.raises(InputError, match="directions.json: not readable JSON"):
        rt.load_directions(tmp_path)


# ---- the checks ---------------------------------------------------------------------------------------


def test_digits_direction_moves_held_out_digits_towards_the_other_class(monkeypatch):
    """MLP ALAE on scikit-learn digits (benchmarks/directions_digits.py, which records the full run): a direction
    fitted from class a against class b, applied to held-out digits of class a, raises a pixel classifier's
    probability of b for most of them at the stated strength (1 separation); the opposite direction does not."""
    pytest.importorskip("sklearn")
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import directions_digits as dd

    from alae_rt.training.mlp import MLPConfig

    r = dd.digits_directions(MLPConfig(latent_size=16, hidden=64, batch=64, steps=1500), [(4, 9), (7, 1)])
    at = list(dd.MULTIPLES).index(dd.STATED)
    for pair in r["pairs"]:
        s = pair["strengths"][at]
        assert pair["accuracy"] > 0.8 and pair["separation"] > 0, pair  # it points from a to b
        assert s["moved_towards_b"] > 0.5, pair
        assert s["control_moved_towards_b"] < 0.5, pair
    variance = r["pca_variance"]
    assert all(a >= b for a, b in zip(variance, variance[1:])) and 0 < sum(variance) <= 1.0
    sys.modules.pop("directions_digits", None)


def test_brightness_direction_from_faces_and_darkened_faces(capsys, tmp_path):
    """Bundled model: fit from the training faces (positive) against the same faces darkened (negative); moving
    the held-out faces along it raises the mean brightness of their decodes at every step of strength."""
    faces = sorted(require(FACES128).glob("*.png"))
    train, held_out = faces[:99], faces[99:]  # the model card's split
    dark = tmp_path / "dark"
    dark.mkdir()
    for p in train:
        Image.fromarray((np.asarray(Image.open(p).convert("RGB")) * 0.5).astype(np.uint8)).save(dark / p.name)
    out = tmp_path / "dirs"
    code, stdout, err = run_cli(capsys, "-q", "directions", "fit", "--positive", *map(str, train), "--negative",
                                str(dark), "--name", "bright", "--label", "brighter", "--preview", "2", "-o", str(out))
    assert code == 0, err
    assert "bright: held-out accuracy" in stdout
    record = read_info(out)["directions"]["bright"]
    assert record["accuracy"] >= 0.9 and record["better_than_chance"] and record["folds"] == 5
    grid = np.asarray(Image.open(out / "preview_bright.png"))
    assert grid.shape[0] > 2 * 64 and grid.shape[1] > 7 * 64  # 2 faces x 7 strengths, under their labels

    rt = Runtime.load()
    assert rt.load_directions(out) == ["bright"] and rt.direction_info["bright"]["label"] == "brighter"
    w = rt.encode(held_out)
    top = record["range"][1]
    brightness = [float(rt.decode_uint8(rt.edit(w, {"bright": s}), noise="const").float().mean())
                  for s in np.linspace(0, top, 4)]
    assert all(a < b for a, b in zip(brightness, brightness[1:])), brightness
    assert brightness[-1] - brightness[0] > 2.0, brightness  # grey levels: a visible change, not rounding


def test_pca_command_on_faces_and_on_sampled_z(capsys, tmp_path):
    faces = require(FACES128)
    code, stdout, err = run_cli(capsys, "-q", "directions", "pca", str(faces), "-k", "4", "--preview", "1",
                                "-o", str(tmp_path / "faces"))
    assert code == 0, err
    record = read_info(tmp_path / "faces")
    variance = [record["directions"][f"pc{k:02d}"]["variance"] for k in range(4)]
    assert all(a > b for a, b in zip(variance, variance[1:])) and sum(variance) <= 1.0
    assert record["method"] == "pca" and record["data"]["count"] == 110 and record["count"] == 4
    assert (tmp_path / "faces" / "preview_pca.png").is_file()
    code, _, err = run_cli(capsys, "-q", "directions", "pca", "--samples", "40", "--seed", "3", "-k", "2",
                           "--prefix", "z", "--preview", "1", "-o", str(tmp_path / "z"))
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "z").glob("*.npy")) == ["z00.npy", "z01.npy"]
    assert read_info(tmp_path / "z")["data"]["samples"] == 40


def test_bundled_model_comes_with_its_principal_components(capsys, tmp_path):
    rt = Runtime.load()
    names = [f"pc{k:02d}" for k in range(8)]
    assert sorted(rt.directions) == names
    variance = [read_info(ROOT / "alae_rt" / "models" / "directions")["directions"][n]["variance"] for n in names]
    assert all(a > b for a, b in zip(variance, variance[1:])) and sum(variance) <= 1.0
    for n in names:
        assert float(rt.directions[n].norm()) == pytest.approx(1.0, abs=1e-5)
        assert rt.direction_info[n]["label"] == f"principal component {int(n[2:])}"
    assert Runtime.from_config("tiny").directions == {}  # other models: none unless loaded
    code, _, err = run_cli(capsys, "-q", "edit", "seeds:0-1", "--direction", "pc00=2", "-o", str(tmp_path / "edit"))
    assert code == 0, err
    edited = np.load(tmp_path / "edit" / "edited.npy")
    styles = rt.seed_styles([0, 1]).numpy()
    step = np.broadcast_to(2 * rt.directions["pc00"].numpy(), styles.shape)  # every style input moved by 2 * pc00
    np.testing.assert_allclose(edited - styles, step, atol=1e-5)


def test_fit_from_a_labels_csv_and_the_chance_warning(capsys, tmp_path):
    faces = sorted(require(FACES128).glob("*.png"))[:8]
    rows = ["file,label"]
    for p in faces:  # each face as it is (light) and darkened (dark), named relative to the CSV's folder
        img = np.asarray(Image.open(p).convert("RGB"))
        Image.fromarray(img).save(tmp_path / f"light_{p.name}")
        Image.fromarray((img * 0.4).astype(np.uint8)).save(tmp_path / f"dark_{p.name}")
        rows += [f"light_{p.name},light", f"dark_{p.name},dark"]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    code, stdout, err = run_cli(capsys, "directions", "fit", "--labels", str(tmp_path / "labels.csv"), "--name", "lit",
                                "--folds", "4", "--preview", "1", "-o", str(tmp_path / "out"))
    assert code == 0, err
    entry = read_info(tmp_path / "out")["directions"]["lit"]
    assert entry["classes"] == {"positive": "light", "negative": "dark"}  # the second label in sorted order
    assert entry["examples"] == {"positive": 8, "negative": 8} and entry["separation"] > 0
    assert "does not separate" not in err
    # Labels that say nothing about w: written, and said so.
    rng = np.random.default_rng(4)
    np.save(tmp_path / "w.npy", rng.standard_normal((40, 64)).astype(np.float32))
    (tmp_path / "random.csv").write_text("label\n" + "\n".join(rng.permutation(["x", "y"] * 20)) + "\n")
    code, stdout, err = run_cli(capsys, "directions", "fit", "--labels", str(tmp_path / "random.csv"),
                                "--latents", str(tmp_path / "w.npy"), "--name", "noise", "--preview", "1",
                                "-o", str(tmp_path / "out"))
    assert code == 0, err
    assert "warning: noise does not separate its classes better than chance" in err
    assert read_info(tmp_path / "out")["directions"]["noise"]["better_than_chance"] is False
    assert read_info(tmp_path / "out")["count"] == 2  # lit is kept beside it


# ---- bad input: one line, exit 2 ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "empty").mkdir()
    (root / "corrupt").mkdir()
    (root / "corrupt" / "face.png").write_bytes(b"not an image")
    np.save(root / "w32.npy", np.zeros((10, 32), np.float32))
    np.save(root / "w64.npy", np.random.default_rng(0).standard_normal((10, 64)).astype(np.float32))
    np.save(root / "styles.npy", np.zeros((10, 10, 64), np.float32))
    (root / "one.csv").write_text("label\na\na\na\n")
    return root


@pytest.mark.parametrize("argv, needles", [
    (["pca", "{r}/empty"], ["empty", "no image files"]),
    (["fit", "--positive", "{r}/corrupt", "--negative", "{r}/w64.npy", "--name", "x"], ["face.png", "not a readable"]),
    (["fit", "--labels", "{r}/one.csv", "--latents", "{r}/w64.npy", "--name", "x"], ["one.csv", "one class"]),
    (["fit", "--positive", "{r}/w64.npy", "--negative", "seeds:0-2", "--name", "x"], ["seeds:0-2", "3 example"]),
    (["fit", "--positive", "{r}/w32.npy", "--negative", "{r}/w64.npy", "--name", "x"], ["w32.npy", "[10, 32]"]),
    (["fit", "--positive", "{r}/styles.npy", "--negative", "{r}/w64.npy", "--name", "x"], ["styles.npy", "w [N, D]"]),
    (["pca", "{r}/w64.npy", "-k", "65"], ["--count 65", "D = 64"]),
    (["pca", "{r}/w64.npy", "-k", "10"], ["w64.npy", "at most 9"]),
    (["fit", "--positive", "{r}/w64.npy", "--name", "x"], ["--negative"]),
    (["fit", "--positive", "{r}/w64.npy", "--negative", "{r}/w64.npy", "--name", "a/b"], ["--name", "'a/b'"]),
])
def test_bad_input_is_one_line_and_exit_2(capsys, bad_inputs, tmp_path, argv, needles):
    argv = [a.replace("{r}", str(bad_inputs)) for a in argv]
    code, _, err = run_cli(capsys, "-q", "directions", *argv, "-o", str(tmp_path / "out"))
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "out" / "directions.json").exists()


def test_directions_help_starts_without_torch(tmp_path):
    code = ("import sys\nfrom alae_rt.cli import main\n"
            "for argv in (['directions', '--help'], ['directions', 'fit', '--help'],\n"
            "             ['directions', 'pca', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "assert 'torch' not in sys.modules and 'sklearn' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "--orthogonal-to" in done.stdout and "--samples" in done.stdout


def test_orthogonal_to_a_bundled_direction(capsys, tmp_path):
    rng = np.random.default_rng(3)
    np.save(tmp_path / "pos.npy", (rng.standard_normal((12, 64)) + 1.0).astype(np.float32))
    np.save(tmp_path / "neg.npy", rng.standard_normal((12, 64)).astype(np.float32))
    code, stdout, err = run_cli(capsys, "-q", "directions", "fit", "--positive", str(tmp_path / "pos.npy"),
                                "--negative", str(tmp_path / "neg.npy"), "--name", "up", "--folds", "3",
                                "--orthogonal-to", "pc00", "pc01", "--preview", "1", "-o", str(tmp_path / "out"))
    assert code == 0, err
    up = np.load(tmp_path / "out" / "up.npy")
    rt = Runtime.load()
    for name in ("pc00", "pc01"):
        assert abs(float(up @ rt.directions[name].numpy())) < 1e-5
    assert json.loads((tmp_path / "out" / "directions.json").read_text())["directions"]["up"]["orthogonal_to"] == [
        "pc00", "pc01"]


def test_pca_into_a_folder_with_older_directions_says_which_are_older(capsys, tmp_path):
    """A folder collects directions; a second, smaller PCA set written there keeps the first run's pc02/pc03 (other
    data) and says so, instead of passing for a whole set."""
    out = tmp_path / "dirs"
    code, _, err = run_cli(capsys, "directions", "pca", "--samples", "60", "-k", "4", "-o", str(out))
    assert code == 0 and "earlier runs" not in err
    code, _, err = run_cli(capsys, "directions", "pca", "--samples", "40", "-k", "2", "-o", str(out))
    assert code == 0 and "also holds pc02, pc03 from earlier runs" in err
    info = read_info(out)
    assert set(info["directions"]) == {"pc00", "pc01", "pc02", "pc03"}
    assert "data" in info["directions"]["pc02"] and "data" not in info["directions"]["pc00"]  # other data: its own
