"""gRPC client-side load balancing (alae_rt.serve.balancing) across two real `alae-rt serve` processes on loopback:
calls go round robin to both, and a SIGTERM of one under load loses no call."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from helpers import ROOT
from serve_helpers import GenerateLoad, ServerThread, same_images, tiny_rt, u8

from alae_rt import Runtime
from alae_rt.errors import AlaeError
from alae_rt.serve import alae_rt_pb2 as pb
from alae_rt.serve import alae_rt_pb2_grpc as pb_grpc
from alae_rt.serve.balancing import RETRY_POLICY, BalancedClient, balanced_target, service_config
from alae_rt.serve.client import AlaeClient
from alae_rt.serve.config import ServeConfig

ALAE_RT = [sys.executable, "-m", "alae_rt.cli"]


def start_server(folder: Path) -> subprocess.Popen:
    folder.mkdir()
    log = open(folder / "server.log", "w")
    proc = subprocess.Popen([*ALAE_RT, "serve", "--port", "0", "--port-file", str(folder / "port"), "--threads", "1",
                             "--workers", "1", "--image-workers", "1", "--codec-processes", "0", "--grace-s", "30"],
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return proc


def wait_port(proc: subprocess.Popen, folder: Path) -> str:
    t0 = time.monotonic()
    port_file = folder / "port"
    while not port_file.exists() or not port_file.read_text().strip():
        assert proc.poll() is None, (folder / "server.log").read_text()
        assert time.monotonic() - t0 < 120, "the server did not start"
        time.sleep(0.05)
    return f"127.0.0.1:{port_file.read_text().strip()}"


def calls_answered(folder: Path) -> int:
    """Generate calls the server answered OK, from its access log."""
    lines = (json.loads(line) for line in (folder / "server.log").read_text().splitlines() if line.startswith("{"))
    return sum(1 for f in lines if f.get("event") == "rpc" and f.get("method") == "Generate" and f.get("code") == "OK")


def serving(server: str) -> bool:
    with AlaeClient(server, timeout=10) as c:
        return c.health("alae_rt.v1.Alae") == "SERVING"


def readme_block(servers: list[str]) -> None:
    """The README's BalancedClient example, as written but for the two servers' addresses."""
    text = (ROOT / "README.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S)
                if b.startswith("from alae_rt.serve.balancing import BalancedClient"))
    shown = re.findall(r'"(\d+\.\d+\.\d+\.\d+:\d+)"', code)
    assert len(shown) == 2
    for address, server in zip(shown, servers):
        code = code.replace(address, server)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert len(scope["images"]) == 3


def test_sigterm_of_one_server_under_load_loses_no_call(tmp_path):
    rt = Runtime.load(device="cpu")  # the bundled model, as the servers serve it
    seeds = list(range(4))
    want = {s: u8(rt, rt.generate(seeds=[s], noise="const")) for s in seeds}
    folders = [tmp_path / "a", tmp_path / "b"]
    procs = [start_server(f) for f in folders]  # both load the model at once
    try:
        servers = [wait_port(p, f) for p, f in zip(procs, folders)]
        t0 = time.monotonic()
        while not all(serving(s) for s in servers):  # both warmed up
            assert time.monotonic() - t0 < 120, "the servers did not warm up"
            time.sleep(0.1)
        readme_block(servers)
        # no retries of the client's own (retry_s=0): the channel's health checking and retries are under test
        load = GenerateLoad(lambda: BalancedClient(servers, timeout=60), seeds).start()
        try:
            while not (all(calls_answered(f) >= 4 for f in folders) or load.errors):  # round robin: both take calls
                assert time.monotonic() - t0 < 120
                time.sleep(0.05)
            procs[0].send_signal(signal.SIGTERM)
            assert procs[0].wait(60) == 0
            load.wait_for(len(load.done) + 16)  # the other server takes every call from then on
        finally:
            load.stop()
        assert not load.errors
        for s, images in load.done:
            same_images(images, want[s])
        # each call answered once (the README example's one call besides): none was run twice
        assert calls_answered(folders[0]) + calls_answered(folders[1]) == len(load.done) + 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(30)


def test_balanced_target_takes_ip_addresses_of_one_family():
    assert balanced_target(["127.0.0.1:1", "10.0.0.2:2"]) == "ipv4:127.0.0.1:1,10.0.0.2:2"
    assert balanced_target(["[::1]:1", "[fe80::2]:2"]) == "ipv6:[::1]:1,[fe80::2]:2"
    with pytest.raises(AlaeError, match="one DNS name"):
        balanced_target(["alae-a:1", "alae-b:2"])


def test_a_refused_call_is_retried_by_the_channels_retry_policy(tiny_rt):
    """A refusal goes out as trailers only, so a channel's retry policy tries again: a server still warming up
    (UNAVAILABLE) is called RETRY_POLICY's maxAttempts times for one call. A status set after response headers
    (set_code on a handler that returns) is never retried, and a draining server's refusal reached the caller."""
    with ServerThread(tiny_rt, ServeConfig(port=0, warmup=False), wait_ready=False) as s:
        s.server.service.state = "warming"
        with grpc.insecure_channel(s.address, options=[("grpc.service_config", service_config())]) as channel:
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.AlaeStub(channel).Generate(pb.GenerateRequest(seeds=[0]), timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert s.metric("alae_rt_requests_total", method="Generate", code="UNAVAILABLE") == RETRY_POLICY["maxAttempts"]
