"""IntroVAE and LIA models through the Runtime, the checkpoint format, the CLI and ONNX export: the same API as ALAE,
the method named in the metadata, and a clear error for what a method's latent cannot do."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, run_cli

from alae_rt import ModelConfig, Runtime, load_checkpoint, save_checkpoint
from alae_rt.errors import CheckpointError, ConfigError, InputError
from alae_rt.methods import GaussianEncoder, MethodConfig, build_model
from alae_rt.training.optim import lr_multipliers

TINY = ModelConfig.preset("tiny")
METHODS = {"alae": MethodConfig(), "introvae": MethodConfig("introvae"), "lia": MethodConfig.of("lia", TINY)}


def runtime(method: str, seed: int = 0) -> Runtime:
    rt = Runtime.from_config("tiny", seed=seed, method=METHODS[method])
    with torch.no_grad():  # a trained-looking flow: a new one is the identity
        for p in rt.model.mapping.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
    return rt


def saved(tmp_path, rt: Runtime, name: str = "model.safetensors"):
    path = tmp_path / name
    save_checkpoint(path, rt.model.state_dict(), rt.config, {"description": "test"}, method=rt.method)
    return path


def images(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_serves_the_common_operations(method):
    rt = runtime(method)
    x = images()
    w = rt.encode(x)
    assert w.shape == (3, 32) and torch.isfinite(w).all()
    assert rt.decode(w, noise="const").shape == (3, 3, 16, 16)
    torch.testing.assert_close(rt.reconstruct(x, noise="const"), rt.decode(w, noise="const"))
    assert rt.generate(seeds=[1, 2], noise="const").shape == (2, 3, 16, 16)
    assert rt.interpolate(w[:1], w[1:2], 4).shape == (4, 1, 32)
    assert rt.edit(w, [(np.ones(32, np.float32), 0.5)]).shape == (3, 32)


def test_introvae_encodes_the_posterior_mean():
    rt = runtime("introvae")
    x = images()
    assert isinstance(rt.model.encoder, GaussianEncoder)
    mean, logvar = rt.model.encoder.posterior(x)
    torch.testing.assert_close(rt.encode(x), mean)
    assert logvar.shape == (3, 32)
    assert torch.equal(rt.model.dlatent_avg, torch.zeros(6, 32))  # truncation pulls z to the prior's mean
    # G takes z itself: generating from z equals decoding z, truncation scaling it towards 0 on every input
    z = torch.randn(2, 32)
    torch.testing.assert_close(rt.generate(z=z, truncation_psi=0.5, noise="const"), rt.decode(0.5 * z, noise="const"))


def test_introvae_refuses_what_one_z_cannot_do():
    rt = runtime("introvae")
    w = rt.encode(images(2))
    with pytest.raises(InputError, match="introvae model: its generator takes one z") as exc:
        rt.mix(w, w.flip(0), cutoff=2)
    assert exc.value.field == "cutoff"
    with pytest.raises(InputError, match="edit .*not available for this introvae model"):
        rt.edit(w, [(np.ones(32, np.float32), 1.0)], layers=[0, 1])
    with pytest.raises(InputError, match="edit .*introvae"):
        rt.edit(w, [(np.ones((6, 32), np.float32), 1.0)])
    with pytest.raises(InputError, match="truncation_cutoff.*introvae"):
        rt.generate(seeds=[1], truncation_cutoff=2)
    rt.generate(seeds=[1], truncation_cutoff=6)  # every input: allowed
    with pytest.raises(InputError, match="no discriminator on latents"):
        rt.discriminate(w)


def test_lia_maps_z_to_y_and_back_exactly():
    rt = runtime("lia")
    z = torch.randn(5, 32, generator=torch.Generator().manual_seed(2))
    y = rt.map(z)
    assert not torch.allclose(y, z)
    torch.testing.assert_close(rt.unmap(y), z, rtol=1e-5, atol=1e-5)
    rt.mix(y[:2], y[2:4], cutoff=3)  # y at each style input, as ALAE's w: mixing works
    with pytest.raises(InputError, match="judges images, not latents"):
        rt.discriminate(y)
    with pytest.raises(InputError, match="ALAE's mapping F is not invertible"):
        runtime("alae").unmap(y)


@pytest.mark.parametrize("method", ["introvae", "lia"])
def test_checkpoints_name_their_method_and_load_back(tmp_path, method):
    rt = runtime(method)
    path = saved(tmp_path, rt)
    ckpt = load_checkpoint(path)
    assert ckpt.method == rt.method
    back = Runtime.load(path)
    assert back.method == rt.method and repr(back).startswith(f"Runtime({method}, tiny")
    x = images()
    torch.testing.assert_close(back.reconstruct(x, noise="const"), rt.reconstruct(x, noise="const"))
    assert Runtime.load(path, method=method).method.name == method


def test_existing_checkpoints_are_alae(tmp_path):
    path = tmp_path / "old.safetensors"
    rt = runtime("alae")
    save_checkpoint(path, rt.model.state_dict(), rt.config)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["method"] == "alae" and "method_config" not in meta
    meta.pop("method")  # as files written before the field
    from alae_rt.checkpoint import read_safetensors, write_safetensors

    write_safetensors(path, read_safetensors(path)[0], meta)
    assert load_checkpoint(path).method == MethodConfig()


@pytest.mark.parametrize("saved_as,loaded_as", [("lia", "alae"), ("introvae", "lia"), ("alae", "introvae")])
def test_a_checkpoint_loaded_as_another_method_is_a_clear_error(tmp_path, saved_as, loaded_as):
    path = saved(tmp_path, runtime(saved_as))
    with pytest.raises(CheckpointError, match=f"this is a {saved_as} checkpoint, not {loaded_as}"):
        Runtime.load(path, method=loaded_as)


def test_a_config_override_that_does_not_fit_names_the_method(tmp_path):
    path = saved(tmp_path, runtime("lia"))
    with pytest.raises(CheckpointError, match=r"\(lia\): missing tensor"):
        Runtime.load(path, config="small-64")


def test_method_configs_are_checked():
    with pytest.raises(ConfigError, match="unknown method 'vae'"):
        MethodConfig("vae")
    with pytest.raises(ConfigError, match=r"flow depth must lie in \[1, 64\], got 0"):
        MethodConfig.of("lia", TINY, flow_depth=0)
    with pytest.raises(ConfigError, match="LIA's"):
        MethodConfig.of("introvae", TINY, flow_depth=2)
    with pytest.raises(ConfigError, match="at least 2"):
        MethodConfig.of("lia", TINY.replace(latent_size=1))


@pytest.mark.parametrize("method", list(METHODS))
def test_every_parameter_gets_an_equalised_step(method):
    model = build_model(TINY, METHODS[method])
    mult = lr_multipliers(model)
    assert set(mult) == {n for n, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        # weights are He-scaled: their multiplier is gain / sqrt(fan_in) (times an lrmul)
        if p.ndim >= 2 and name != "generator.const":
            assert mult[name] < 1.0, name


def test_alae_multipliers_are_unchanged():
    from alae_rt import StyleALAE

    assert lr_multipliers(build_model(TINY)) == lr_multipliers(StyleALAE(TINY))


def test_cli_mix_on_introvae_is_a_one_line_error(tmp_path, capsys):
    path = saved(tmp_path, runtime("introvae"))
    code, _, err = run_cli(capsys, "-q", "mix", "--checkpoint", str(path), "--a", "seeds:1", "--b", "seeds:2",
                           "--cutoff", "2", "-o", str(tmp_path / "mix"))
    assert_one_line_error(code, err, "introvae", "one z")
    code, _, err = run_cli(capsys, "-q", "generate", "--checkpoint", str(path), "--seeds", "1", "-o",
                           str(tmp_path / "gen"))
    assert code == 0, err


@pytest.mark.parametrize("method", ["introvae", "lia"])
def test_onnx_export_of_each_method_verifies(tmp_path, method):
    pytest.importorskip("onnxruntime")
    from alae_rt.export.onnx_export import export_onnx

    rt = runtime(method)
    report = export_onnx(rt.model, tmp_path / "onnx", source=method)
    assert all(check["passed"] for check in report.verification.values())
    assert report.manifest["method"]["name"] == method
    back = Runtime.from_checkpoint(load_checkpoint(saved(tmp_path, rt)), backend="onnxruntime",
                                   backend_options={"onnx_dir": str(tmp_path / "onnx")})
    x = images(2)
    torch.testing.assert_close(back.encode(x), rt.encode(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["introvae", "lia"])
def test_other_backends_match_eager_for_each_method(method):
    # The official-order backend sums the encoder's style terms itself (IntroVAE: 2D wide, the Runtime keeps the
    # mean) and runs the generator from the same styles.
    eager = runtime(method)
    other = Runtime(eager.model, backend="official")
    x = images(2)
    torch.testing.assert_close(other.encode(x), eager.encode(x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(other.reconstruct(x, noise="const"), eager.reconstruct(x, noise="const"),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", list(METHODS))
def test_info_counts_the_methods_own_networks(tmp_path, capsys, method):
    """`alae-rt info` on a checkpoint counts the networks its method has: parameters equal the model's own, FLOPs
    only for the passes it has (IntroVAE: no mapping, no head; LIA: the flow and the image critic)."""
    import json

    rt = runtime(method)
    code, out, err = run_cli(capsys, "info", "-c", str(saved(tmp_path, rt)), "--json")
    assert code == 0, err
    info = json.loads(out)
    params = info["parameters"]
    assert params["total"] == sum(p.numel() for p in rt.model.parameters())
    assert info["method"]["name"] == method
    expected = {"alae": ({"mapping", "generator", "encoder", "head"}, {"encode", "decode", "map", "discriminate"}),
                "introvae": ({"generator", "encoder"}, {"encode", "decode"}),
                "lia": ({"mapping", "generator", "encoder", "critic", "head"},
                        {"encode", "decode", "map", "discriminate"})}[method]
    assert set(params) - {"total"} == expected[0] and set(info["gflops_per_image"]) == expected[1]
    flops = info["gflops_per_image"]
    if method == "lia":  # an image through the critic, not a w through the head alone
        assert flops["discriminate"] > flops["encode"] * 0.9
