"""Every backend against the official fixtures (and so against eager), and the backend registry."""

from __future__ import annotations

import pytest
import torch
from helpers import OFFICIAL, check_all_outputs, require

from alae_rt import InputError, Runtime
from alae_rt.backends import available_backends, create_backend
from alae_rt.backends.compile import CompileBackend, cpp_compiler_available


@pytest.fixture(scope="module")
def gray32():
    folder = require(OFFICIAL / "gray32")
    return folder / "checkpoint.pth", torch.load(folder / "reference.pt", weights_only=True)


def test_every_backend_checks_its_options_the_same_way(rt128):
    """The registry builds each backend from its own module; unknown options get one message for all of them,
    naming what the backend does take."""
    assert available_backends()[:6] == ["eager", "compile", "official", "triton", "onnxruntime", "tensorrt"]
    model, device = rt128.model, rt128.device
    with pytest.raises(InputError, match=r"backend 'eager' has no option\(s\) speed; it takes channels_last"):
        create_backend("eager", model, device, speed=1)
    with pytest.raises(InputError, match=r"backend 'official' has no option\(s\) x; it takes none"):
        create_backend("official", model, device, x=1)
    with pytest.raises(InputError, match=r"'onnxruntime' has no option\(s\) threadz; it takes onnx_dir, providers"):
        create_backend("onnxruntime", model, device, threadz=2)
    with pytest.raises(InputError, match="unknown backend 'nope'; choose from auto, eager, compile"):
        create_backend("nope", model, device)
    assert create_backend("eager", model, device).name == "eager"
    # values of the wrong kind are named by the option, before the backend is built (the CLI's KEY=VALUE converts
    # true/false and numbers; anything else stays a string)
    for backend, key, value, wanted in (("onnxruntime", "threads", "abc", "int | None"),
                                        ("onnxruntime", "check_weights_match", "maybe", "bool"),
                                        ("triton", "cuda_graphs", 3, "bool"),
                                        ("tensorrt", "check_weights_match", 1.5, "bool")):
        with pytest.raises(InputError, match=f"backend '{backend}' option {key}: expected {wanted}, got"):
            create_backend(backend, model, device, **{key: value})


def test_backend_option_values_are_checked_where_torch_or_onnxruntime_would_fail(rt128, tmp_path):
    """compile: its mode (and torch.compile's own flags), and a mode with inductor options, which torch.compile
    refuses together (a mode alone used to be refused too); onnxruntime: threads in range, providers by name (a
    comma-separated string from the CLI)."""
    model, device = rt128.model, rt128.device
    if cpp_compiler_available():
        assert create_backend("compile", model, device, mode="reduce-overhead").name == "compile"
        for options, message in (({"mode": "bogus"}, "option mode: 'bogus'; choose from default"),
                                 ({"dynamic": "maybe"}, "option dynamic: expected true or false"),
                                 ({"mode": "default", "freezing": True}, "a mode or inductor options")):
            with pytest.raises(InputError, match=message):
                create_backend("compile", model, device, **options)
    pytest.importorskip("onnxruntime")
    from alae_rt.export.onnx_export import export_onnx

    export_onnx(model, tmp_path)
    for options, message in (({"threads": -3}, "threads: -3 is out of range"),
                             ({"providers": "CPUExecutionProvider,NopeProvider"}, "NopeProvider not available")):
        with pytest.raises(InputError, match=message):
            create_backend("onnxruntime", model, device, onnx_dir=tmp_path, **options)
    backend = create_backend("onnxruntime", model, device, onnx_dir=tmp_path, providers="CPUExecutionProvider")
    assert backend.encoder.providers == ["CPUExecutionProvider"]


def test_official_order_backend_matches_the_fixtures(official):
    folder, ref = official
    check_all_outputs(Runtime.load(folder / "checkpoint.pth", backend="official"), ref)
    with pytest.raises(InputError, match="fp32 only"):
        Runtime.load(folder / "checkpoint.pth", backend="official", dtype="bf16")


def test_eager_channels_last_matches_the_fixtures(official):
    """The CPU fast path's memory order: both networks channels-last, same answers, images back in the default
    layout."""
    folder, ref = official
    rt = Runtime.load(folder / "checkpoint.pth", backend="eager", backend_options={"channels_last": True})
    assert rt.model.encoder.blocks[0].conv_1.is_contiguous(memory_format=torch.channels_last)
    check_all_outputs(rt, ref)
    assert rt.decode(ref["encode_w"], noise="const").is_contiguous()


@pytest.mark.skipif(not cpp_compiler_available(), reason="inductor needs a C++ compiler")
def test_compile_backend_matches_the_fixtures(gray32):
    path, ref = gray32
    rt = Runtime.load(path, backend="compile")
    check_all_outputs(rt, ref)
    assert rt.backend.fallback_reason is None  # really compiled, not the eager fallback
    # another batch size: recompiles with a dynamic batch, same answers
    torch.testing.assert_close(rt.encode(ref["x"][:1]), ref["encode_w"][:1], atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not cpp_compiler_available(), reason="inductor needs a C++ compiler")
def test_compile_backend_decodes_w_and_styles_with_one_graph(gray32):
    """w broadcast to every style input (a stride-0 view), per-layer styles and styles made in inference mode are
    one kind of input to the compiled generator: one graph, not one each (each costs a compilation: minutes at
    1024x1024 on a CPU)."""
    from torch._dynamo.utils import counters

    rt = Runtime.load(gray32[0], backend="compile")
    w = gray32[1]["encode_w"]
    before = counters["stats"]["unique_graphs"]
    rt.decode(w, noise="const")
    rt.decode(rt.styles(w).contiguous(), noise="const")
    with torch.inference_mode():
        styles = rt.styles(w).contiguous()
    rt.decode(styles, noise="const")
    assert counters["stats"]["unique_graphs"] - before == 1


def test_compile_failure_falls_back_to_eager(gray32, monkeypatch):
    from torch._dynamo.exc import BackendCompilerFailed

    path, ref = gray32
    eager = Runtime.load(path)
    rt = Runtime(eager.model, backend="eager")
    backend = CompileBackend.__new__(CompileBackend)
    backend.model, backend.fallback_reason = rt.model, None

    def broken(*args):
        raise BackendCompilerFailed(lambda *a: None, RuntimeError("no compiler today"), None)

    backend._encode = backend._decode = broken
    rt.backend = backend
    with pytest.warns(UserWarning, match="torch.compile failed, running eager instead"):
        w = rt.encode(ref["x"])
    torch.testing.assert_close(w, ref["encode_w"], atol=1e-4, rtol=1e-4)
    assert "no compiler today" in backend.fallback_reason
