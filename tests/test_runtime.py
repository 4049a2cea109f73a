"""The Runtime API on real faces: inputs, noise modes, generation, mixing, editing, interpolation, chunking."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import DIRECTIONS, FACES1024, require

from alae_rt import CheckpointError, InputError, ModelConfig, Runtime
from alae_rt.images import read_image

TOL = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture(scope="module")
def faces(faces128):
    """Six real faces as uint8 HWC arrays."""
    return [read_image(p) for p in sorted(faces128.glob("*.png"))[:6]]


def test_encode_accepts_arrays_lists_paths_and_float_tensors(rt128, faces, faces128):
    paths = sorted(faces128.glob("*.png"))[:6]
    w_list = rt128.encode(faces)
    assert w_list.shape == (6, rt128.config.latent_size)
    torch.testing.assert_close(rt128.encode(np.stack(faces)), w_list, **TOL)  # [N, H, W, C] uint8
    torch.testing.assert_close(rt128.encode(torch.from_numpy(faces[0])), w_list[:1], **TOL)  # one [H, W, C]
    torch.testing.assert_close(rt128.encode([str(p) for p in paths]), w_list, **TOL)
    torch.testing.assert_close(rt128.encode(rt128.prepare_images(faces)), w_list, **TOL)


def test_encode_brings_any_image_to_the_model_resolution(rt128, faces):
    face = faces[0]
    big = np.repeat(np.repeat(face, 4, axis=0), 4, axis=1)  # 512x512: pooled back to the same 128x128
    torch.testing.assert_close(rt128.encode([big]), rt128.encode([face]), atol=1e-4, rtol=1e-4)
    wide = np.concatenate([np.zeros((128, 20, 3), np.uint8), face, np.zeros((128, 20, 3), np.uint8)], axis=1)
    torch.testing.assert_close(rt128.encode([wide]), rt128.encode([face]), **TOL)  # centre crop
    opaque = np.concatenate([face, np.full((128, 128, 1), 255, np.uint8)], axis=2)
    torch.testing.assert_close(rt128.encode([opaque]), rt128.encode([face]), **TOL)  # opaque pixels as they are
    clear = np.concatenate([face, np.zeros((128, 128, 1), np.uint8)], axis=2)
    white = np.full_like(face, 255)
    torch.testing.assert_close(rt128.encode([clear]), rt128.encode([white]), **TOL)  # transparent: on white
    grey = face.mean(axis=2, keepdims=True).astype(np.uint8)
    assert rt128.encode([grey]).shape == (1, rt128.config.latent_size)  # grey repeated to RGB
    odd = rt128.prepare_images([np.zeros((77, 91, 3), np.uint8)])
    assert odd.shape == (1, 3, 128, 128)


def test_faces1024_pool_down_to_the_model_resolution(rt128):
    """A 1024x1024 photo reaches 128x128 by three 2x2 average pools of the [-1, 1] image."""
    big = read_image(require(FACES1024 / "00000.png"))
    x = torch.from_numpy(big).permute(2, 0, 1)[None].float() / 127.5 - 1
    for _ in range(3):
        x = torch.nn.functional.avg_pool2d(x, 2)
    torch.testing.assert_close(rt128.prepare_images([big]), x, **TOL)


def test_bad_image_inputs_name_the_argument(rt128):
    with pytest.raises(InputError, match=r"x: expected float images \[N, 3, 128, 128\].*got \[2, 3, 64, 64\]"):
        rt128.encode(torch.zeros(2, 3, 64, 64))
    with pytest.raises(InputError, match="empty batch"):
        rt128.encode([])
    with pytest.raises(InputError, match="expected float images in"):
        rt128.encode(torch.zeros(1, 3, 128, 128, dtype=torch.int32))
    with pytest.raises(InputError, match="no such"):
        rt128.encode(["/nonexistent/face.png"])


def test_latent_shapes_are_checked(rt128):
    d, s = rt128.config.latent_size, rt128.config.num_styles
    fits = "does not fit this model, which takes"
    with pytest.raises(InputError, match=rf"w: \[2, 7\] {fits} \[N, {d}\] or \[N, {s}, {d}\]"):
        rt128.decode(torch.zeros(2, 7))
    with pytest.raises(InputError, match=rf"z: \[2, {s}, {d}\] {fits} \[N, {d}\] with"):
        rt128.map(torch.zeros(2, s, d))
    assert rt128.discriminate(torch.zeros(3, d)).shape == (3,)


def test_noise_modes(rt128):
    w = rt128.map(rt128.seeds_to_z([0, 1]))
    const_a, const_b = rt128.decode(w, noise="const"), rt128.decode(w, noise="const")
    torch.testing.assert_close(const_a, const_b, atol=0, rtol=0)
    none = rt128.decode(w, noise="none")
    assert not torch.allclose(none, const_a)
    torch.testing.assert_close(rt128.decode(w, noise="random", seed=5), rt128.decode(w, noise="random", seed=5))
    assert not torch.allclose(rt128.decode(w, noise="random", seed=5), rt128.decode(w, noise="random", seed=6))
    assert not torch.allclose(rt128.decode(w, noise="random"), rt128.decode(w, noise="random"))
    maps = rt128.noise(2, "random", seed=3)
    assert [tuple(m.shape) for m in maps[:3]] == [(1, 1, 4, 4), (2, 1, 4, 4), (2, 1, 8, 8)]
    torch.testing.assert_close(rt128.decode(w, noise=maps), rt128.decode(w, noise="random", seed=3))
    with pytest.raises(InputError, match="expected 12 tensors, got 2"):
        rt128.decode(w, noise=maps[:2])
    with pytest.raises(InputError, match=r"noise\[3\]: expected \[1 or 2, 1, 8, 8\], got \[2, 1, 4, 4\]"):
        rt128.decode(w, noise=maps[:3] + [maps[1]] + maps[4:])
    with pytest.raises(InputError, match="unknown mode"):
        rt128.decode(w, noise="loud")


def test_decode_broadcasts_w_to_all_style_inputs(rt128):
    w = rt128.map(rt128.seeds_to_z([4]))
    styles = w[:, None].expand(-1, rt128.config.num_styles, -1)
    torch.testing.assert_close(rt128.decode(w, noise="const"), rt128.decode(styles, noise="const"), atol=0, rtol=0)


def test_decode_uint8_is_to_uint8_of_decode_on_the_device(rt128):
    w = torch.randn(3, rt128.config.latent_size, generator=torch.Generator().manual_seed(4))
    images = rt128.decode_uint8(w, noise="const")
    r, c = rt128.config.resolution, rt128.config.channels
    assert images.dtype == torch.uint8 and tuple(images.shape) == (3, r, r, c) and images.device == rt128.device
    np.testing.assert_array_equal(images.cpu().numpy(), rt128.to_uint8(rt128.decode(w, noise="const")))


def test_image_files_are_read_a_chunk_at_a_time(rgb128_checkpoint, faces128, monkeypatch):
    """A long list of photos never sits in memory as one float tensor: encode and reconstruct read max_batch files
    at a time, with the same results as one prepared batch."""
    rt = Runtime.load(rgb128_checkpoint, max_batch=2)
    paths = sorted(faces128.glob("*.png"))[:5]
    whole = rt.prepare_images(paths)
    read = []
    prepare = rt.prepare_images
    monkeypatch.setattr(rt, "prepare_images", lambda x: read.append(len(x)) or prepare(x))
    torch.testing.assert_close(rt.encode(paths), rt.encode(whole), rtol=0, atol=0)
    assert read[:3] == [2, 2, 1]
    read.clear()
    torch.testing.assert_close(rt.reconstruct(paths, noise="const"), rt.reconstruct(whole, noise="const"),
                               rtol=0, atol=0)
    assert read[:3] == [2, 2, 1]


def test_generate_by_seed_is_independent_of_the_batch(rt128):
    alone = rt128.generate(seeds=[3])
    batch = rt128.generate(seeds=[1, 3, 8])
    torch.testing.assert_close(batch[1:2], alone, **TOL)
    z = rt128.seeds_to_z([1, 3, 8])
    torch.testing.assert_close(rt128.generate(z=z, noise="const"), rt128.generate(seeds=[1, 3, 8], noise="const"))
    with pytest.raises(InputError, match="exactly one of z and seeds"):
        rt128.generate()


def test_truncation_pulls_towards_dlatent_avg(rt128):
    w = rt128.map(rt128.seeds_to_z([0, 1]))
    s = rt128.config.num_styles
    full = rt128.truncate(w, truncation_psi=0.0, truncation_cutoff=s)
    torch.testing.assert_close(full, rt128.model.dlatent_avg.expand(2, -1, -1), **TOL)
    half = rt128.truncate(w, truncation_psi=0.5, truncation_cutoff=4)
    avg = rt128.model.dlatent_avg
    torch.testing.assert_close(half[:, :4], avg[:4] + 0.5 * (w[:, None] - avg[:4]), **TOL)
    torch.testing.assert_close(half[:, 4:], w[:, None].expand(-1, s - 4, -1), **TOL)
    same = rt128.generate(seeds=[0, 1], truncation_psi=0.0, truncation_cutoff=s, noise="const")
    torch.testing.assert_close(same[0], same[1], **TOL)


def test_mix_takes_coarse_styles_from_a_and_the_rest_from_b(rt128):
    a, b = rt128.map(rt128.seeds_to_z([0, 1])), rt128.map(rt128.seeds_to_z([2, 3]))
    styles = rt128.mix_styles(a, b, 5)
    torch.testing.assert_close(styles[:, :5], a[:, None].expand(-1, 5, -1), atol=0, rtol=0)
    torch.testing.assert_close(styles[:, 5:], b[:, None].expand(-1, 7, -1), atol=0, rtol=0)
    torch.testing.assert_close(rt128.mix(a, b, 0, noise="const"), rt128.decode(b, noise="const"), **TOL)
    torch.testing.assert_close(rt128.mix(a, b, 12, noise="const"), rt128.decode(a, noise="const"), **TOL)
    assert rt128.mix(a[:1], b, 6, noise="const").shape[0] == 2  # a batch of one broadcasts
    with pytest.raises(InputError, match=r"^cutoff: 13 is out of range 0..12$") as err:
        rt128.mix(a, b, 13)
    assert err.value.field == "cutoff"


def test_edit_add_and_set_relative_to_dlatent_avg(rt128, tmp_path):
    w = rt128.encode(rt128.prepare_images([np.full((128, 128, 3), 90, np.uint8)] * 2))
    d = torch.randn(rt128.config.latent_size, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(rt128.edit(w, {}), w)
    np.save(tmp_path / "d.npy", d.numpy())
    added = rt128.edit(w, {str(tmp_path / "d.npy"): 2.5})
    torch.testing.assert_close(added, w + 2.5 * d, **TOL)
    torch.testing.assert_close(rt128.edit(w, [(d.numpy(), 1.0), (d, -0.5)]), w + 0.5 * d, **TOL)
    rt = Runtime(rt128.model, source="test")
    rt.load_directions({"dir": d})
    set_to = rt.edit(w, {"dir": 1.5}, mode="set")
    coord = ((set_to - rt.model.dlatent_avg[0]) * d).sum(-1) / (d * d).sum()
    torch.testing.assert_close(coord, torch.full((2,), 1.5), atol=1e-4, rtol=1e-4)
    layered = rt.edit(w, {"dir": 1.0}, layers=range(0, 4))
    assert layered.shape == (2, rt.config.num_styles, rt.config.latent_size)
    torch.testing.assert_close(layered[:, :4], (w + d)[:, None].expand(-1, 4, -1), **TOL)
    torch.testing.assert_close(layered[:, 4:], w[:, None].expand(-1, 8, -1), **TOL)
    with pytest.raises(InputError, match=r"direction 'nope': neither a loaded direction \(dir\) nor a .npy file"):
        rt.edit(w, {"nope": 1.0})
    with pytest.raises(InputError, match=r"expected float \[64\] or \[12, 64\], got torch.float32 \[3\]"):
        rt.edit(w, {torch.zeros(3): 1.0})
    with pytest.raises(InputError, match="strength must be finite"):
        rt.edit(w, {"dir": float("nan")})


def test_official_principal_directions_load_by_attribute_name():
    cfg = ModelConfig(3, 8, 32, 512, 2, name="d512")
    rt = Runtime.from_config(cfg)
    names = rt.load_directions(require(DIRECTIONS))
    assert {"smile", "young", "glasses", "direction_1"} <= set(names)
    torch.testing.assert_close(rt.directions["smile"], rt.directions["direction_1"])
    w = rt.map(rt.seeds_to_z([0]))
    edited = rt.edit(w, {"smile": 3.0})
    smile = torch.from_numpy(np.load(DIRECTIONS / "direction_1.npy")).float()
    torch.testing.assert_close(edited, w + 3.0 * smile, **TOL)


def test_interpolate_includes_both_ends(rt128):
    a, b = rt128.map(rt128.seeds_to_z([0, 1])), rt128.map(rt128.seeds_to_z([2, 3]))
    path = rt128.interpolate(a, b, 5)
    assert path.shape == (5, 2, rt128.config.latent_size)
    torch.testing.assert_close(path[0], a, atol=0, rtol=0)
    torch.testing.assert_close(path[-1], b, **TOL)
    torch.testing.assert_close(path[2], (a + b) / 2, **TOL)
    styles = rt128.interpolate(a, rt128.styles(b), 3)  # [N, D] against [N, 2L, D]
    assert styles.shape == (3, 2, rt128.config.num_styles, rt128.config.latent_size)
    with pytest.raises(InputError, match="steps must be >= 2"):
        rt128.interpolate(a, b, 1)


def test_chunking_gives_the_same_results(rgb128_checkpoint, faces):
    small, large = Runtime.load(rgb128_checkpoint, max_batch=2), Runtime.load(rgb128_checkpoint, max_batch=64)
    torch.testing.assert_close(small.encode(faces), large.encode(faces), **TOL)
    w = large.encode(faces)
    torch.testing.assert_close(small.decode(w, noise="random", seed=1), large.decode(w, noise="random", seed=1), **TOL)


def test_reconstruct_real_faces(rt128, faces):
    images = rt128.reconstruct(faces, noise="const")
    assert images.shape == (6, 3, 128, 128) and torch.isfinite(images).all()
    out = rt128.to_uint8(images)
    assert out.shape == (6, 128, 128, 3) and out.dtype == np.uint8
    assert rt128.to_uint8(torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1))[0, 0, 0].tolist() == [0, 128, 255]


def test_from_config_is_seeded_and_has_a_mapped_average():
    a, b = Runtime.from_config("tiny", seed=1), Runtime.from_config("tiny", seed=1)
    torch.testing.assert_close(a.generate(seeds=[0]), b.generate(seeds=[0]), atol=0, rtol=0)
    assert "random weights" in a.source
    assert a.model.dlatent_avg.abs().sum() > 0


def test_load_errors_are_clear(rgb128_checkpoint, monkeypatch):
    # An install without the bundled default model.
    monkeypatch.setattr("alae_rt.runtime.default_checkpoint", lambda: None)
    with pytest.raises(CheckpointError, match="no bundled default model"):
        Runtime.load()
    with pytest.raises(InputError, match="backend 'tensorrt' needs --backend-option engine_dir"):
        Runtime.load(rgb128_checkpoint, backend="tensorrt")
    with pytest.raises(InputError, match="unknown backend 'fastest'"):
        Runtime.load(rgb128_checkpoint, backend="fastest")
    with pytest.raises(InputError, match="unknown dtype"):
        Runtime.load(rgb128_checkpoint, dtype="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no usable CUDA GPU"):
            Runtime.load(rgb128_checkpoint, device="cuda")


def test_input_errors_carry_the_field(rt128):
    d, s = rt128.config.latent_size, rt128.config.num_styles
    cases = [
        (lambda: rt128.decode(np.zeros((2, 7), np.float32)), "w", r"^w: \[2, 7\] does not fit"),
        (lambda: rt128.decode(np.full((1, d), np.nan, np.float32)), "w", "^w: holds NaN or Inf$"),
        (lambda: rt128.decode(np.zeros((2, d), np.int64)), "w", "^w: expected a float array, got int64$"),
        (lambda: rt128.mix_styles(torch.zeros(2, d), torch.zeros(3, d), 4), "w_b",
         r"^w_b: batch size 3 differs from w_a's 2 \(and neither is 1\)$"),
        (lambda: rt128.interpolate(torch.zeros(2, d), torch.zeros(3, s, d), 3), "w_b", "^w_b: batch size 3"),
        (lambda: rt128.edit(torch.zeros(1, d), {torch.ones(d): 1.0}, layers=[0, s]), "layers",
         rf"^layers\[1\]: {s} is out of range 0..{s - 1}$"),
        (lambda: rt128.edit(torch.zeros(1, d), [(torch.ones(d), 1.0), (torch.zeros(s, d), 1.0)], mode="set"),
         "edits[1]", r"^edits\[1\]: direction '#1' is zero; edit mode 'set' needs a non-zero direction$"),
        (lambda: rt128.edit(torch.zeros(1, d), {}, mode="scale"), "mode", "^mode: edit mode must be"),
        (lambda: rt128.noise(1, "loud"), "noise", "^noise: unknown mode"),
        (lambda: rt128.interpolate(torch.zeros(1, d), torch.zeros(1, d), 1), "steps", "steps must be >= 2"),
    ]
    for call, field, message in cases:
        with pytest.raises(InputError, match=message) as err:
            call()
        assert err.value.field == field, message
    assert InputError("plain").field is None and str(InputError("a: b", field="a")) == "a: b"


def test_seeds_are_64_bit_unsigned_integers(rt128):
    top = 2**64 - 1
    assert rt128.seeds_to_z([0, top]).shape == (2, rt128.config.latent_size)
    for bad in (2**64, -1, 1.5, True):
        with pytest.raises(InputError, match=r"^seeds: .* is not a seed; seeds are integers in \[0, 2\*\*64 - 1\]$") \
                as err:
            rt128.seed_styles([3, bad])
        assert err.value.field == "seeds"
    with pytest.raises(InputError, match="^seed: ") as err:
        rt128.decode(torch.zeros(1, rt128.config.latent_size), seed=2**64)
    assert err.value.field == "seed"
    torch.testing.assert_close(rt128.seeds_to_z([np.uint64(top)]), rt128.seeds_to_z([top]), atol=0, rtol=0)


def test_truncation_psi_and_cutoff_ranges(rt128):
    s = rt128.config.num_styles
    w = rt128.map(rt128.seeds_to_z([0]))
    for psi in (2.5, -2.01, float("nan"), float("inf")):
        for call in (lambda p=psi: rt128.truncate(w, p), lambda p=psi: rt128.generate(seeds=[1], truncation_psi=p),
                     lambda p=psi: rt128.z_styles(rt128.seeds_to_z([1]), p)):
            with pytest.raises(InputError, match=r"^truncation_psi: .* is out of range \[-2.0, 2.0\]$") as err:
                call()
            assert err.value.field == "truncation_psi"
    for cutoff in (-1, s + 1):
        with pytest.raises(InputError, match=rf"^truncation_cutoff: {cutoff} is out of range 0..{s}$") as err:
            rt128.seed_styles([1], 0.5, cutoff)
        assert err.value.field == "truncation_cutoff"
    rt128.truncate(w, -2.0, s)  # both ends of both ranges are allowed
    rt128.truncate(w, 2.0, 0)


def test_seed_and_z_styles_are_generate_s_styles(rt128):
    seeds = [4, 9]
    styles = rt128.seed_styles(seeds, 0.5, 6)  # [N, 2L, D]
    assert styles.shape == (2, rt128.config.num_styles, rt128.config.latent_size)
    expected = rt128.truncate(rt128.map(rt128.seeds_to_z(seeds)), 0.5, 6)
    torch.testing.assert_close(styles, expected, atol=0, rtol=0)
    torch.testing.assert_close(rt128.z_styles(rt128.seeds_to_z(seeds), 0.5, 6), styles, atol=0, rtol=0)
    images = rt128.generate(seeds=seeds, truncation_psi=0.5, truncation_cutoff=6, noise="const")
    torch.testing.assert_close(images, rt128.decode(styles, noise="const"), **TOL)


def test_generation_noise_draws_each_seed_s_own_stream(rt128):
    seeds = [7, 2, 7]
    maps = rt128.generation_noise(3, "random", seeds=seeds)
    alone = rt128.generation_noise(1, "random", seeds=[7])
    for m, a in zip(maps, alone):
        assert m.shape[0] == 3
        torch.testing.assert_close(m[0:1], a, atol=0, rtol=0)
        torch.testing.assert_close(m[2:3], a, atol=0, rtol=0)
    assert not torch.equal(maps[-1][0], maps[-1][1])
    # a noise seed, or another mode, overrides the per-seed rule: one stream for the batch
    seeded = rt128.generation_noise(3, "random", seed=5, seeds=seeds)
    for m, ref in zip(seeded, rt128.noise(3, "random", seed=5)):
        torch.testing.assert_close(m, ref, atol=0, rtol=0)
    const = rt128.generation_noise(3, "const", seeds=seeds)
    assert all(m.shape[0] == 1 for m in const)
    assert rt128.generation_noise(3, "none", seeds=seeds) == [None] * rt128.config.num_styles
    # generate follows it: an image from seed 7 is the same at both places in the batch
    images = rt128.generate(seeds=seeds)
    torch.testing.assert_close(images[0], images[2], atol=0, rtol=0)


def test_progress_counts_the_rows_of_each_chunk(rgb128_checkpoint, faces):
    rt = Runtime.load(rgb128_checkpoint, max_batch=4)
    for name, call in [("encode", lambda p: rt.encode(faces, progress=p)),
                       ("decode", lambda p: rt.decode(torch.zeros(6, rt.config.latent_size), progress=p)),
                       ("generate", lambda p: rt.generate(seeds=range(6), progress=p)),
                       ("reconstruct", lambda p: rt.reconstruct(faces, progress=p))]:
        done: list[int] = []
        out = call(done.append)
        assert done == [4, 2] and len(out) == 6, name


def test_reconstruct_in_chunks_is_decode_of_encode(rgb128_checkpoint, faces):
    rt = Runtime.load(rgb128_checkpoint, max_batch=4)
    torch.testing.assert_close(rt.reconstruct(faces, noise="random", seed=3),
                               rt.decode(rt.encode(faces), noise="random", seed=3), **TOL)


def test_interpolate_broadcasts_a_batch_of_one(rt128):
    d, s = rt128.config.latent_size, rt128.config.num_styles
    a, b = rt128.map(rt128.seeds_to_z([0])), rt128.map(rt128.seeds_to_z([1, 2, 3]))
    path = rt128.interpolate(a, b, 4)  # [steps, n, 2L, D]: both ends as styles
    assert path.shape == (4, 3, s, d)
    torch.testing.assert_close(path[0], rt128.styles(a).expand(3, -1, -1), atol=0, rtol=0)
    torch.testing.assert_close(path[-1], rt128.styles(b), **TOL)


def test_read_only_arrays_are_taken_without_a_warning(rt128, faces128):
    """np.asarray(PIL image) is read-only: torch warned of undefined behaviour when it shared that memory."""
    import warnings

    from PIL import Image

    face = np.asarray(Image.open(sorted(faces128.glob("*.png"))[0]).convert("RGB"))[None]  # [1, H, W, 3]
    w = rt128.encode(face).numpy()
    w.setflags(write=False)
    assert not face.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec = rt128.reconstruct(face, noise="const")
        decoded = rt128.decode(w, noise="const")
    assert rec.shape == decoded.shape == (1, 3, 128, 128)
    assert not face.flags.writeable  # the caller's array is left as it was


def test_directions_for_another_latent_size_say_whose_they_are(rt128, tmp_path):
    np.save(tmp_path / "direction_1.npy", np.ones(512, np.float32))
    with pytest.raises(InputError, match=r"^direction 'smile' \(direction_1.npy\): these directions are for a model "
                                         r"with D=512 \(the official FFHQ\); this model has D=64$"):
        rt128.load_directions({"smile": tmp_path / "direction_1.npy"})
    with pytest.raises(InputError, match=r"direction '#0': these directions are for a model with D=256; this model"):
        rt128.edit(np.zeros((1, 64), np.float32), [(np.ones(256, np.float32), 1.0)])
