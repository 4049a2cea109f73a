"""Checkpoint I/O: the official key/shape mapping for every official preset, our safetensors format, and refusals."""

from __future__ import annotations

import argparse
import json
import os
import stat

import pytest
import torch
import yaml
from helpers import OFFICIAL, require

from alae_rt import CheckpointError, ModelConfig, Runtime, convert, load_checkpoint, save_checkpoint
from alae_rt.checkpoint import _umask, convert_official, infer_config, model_shapes, official_layout

# manifest name -> our preset
OFFICIAL_PRESETS = {
    "ffhq": "ffhq-1024", "celeba-hq256": "celebahq-256", "bedroom": "bedroom-256", "celeba": "celeba-128",
}


@pytest.fixture(scope="module")
def manifests() -> dict:
    return json.loads(require(OFFICIAL / "official_manifests.json").read_text())


@pytest.mark.parametrize("official_name", OFFICIAL_PRESETS)
def test_preset_layout_matches_the_official_manifest(manifests, official_name):
    cfg = ModelConfig.preset(OFFICIAL_PRESETS[official_name])
    manifest = manifests[official_name]["state_dict_shapes"]
    expected = {f"{model}.{key}": tuple(shape) for model, tensors in manifest.items() for key, shape in tensors.items()}
    layout = {key: shape for key, (_, shape) in official_layout(cfg).items()}
    assert layout.keys() == expected.keys()
    assert layout == expected


@pytest.mark.parametrize("official_name", OFFICIAL_PRESETS)
def test_converter_maps_every_manifest_tensor(manifests, official_name, tmp_path):
    """Meta tensors shaped like the real files go through the converter into a model of the preset."""
    preset = ModelConfig.preset(OFFICIAL_PRESETS[official_name])
    models = {model: {key: torch.empty(shape, device="meta") for key, shape in tensors.items()}
              for model, tensors in manifests[official_name]["state_dict_shapes"].items()}
    state, cfg = convert_official(models)  # config inferred from shapes
    assert cfg == preset
    assert {k: tuple(v.shape) for k, v in state.items()} == model_shapes(preset)
    # The official YAML keys read back to the same architecture.
    path = tmp_path / f"{official_name}.yaml"
    path.write_text(yaml.safe_dump({"MODEL": manifests[official_name]["config"]}))
    assert ModelConfig.from_official_yaml(path).replace(name=preset.name) == preset


def test_our_format_round_trips_with_config_and_provenance(rgb128_checkpoint, tmp_path):
    src = load_checkpoint(rgb128_checkpoint)
    path = save_checkpoint(tmp_path / "m.safetensors", src.state, src.config, {"dataset": "faces128", "steps": 3})
    back = load_checkpoint(path)
    assert back.config == src.config
    assert back.metadata == {"dataset": "faces128", "steps": 3}
    assert back.state.keys() == src.state.keys()
    for key in src.state:
        assert torch.equal(back.state[key], src.state[key]), key
    assert not list(tmp_path.glob(".*tmp*")), "the temporary file was left behind"


def test_our_format_without_metadata_infers_the_config(rgb128_checkpoint, tmp_path):
    from safetensors.torch import save_file

    src = load_checkpoint(rgb128_checkpoint)
    save_file({k: v.contiguous() for k, v in src.state.items()}, str(tmp_path / "bare.safetensors"))
    assert load_checkpoint(tmp_path / "bare.safetensors").config == src.config


def test_fp16_checkpoint_loads_into_an_fp32_runtime(rgb128_checkpoint, tmp_path, official):
    folder, ref = official
    dst = convert(folder / "checkpoint.pth", tmp_path / "half.safetensors", dtype=torch.float16)
    assert all(v.dtype == torch.float16 for v in load_checkpoint(tmp_path / "half.safetensors").state.values())
    rt = Runtime.load(tmp_path / "half.safetensors")
    assert rt.dtype == torch.float32
    w = rt.encode(ref["x"])
    assert (w - ref["encode_w"]).abs().max() < 0.05 * ref["encode_w"].abs().max()
    assert dst.config == rt.config


def test_infer_config_recognises_presets():
    shapes = model_shapes(ModelConfig.preset("celeba-128"))
    assert infer_config(shapes, "ours").name == "celeba-128"


# ---- refusals: each names the tensor and both shapes --------------------------------------------------------


@pytest.fixture()
def official_models(rgb128_checkpoint):
    return torch.load(rgb128_checkpoint, map_location="cpu", weights_only=True)


def _save(obj, path):
    torch.save(obj, path)
    return path


def test_official_missing_tensor_is_named(official_models, tmp_path):
    del official_models["models"]["generator_s"]["decode_block.3.conv_2.weight"]
    pattern = r"missing tensor.*'generator_s\.decode_block\.3\.conv_2\.weight' \[64, 64, 3, 3\]"
    with pytest.raises(CheckpointError, match=pattern):
        load_checkpoint(_save(official_models, tmp_path / "m.pth"))


def test_official_extra_tensor_is_named(official_models, tmp_path):
    official_models["models"]["discriminator_s"]["encode_block.0.extra"] = torch.zeros(3, 5)
    with pytest.raises(CheckpointError, match=r"unexpected tensor.*'discriminator_s\.encode_block\.0\.extra' \[3, 5\]"):
        load_checkpoint(_save(official_models, tmp_path / "m.pth"))


def test_official_misshaped_tensor_names_both_shapes(official_models, tmp_path):
    official_models["models"]["generator_s"]["decode_block.2.style_1.weight"] = torch.zeros(128, 32)
    with pytest.raises(CheckpointError, match=r"'generator_s\.decode_block\.2\.style_1\.weight' has shape \[128, 32\], "
                                              r"the model expects \[128, 64\]"):
        load_checkpoint(_save(official_models, tmp_path / "m.pth"))


def test_official_without_ema_copies_is_refused(official_models, tmp_path):
    del official_models["models"]["generator_s"]
    with pytest.raises(CheckpointError, match="no generator_s"):
        load_checkpoint(_save(official_models, tmp_path / "m.pth"))


def test_official_blur_kernel_must_be_the_fixed_one(official_models, tmp_path):
    official_models["models"]["generator_s"]["decode_block.1.blur.weight"] *= 2
    with pytest.raises(CheckpointError, match=r"decode_block\.1\.blur\.weight' is not the \[1, 2, 1\] blur kernel"):
        load_checkpoint(_save(official_models, tmp_path / "m.pth"))


@pytest.fixture()
def ours(rgb128_checkpoint):
    return load_checkpoint(rgb128_checkpoint)


def test_ours_missing_extra_and_misshaped_are_refused(ours, tmp_path):
    from safetensors.torch import save_file

    meta = {"config": ours.config.to_json()}
    cases = {
        "missing": ({k: v for k, v in ours.state.items() if k != "encoder.blocks.1.bias_2"},
                    r"missing tensor.*'encoder\.blocks\.1\.bias_2' \[64\]"),
        "extra": ({**ours.state, "encoder.spare": torch.zeros(2)}, r"unexpected tensor.*'encoder\.spare' \[2\]"),
        "misshaped": ({**ours.state, "mapping.layers.0.weight": torch.zeros(64, 32)},
                      r"'mapping\.layers\.0\.weight' has shape \[64, 32\], the model expects \[64, 64\]"),
    }
    for name, (state, pattern) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=meta)
        with pytest.raises(CheckpointError, match=pattern):
            load_checkpoint(path)


def test_save_refuses_a_state_that_does_not_fit(ours, tmp_path):
    state = dict(ours.state)
    state["generator.const"] = torch.zeros(1, 3, 4, 4)
    with pytest.raises(CheckpointError, match=r"'generator\.const' has shape \[1, 3, 4, 4\]"):
        save_checkpoint(tmp_path / "x.safetensors", state, ours.config)
    assert not (tmp_path / "x.safetensors").exists()


def test_wrong_config_for_the_weights_is_refused(rgb128_checkpoint):
    pattern = r"missing tensor.*'mapping_fl_s\.map_blocks\.4\.fc\.weight' \[256, 256\]"
    with pytest.raises(CheckpointError, match=pattern):
        load_checkpoint(rgb128_checkpoint, config="celeba-128")


def test_pickled_objects_are_refused_without_opt_in(official_models, tmp_path):
    official_models["auxiliary"] = {"args": argparse.Namespace(lr=0.1)}
    path = _save(official_models, tmp_path / "objects.pth")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(path)
    assert load_checkpoint(path, trust_pickle=True).config.layer_count == 6


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04broken zip"])
def test_unreadable_files_are_refused(tmp_path, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)


def test_truncated_files_are_refused(rgb128_checkpoint, ours, tmp_path):
    cut = tmp_path / "cut.pth"
    cut.write_bytes(rgb128_checkpoint.read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match="cut.pth"):
        load_checkpoint(cut)
    full = save_checkpoint(tmp_path / "full.safetensors", ours.state, ours.config)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(full.read_bytes()[:50_000])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        load_checkpoint(cut)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_written_files_get_the_usual_permissions(ours, tmp_path):
    """0666 less the umask, as for any new file (safetensors alone writes 0600)."""
    path = tmp_path / "perm.safetensors"
    save_checkpoint(path, ours.state, ours.config)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~_umask()
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("low_byte", [0x80, ord("P")])
def test_a_header_length_that_looks_like_pickle_or_zip_still_reads_as_safetensors(ours, tmp_path, low_byte):
    """The file starts with the header length's low byte: 0x80 (a pickle's first byte) or 'P' (zip's) must not
    send it to torch.load."""
    path = tmp_path / "len.safetensors"

    def first_byte() -> int:
        with open(path, "rb") as f:
            return f.read(1)[0]

    # Each padding character adds one byte to the header (which safetensors pads to a multiple of 8): start
    # where the low byte comes out right, then at most one alignment step on.
    save_checkpoint(path, ours.state, ours.config, provenance={"pad": ""})
    start = (low_byte - first_byte()) % 256
    for pad in range(start, start + 16):
        save_checkpoint(path, ours.state, ours.config, provenance={"pad": "x" * pad})
        if first_byte() == low_byte:
            break
    else:
        pytest.fail("no padding gave the wanted header length")
    assert load_checkpoint(path).config == ours.config
