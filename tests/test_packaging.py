"""Packaging: one distribution, the alae_rt namespace, no stray top-level packages, one-way imports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata

import pytest
from helpers import ROOT

SUBPACKAGES = ("kernels", "export", "training", "serve")


@pytest.fixture(scope="module")
def fresh_process(tmp_path_factory) -> dict:
    """What a new Python process outside the checkout sees, in one process (each one imports torch, seconds of
    CPU): first the client and the help (before anything imports torch), then the sub-packages."""
    code = (
        "import importlib, importlib.util, json, sys\n"
        "import alae_rt, alae_rt.serve.client\n"
        "from alae_rt.cli import main\n"
        "for argv in (['--help'], ['client', '--help'], ['client', 'reconstruct', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "seen = {'torch_before_use': 'torch' in sys.modules}\n"
        "seen['runtime'] = alae_rt.Runtime.__name__\n"
        "seen['torch_after_use'] = 'torch' in sys.modules  # the model loads on use\n"
        f"for name in {SUBPACKAGES!r}:\n"
        "    mod = importlib.import_module('alae_rt.' + name)\n"
        "    seen[name] = [mod.__file__.replace('\\\\', '/'), importlib.util.find_spec(name) is not None]\n"
        "print('SEEN ' + json.dumps(seen))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path_factory.mktemp("fresh"), check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.rsplit("SEEN ", 1)[1])


def test_folders_import_under_alae_rt_only(fresh_process):
    for name in SUBPACKAGES:
        file, top_level = fresh_process[name]
        assert file.endswith(name + "/__init__.py"), file
        assert not top_level, f"top-level package {name} is installed"


def test_every_package_folder_is_listed_in_pyproject():
    """A package missing from pyproject's list works in the editable install and is absent from a wheel."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {"alae_rt"} | {f"alae_rt.{p.name}" for p in (ROOT / "alae_rt").iterdir()
                             if (p / "__init__.py").is_file()}
    assert listed == folders


def test_one_real_path_per_module():
    """alae_rt/<sub> are real folders and the top-level folders links to them: every module has one real path,
    which import-graph tools walking alae_rt/ see whole."""
    for name in SUBPACKAGES:
        inside, top = ROOT / "alae_rt" / name, ROOT / name
        assert inside.is_dir() and not inside.is_symlink(), f"alae_rt/{name} must be the real folder"
        assert top.is_symlink() and top.resolve() == inside.resolve(), f"{name}/ must be a link to alae_rt/{name}"


def test_the_wheel_holds_every_module_and_the_package_data(tmp_path):
    """The wheel, built from the tree, holds every .py file under alae_rt/ (at one path each) and the package data
    the server and the CLI read (the editor, the .proto, the bundled model), and no top-level package but alae_rt."""
    # Built from a copy of the tracked tree: setuptools' build/ folder would otherwise stay in the checkout, and
    # files it kept from an earlier build could reach the wheel.
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    src = tmp_path / "src"
    for name in tracked.decode().split("\0"):
        if name and (ROOT / name).is_file() and not (ROOT / name).is_symlink():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(src)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("alae_rt-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    tree = {p.relative_to(ROOT).as_posix() for p in (ROOT / "alae_rt").rglob("*.py")
            if "__pycache__" not in p.parts}
    assert tree - names == set()
    assert {"alae_rt/serve/editor/index.html", "alae_rt/serve/protos/alae_rt/v1/alae_rt.proto",
            "alae_rt/models/default.safetensors", "alae_rt/serve/editor/samples/generated-09.png"} <= names
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"alae_rt"}
    # the licence pyproject and the README name, its text shipped beside the metadata that names it
    with zipfile.ZipFile(wheel) as z:
        (info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
        assert z.read(f"{info}/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
        meta = z.read(f"{info}/METADATA").decode()
    assert "License-Expression: Apache-2.0" in meta.splitlines() and "License-File: LICENSE" in meta.splitlines()


def test_the_repository_carries_the_apache_licence_text():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_distribution_metadata():
    dist = metadata.distribution("alae-rt")
    scripts = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    assert scripts == {"alae-rt": "alae_rt.cli:main"}
    extras = set(dist.metadata.get_all("Provides-Extra"))
    assert {"dev", "gpu", "serve"} <= extras
    requires = " ".join(dist.requires)
    assert "torch" in requires and "safetensors" in requires


def test_core_never_imports_the_outer_packages():
    """serve/export/training depend on alae_rt, not the other way round (the CLI loads them lazily)."""
    pattern = re.compile(r"^\s*(from|import)\s+(alae_rt\.|\.\.?)(serve|export|training)\b", re.MULTILINE)
    allowed = [ROOT / "alae_rt" / name for name in ("cli", "serve", "export", "training")]  # the CLI, outer packages
    # The one exception, imported where it is used: an ONNX-file backend given no export folder exports the model on
    # first use (alae_rt.backends.onnxruntime.onnx_folder, shared by onnxruntime and openvino).
    on_the_fly = {ROOT / "alae_rt" / "backends" / "onnxruntime.py": "        from alae_rt.export.onnx_export import "
                                                                    "export_onnx\n"}
    offenders = [p.name for p in (ROOT / "alae_rt").rglob("*.py")
                 if not any(a in p.parents for a in allowed)
                 and pattern.search(p.read_text().replace(on_the_fly.get(p, "\0"), "", 1))]
    assert offenders == []
    kernels = "\n".join(p.read_text() for p in (ROOT / "kernels").rglob("*.py"))
    # leaf ops: torch, triton and alae_rt.kernels itself
    ours = re.search(r"^\s*(from|import)\s+(alae_rt(?!\.kernels\b)|\.)", kernels, re.MULTILINE)
    assert not ours, "kernels must be leaf ops"


def test_the_client_and_the_help_start_without_torch(fresh_process):
    """Callers of a server need grpc and numpy only: the client module and `alae-rt --help` / `client --help`
    do not import torch (it takes seconds to load)."""
    assert not fresh_process["torch_before_use"], "torch was imported"
    assert fresh_process["runtime"] == "Runtime" and fresh_process["torch_after_use"]
