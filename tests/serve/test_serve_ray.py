"""alae-rt on Ray Serve (alae_rt.serve.ray_app): the bundled model in 2 CPU replicas on a local Ray cluster, called
through Ray's gRPC proxy with the project's own client. One cluster for the module (it costs ~20 s to start on two
cores), limited to 2 CPUs and a small object store, shut down at the end."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import torch

pytest.importorskip("ray.serve", reason="the ray extra is not installed (make setup installs it)")

import ray  # noqa: E402
from ray import serve  # noqa: E402
from serve_helpers import GenerateLoad, ServerThread, same_images, u8  # noqa: E402

from alae_rt import Runtime  # noqa: E402
from alae_rt.serve import alae_rt_pb2 as pb  # noqa: E402
from alae_rt.serve import ray_app  # noqa: E402
from alae_rt.serve.client import AlaeClient, Seeds  # noqa: E402
from alae_rt.serve.config import ServeConfig  # noqa: E402

REPLICAS = 2
# Small and single-threaded: two replicas share two cores with the proxy, the controller and the test.
CFG = ServeConfig(max_images=8, max_queue=64, workers=1, image_workers=1, codec_processes=0, max_delay_ms=5)
MODEL = ray_app.ModelSpec(device="cpu", backend="eager", max_batch=8, threads=1)


@pytest.fixture(scope="module")
def rt() -> Runtime:
    return Runtime.load(device="cpu")  # the bundled model, as each replica loads it


@pytest.fixture(scope="module")
def cluster():
    """The address of Ray's gRPC proxy, serving the deployment with 2 running replicas."""
    port = ray_app.free_port()
    ray.init(address="local", num_cpus=REPLICAS, object_store_memory=80 * 2**20, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    try:
        ray_app.start_serve(port, ray_app.free_port())
        # half a CPU each: a replacement for a killed replica is placed while the old one's lease is let go
        app = ray_app.build_app(MODEL, CFG, ray_app.Scaling(min_replicas=REPLICAS, fixed=True, cpus_per_replica=0.5))
        serve.run(app, name=ray_app.APP, route_prefix=ray_app.ROUTE, blocking=False)
        ray_app.wait_running(REPLICAS, timeout_s=300)
        yield f"127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_answers_equal_the_runtimes_own(cluster, rt, faces128):
    faces = sorted(faces128.glob("*.png"))[:2]
    with AlaeClient(cluster, timeout=60) as c:
        info = c.info()
        assert (info.config_name, info.latent_size, info.max_images) == (rt.config.name, rt.config.latent_size, 8)
        same_images(c.generate([0, 7], noise="random", format="raw").images,
                    u8(rt, rt.generate(seeds=[0, 7], noise="random")))
        w = c.encode(faces)
        np.testing.assert_allclose(w, rt.encode(faces).numpy(), atol=1e-4, rtol=1e-4)
        same_images(c.decode(w, format="raw").images, u8(rt, rt.decode(torch.from_numpy(w), noise="const")))
        same_images(c.reconstruct(faces, format="raw").images, u8(rt, rt.reconstruct(faces, noise="const")))
        wt = torch.from_numpy(w)
        same_images(c.edit(w, {"pc00": 2.0}, format="raw").images,
                    u8(rt, rt.decode(rt.edit(wt, {"pc00": 2.0}), noise="const")))
        same_images(c.mix(Seeds([1, 2]), w[:1], cutoff=2, format="raw").images,
                    u8(rt, rt.mix(rt.truncate(rt.map(rt.seeds_to_z([1, 2]))), wt[:1], 2, noise="const")))
        frames = list(c.interpolate(Seeds([1]), Seeds([2]), steps=3, format="raw"))
        assert len(frames) == 3
        same_images(frames[-1][2].images, u8(rt, rt.generate(seeds=[2], noise="const")))


def test_concurrent_callers_each_get_their_own_results(cluster, rt):
    seeds = list(range(12))
    want = {s: u8(rt, rt.generate(seeds=[s], noise="random", seed=100 + s)) for s in seeds}
    got, errors = {}, []

    def call(s: int) -> None:
        try:
            with AlaeClient(cluster, timeout=120) as c:
                got[s] = c.generate([s], noise="random", seed=100 + s, format="raw").images
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors
    for s in seeds:
        same_images(got[s], want[s])


def tensor(arr: np.ndarray) -> pb.Tensor:
    return pb.Tensor(shape=list(arr.shape), data=np.ascontiguousarray(arr, "<f4").tobytes())


def bad_requests(d: int) -> list[tuple[str, object]]:
    w = np.ones((1, d), np.float32)
    nan = w.copy()
    nan[0, 1] = np.nan
    return [
        ("Encode", pb.EncodeRequest(images=[pb.Image(encoded=b"this is not a PNG at all")])),
        ("Decode", pb.DecodeRequest(latents=tensor(np.ones((2, d - 1), np.float32)))),
        ("Decode", pb.DecodeRequest(latents=tensor(nan))),
        ("Generate", pb.GenerateRequest(seeds=[1], truncation_psi=50)),
        ("Generate", pb.GenerateRequest(seeds=list(range(9)))),
        ("Edit", pb.EditRequest(source=pb.LatentSource(seeds=[1]), edits=[pb.DirectionEdit(name="smile",
                                                                                            strength=1)])),
        ("Mix", pb.MixRequest(a=pb.LatentSource(seeds=[1, 2]), b=pb.LatentSource(seeds=[3, 4, 5]))),
        ("Interpolate", pb.InterpolateRequest(a=pb.LatentSource(seeds=[1]), b=pb.LatentSource(seeds=[2]), steps=1)),
        ("Generate", b"\xff\xff\xff corrupt"),  # not a message at all
    ]


def refusal(channel: grpc.Channel, method: str, request) -> tuple[grpc.StatusCode, str]:
    data = request if isinstance(request, bytes) else request.SerializeToString()
    path = f"/{pb.DESCRIPTOR.services_by_name['Alae'].full_name}/{method}"
    call = (channel.unary_stream if method == "Interpolate" else channel.unary_unary)(path)
    try:
        result = call(data, timeout=60)
        list(result) if method == "Interpolate" else None
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    raise AssertionError(f"{method}: accepted {request!r}")


def test_bad_input_gives_the_grpc_servers_errors(cluster, rt):
    with ServerThread(rt, ServeConfig(port=0, max_images=8, max_queue=64, workers=1, image_workers=1,
                                      codec_processes=0)) as server, \
            grpc.insecure_channel(server.address) as direct, grpc.insecure_channel(cluster) as via_ray:
        for method, request in bad_requests(rt.config.latent_size):
            want = refusal(direct, method, request)
            assert want[0] in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), want
            assert refusal(via_ray, method, request) == want


def replica_names() -> set[str]:
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(
        f"SERVE_REPLICA::{ray_app.APP}#")}


def test_a_replica_killed_under_load_loses_no_call_and_is_replaced(cluster, rt):
    """Callers retry what the dead replica held (RayClient); every call gets its own right answer, and the
    deployment is back to 2 running replicas, one of them new."""
    before = replica_names()
    assert len(before) == REPLICAS
    seeds = list(range(4))
    want = {s: u8(rt, rt.generate(seeds=[s], noise="const")) for s in seeds}
    load = GenerateLoad(lambda: ray_app.RayClient(cluster, timeout=60, retry_s=120), seeds).start()
    try:
        load.wait_for(8)
        victim = sorted(before)[0]
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        killed_at = len(load.done)
        deadline = time.monotonic() + 240
        # The victim's name goes at once, but Serve's status counts it as running until its controller notices:
        # back to 2 is a new replica's name and 2 running.
        while not (replica_names() - before and ray_app.running_replicas() == REPLICAS) and not load.errors:
            assert time.monotonic() < deadline, serve.status()
            time.sleep(0.5)
        assert victim not in replica_names()
        load.wait_for(len(load.done) + 8)  # and calls are answered with the replacement in
    finally:
        load.stop()
    assert not load.errors
    assert len(load.done) > killed_at
    for s, images in load.done:
        same_images(images, want[s])
    assert len(replica_names() - before) == 1


def test_placement_and_autoscaling_defaults():
    """One GPU a replica on a cluster with GPUs (up to one replica per GPU), CPUs on a CPU cluster; scaling on a
    full batch in flight per replica; enough calls let in for the batcher to merge."""
    gpu = ray_app.Scaling().options(8, {"CPU": 64, "GPU": 4})
    assert gpu["ray_actor_options"]["num_gpus"] == 1 and gpu["max_ongoing_requests"] == 32
    auto = gpu["autoscaling_config"]
    assert (auto["min_replicas"], auto["max_replicas"], auto["target_ongoing_requests"]) == (1, 4, 8)
    cpu = ray_app.Scaling(cpus_per_replica=4).options(8, {"CPU": 16})
    assert cpu["ray_actor_options"]["num_gpus"] == 0 and cpu["autoscaling_config"]["max_replicas"] == 4
    fixed = ray_app.Scaling(min_replicas=3, fixed=True).options(8, {"CPU": 2})
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed


def test_serve_ray_refuses_the_servers_own_front_ends_in_one_line(tmp_path):
    for args, text in ((["--ray", "--http-port", "0", "--metrics-port", "0"],
                        "alae-rt: error: --http-port, --metrics-port: not with --ray"),
                       (["--replicas", "2"], "alae-rt: error: --address and --replicas are for --ray: add --ray")):
        done = subprocess.run([sys.executable, "-m", "alae_rt.cli", "serve", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.strip().splitlines() == [done.stderr.strip()] and done.stderr.startswith(text)
