"""Packaging: one distribution, the alae_rt namespace, no stray top-level packages, one-way imports."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from importlib import metadata

import pytest
from helpers import ROOT

SUBPACKAGES = ("kernels", "export", "training", "serve")


def test_folders_import_under_alae_rt_only(tmp_path):
    code = (
        "import importlib, importlib.util\n"
        f"for name in {SUBPACKAGES!r}:\n"
        "    mod = importlib.import_module('alae_rt.' + name)\n"
        "    assert mod.__file__.replace('\\\\', '/').endswith(name + '/__init__.py'), mod.__file__\n"
        "    assert importlib.util.find_spec(name) is None, 'top-level package ' + name + ' is installed'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)


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
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("alae_rt-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    tree = {p.relative_to(ROOT).as_posix() for p in (ROOT / "alae_rt").rglob("*.py")
            if "__pycache__" not in p.parts}
    assert tree - names == set()
    assert {"alae_rt/serve/editor/index.html", "alae_rt/serve/protos/alae_rt/v1/alae_rt.proto",
            "alae_rt/models/default.safetensors"} <= names
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"alae_rt"}


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


def test_the_client_and_the_help_start_without_torch(tmp_path):
    """Callers of a server need grpc and numpy only: the client module and `alae-rt --help` / `client --help`
    do not import torch (it takes seconds to load)."""
    code = (
        "import sys\n"
        "import alae_rt, alae_rt.serve.client\n"
        "from alae_rt.cli import main\n"
        "for argv in (['--help'], ['client', '--help'], ['client', 'reconstruct', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert alae_rt.Runtime.__name__ == 'Runtime' and 'torch' in sys.modules  # the model loads on use\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, capture_output=True)
