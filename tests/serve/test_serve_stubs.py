"""The committed gRPC stubs are what protoc makes of the .proto today, and import inside alae_rt.serve."""

from __future__ import annotations

import subprocess
import sys

import pytest

from alae_rt.serve import codegen


def test_committed_stubs_match_the_proto(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools (the dev extra) regenerates the stubs")
    codegen.generate(tmp_path)
    for name in codegen.STUBS:
        fresh = (tmp_path / name).read_text()
        committed = (codegen.HERE / name).read_text()
        assert fresh == committed, f"{name} is out of date with {codegen.PROTO}: run python -m alae_rt.serve.codegen"


def test_stubs_import_inside_the_package_only(tmp_path):
    code = ("import alae_rt.serve.alae_rt_pb2_grpc as g, alae_rt.serve.alae_rt_pb2 as p, sys\n"
            "assert g.alae__rt_dot_v1_dot_alae__rt__pb2 is p\n"
            "assert 'alae_rt_pb2' not in sys.modules\n"
            "assert p.DESCRIPTOR.package == 'alae_rt.v1'\n"
            "assert [m.name for m in p.DESCRIPTOR.services_by_name['Alae'].methods] == "
            "['Encode', 'Decode', 'Reconstruct', 'Generate', 'Edit', 'Mix', 'Interpolate', 'GetModelInfo']\n")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)
