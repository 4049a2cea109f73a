"""`alae-rt serve --processes N`: real server processes sharing one port on 127.0.0.1, real gRPC clients - both
processes serve, one that dies is started again while the other serves, SIGTERM stops them all, a process that
cannot start ends the server with its error; a port in use is refused, not shared."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from alae_rt.serve import alae_rt_pb2 as pb
from alae_rt.serve import alae_rt_pb2_grpc as pb_grpc
from alae_rt.serve.client import AlaeClient

ALAE_RT = [sys.executable, "-m", "alae_rt.cli"]


def log_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def wait_for(condition, what: str, timeout: float = 120.0):
    t0 = time.monotonic()
    while not (result := condition()):
        assert time.monotonic() - t0 < timeout, what
        time.sleep(0.05)
    return result


@contextmanager
def processes_server(tmp_path: Path, *args: str):
    """`alae-rt serve --preset tiny --processes 2 --port 0` (JSON logs into server.log); yields (parent, address,
    the log's path) once both processes listen."""
    port_file, log_path = tmp_path / "port", tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([*ALAE_RT, "serve", "--preset", "tiny", "--processes", "2", "--port", "0",
                                 "--port-file", str(port_file), "--threads", "1", "--workers", "1",
                                 "--image-workers", "1", "--codec-processes", "0", *args],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: port_file.exists() or proc.poll() is not None, "the server did not start")
            assert proc.poll() is None, log_path.read_text()
            yield proc, f"127.0.0.1:{port_file.read_text().strip()}", log_path
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def call_on_new_connection(address: str) -> pb.ModelInfo:
    """GetModelInfo over a connection of its own (gRPC shares one between channels unless told not to)."""
    with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        return pb_grpc.AlaeStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=30)


def served_by(log_path: Path, start: int = 0) -> set[str]:
    """The processes that logged an RPC in the log's lines from `start` on."""
    return {line["process"] for line in log_lines(log_path)[start:]
            if line.get("event") == "rpc" and "process" in line}


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is `pid` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return sorted(out)


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One `--processes 2` server for the tests that leave it as they found it (each start is three Python
    processes importing torch). Each test looks at the log lines written since it began."""
    with processes_server(tmp_path_factory.mktemp("processes")) as started:
        yield started


def test_two_processes_share_the_port_and_both_serve(shared_server):
    proc, address, log_path = shared_server
    start = len(log_lines(log_path))
    # the kernel spreads connections over the two: 40 all landing on one would be a 2^-39 chance
    for _ in range(40):
        assert call_on_new_connection(address).resolution == 16
        if served_by(log_path, start) == {"1/2", "2/2"}:
            break
    assert served_by(log_path, start) == {"1/2", "2/2"}
    parent = next(line for line in log_lines(log_path) if line.get("processes") == 2)
    assert parent["event"] == "listening" and len(set(parent["pids"])) == 2
    with grpc.insecure_channel(address) as channel:  # the model answers, not only the info
        images = pb_grpc.AlaeStub(channel).Generate(pb.GenerateRequest(seeds=[0, 1]), timeout=60)
        assert len(images.images) == 2


def test_alae_clients_each_have_a_connection_and_so_reach_both_processes(shared_server):
    """AlaeClient objects do not share one connection (gRPC's default for channels with the same settings): a
    program with several clients uses several server processes."""
    proc, address, log_path = shared_server
    start = len(log_lines(log_path))
    clients = [AlaeClient(address, timeout=30) for _ in range(40)]
    try:
        for c in clients:
            assert c.info().resolution == 16
            if served_by(log_path, start) == {"1/2", "2/2"}:
                break
    finally:
        for c in clients:
            c.close()
    assert served_by(log_path, start) == {"1/2", "2/2"}


def test_a_process_that_dies_is_started_again_and_sigterm_then_stops_them_all(tmp_path):
    """One server for both (a start is three processes importing torch): a killed process is replaced while the
    other serves; SIGTERM then stops every process, the new one included, and removes the port file."""
    with processes_server(tmp_path) as (proc, address, log_path):
        pids = next(line for line in log_lines(log_path) if line.get("processes") == 2)["pids"]
        assert children_of(proc.pid) == sorted(pids)
        os.kill(pids[0], signal.SIGKILL)
        # (a connection that reached the killed process's queue in its last moment is reset: clients retry those)
        restart = wait_for(lambda: next((line for line in log_lines(log_path)
                                         if line.get("event") == "process_restart"), None), "no restart")
        assert restart["pid"] == pids[0] and restart["process"] == "1/2" and restart["status"] == -signal.SIGKILL
        for _ in range(20):  # the survivor answers every new connection while the new process starts
            assert call_on_new_connection(address).resolution == 16
        wait_for(lambda: sum(line.get("event") == "listening" and line.get("process") == "1/2"
                             for line in log_lines(log_path)) == 2, "the new process did not listen")
        before = served_by(log_path)
        wait_for(lambda: call_on_new_connection(address) and served_by(log_path) >= before | {"1/2"},
                 "the new process took no connection")
        assert proc.poll() is None

        running = children_of(proc.pid)
        assert len(running) == 2 and pids[1] in running and pids[0] not in running
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert not (tmp_path / "port").exists()
        for pid in pids + running:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        # each drained and stopped: the survivor and the new process (the killed one had no say)
        assert sum(line.get("event") == "stopped" for line in log_lines(log_path)) == 2


def test_a_process_that_cannot_start_ends_the_server_with_its_error(tmp_path):
    res = subprocess.run([*ALAE_RT, "serve", "--preset", "no-such-preset", "--processes", "2", "--port", "0"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "no-such-preset" in res.stderr and "exited with status 2 before it listened" in res.stderr
    assert "Traceback" not in res.stderr
    missing = subprocess.run([*ALAE_RT, "serve", "-c", str(tmp_path / "missing.safetensors"), "--processes", "2"],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stderr.count("no such file") == 1  # said once, not per process


def test_a_port_in_use_is_refused_not_shared(shared_server):
    """Neither a single server nor another --processes server joins processes already on the port."""
    proc, address, log_path = shared_server
    listening = sum(line.get("event") == "listening" for line in log_lines(log_path))
    assert listening == 3  # the parent's and its two processes'
    port = address.rsplit(":", 1)[1]
    for processes in ("1", "2"):
        res = subprocess.run([*ALAE_RT, "serve", "--preset", "tiny", "--port", port, "--no-warmup",
                              "--processes", processes], capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and "port in use" in res.stderr and "Traceback" not in res.stderr
    assert sum(line.get("event") == "listening" for line in log_lines(log_path)) == 3  # its own, still alone
