"""alae-rt on Ray Serve (`alae-rt serve --ray`): replicas that each hold one Runtime and one AlaeService, behind Ray
Serve's gRPC proxy, which answers the same alae_rt.v1.Alae service as `alae-rt serve`.

Each replica is what one `alae-rt serve` process is inside: the service's batchers, request rules, limits and errors,
with a CallContext for a transport. Ray places the replicas (one per GPU on a GPU cluster), restarts one that dies,
and adds or removes replicas with the load (autoscaling on calls in flight per replica)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from alae_rt.errors import AlaeError, InputError
from alae_rt.serve import alae_rt_pb2 as pb
from alae_rt.serve.client import AlaeClient
from alae_rt.serve.config import ServeConfig
from alae_rt.serve.logs import log
from alae_rt.serve.requests import tolerant_parser
from alae_rt.serve.wire import RequestError

APP = "alae"  # the Serve application's name (gRPC callers may name it in the `application` metadata)
DEPLOYMENT = "Alae"
# The proxies route only applications with a route prefix (gRPC calls then reach the only one without naming it);
# the deployment answers no HTTP calls.
ROUTE = "/alae"
SERVICER = "alae_rt.serve.ray_app.add_to_proxy"  # the RPCs' table in Ray's gRPC proxy
READY_TIMEOUT_S = 600.0  # a replica loads and warms up its model before it is counted as running
# What an empty answer of a refused call is (Ray sends a message with every status; its content is not read).
EMPTY = {"Encode": pb.EncodeResponse, "GetModelInfo": pb.ModelInfo}
METHODS = pb.DESCRIPTOR.services_by_name["Alae"].methods
# Each RPC's request parser, the gRPC server's own (a corrupt message becomes a BadMessage, refused as the server
# refuses it); it runs in the replica.
PARSERS = {m.name: tolerant_parser(getattr(pb, m.input_type.name)) for m in METHODS}


def add_to_proxy(servicer: Any, server: grpc.aio.Server) -> None:
    """Register alae_rt.v1.Alae with Ray's gRPC proxy (gRPCOptions.grpc_servicer_functions): Ray replaces each
    behaviour with its routing to a replica. Requests pass as the bytes that came: the proxy parses nothing (our
    generated classes are not importable under their .proto's module name, so Ray could not pickle a parsed
    request), and the replica parses them with PARSERS."""
    handlers = {m.name: (grpc.unary_stream_rpc_method_handler if m.server_streaming
                         else grpc.unary_unary_rpc_method_handler)(getattr(servicer, m.name)) for m in METHODS}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        pb.DESCRIPTOR.services_by_name["Alae"].full_name, handlers),))


@dataclass(frozen=True)
class ModelSpec:
    """What each replica loads: `alae-rt serve`'s model options (the checkpoint path must exist on every node)."""

    checkpoint: str | None = None  # None (and no preset): the bundled default model
    preset: str | None = None  # random weights of a preset (tests, benchmarks)
    config: str | None = None
    trust_pickle: bool = False
    device: str = "auto"
    dtype: str = "fp32"
    backend: str = "auto"
    max_batch: int = 8
    backend_options: dict[str, Any] = field(default_factory=dict)
    directions: tuple[str, ...] = ()
    threads: int | None = None  # torch CPU threads in a replica; None: its CPUs (cpus_per_replica)

    def load(self):
        from alae_rt.runtime import Runtime

        common = {"device": self.device, "dtype": self.dtype, "backend": self.backend, "max_batch": self.max_batch,
                  "backend_options": self.backend_options}
        if self.preset:
            rt = Runtime.from_config(self.preset, **common)
        else:
            rt = Runtime.load(self.checkpoint, config=self.config, trust_pickle=self.trust_pickle, **common)
        for folder in self.directions:
            rt.load_directions(folder)
        return rt


@dataclass(frozen=True)
class Scaling:
    """Where replicas run and how many. Defaults: one GPU a replica on a cluster with GPUs, else one CPU; from one
    replica up to one per GPU (or per cpus_per_replica CPUs); a replica is added when its calls in flight pass
    target_ongoing_requests. None: chosen from the cluster's resources when the application is built."""

    min_replicas: int = 1
    max_replicas: int | None = None
    # One full batch in flight per replica keeps its batcher fed without queueing a second batch behind it.
    target_ongoing_requests: float | None = None  # None: the model's max_batch
    # Ray's default (5) would hold back the calls that our batcher merges: a replica takes a few batches' worth
    # and its own queue limit (--max-queue) refuses the rest with RESOURCE_EXHAUSTED, as `alae-rt serve` does.
    max_ongoing_requests: int | None = None  # None: 4 x max_batch
    gpus_per_replica: float | None = None  # None: 1 on a cluster with GPUs, else 0
    cpus_per_replica: float = 1.0
    fixed: bool = False  # exactly min_replicas, no autoscaling

    def check(self) -> None:
        if self.min_replicas < 1 or (self.max_replicas is not None and self.max_replicas < self.min_replicas):
            raise InputError(f"--replicas: expected N or MIN-MAX with 1 <= MIN <= MAX, got {self.min_replicas}-"
                             f"{self.max_replicas}")
        if self.cpus_per_replica <= 0:
            raise InputError(f"--ray-cpus must be > 0, got {self.cpus_per_replica}")

    def options(self, max_batch: int, cluster: dict[str, float]) -> dict[str, Any]:
        """serve.deployment options for a cluster with these resources (ray.cluster_resources())."""
        gpus = self.gpus_per_replica if self.gpus_per_replica is not None else (1.0 if cluster.get("GPU") else 0.0)
        actor = {"num_cpus": self.cpus_per_replica, "num_gpus": gpus,
                 # torch's OpenMP threads spinning at their barriers on a shared CPU (see the CLI's note)
                 "runtime_env": {"env_vars": {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}}}
        opts: dict[str, Any] = {"ray_actor_options": actor,
                                "max_ongoing_requests": self.max_ongoing_requests or 4 * max_batch,
                                "graceful_shutdown_timeout_s": 30, "health_check_period_s": 5}
        if self.fixed:
            opts["num_replicas"] = self.min_replicas
            return opts
        fit = int(cluster.get("GPU", 0) // gpus) if gpus else int(cluster.get("CPU", 1) // self.cpus_per_replica)
        top = self.max_replicas or max(self.min_replicas, fit)
        opts["autoscaling_config"] = {
            "min_replicas": self.min_replicas, "initial_replicas": self.min_replicas, "max_replicas": top,
            "target_ongoing_requests": self.target_ongoing_requests or max_batch,
            # scale up within seconds of a burst; give a replica back only after a quiet minute (a model load
            # and warm-up costs seconds to minutes)
            "upscale_delay_s": 3, "downscale_delay_s": 60}
        return opts


class AlaeReplica:
    """One replica: a Runtime and an AlaeService on the replica's event loop. Each RPC is the service's own; a
    refused call's status and message go back through Ray's gRPC context."""

    async def __init__(self, model: ModelSpec, cfg: ServeConfig, cpus: float = 1.0):
        import torch

        from alae_rt.serve.codec_processes import CodecProcesses
        from alae_rt.serve.metrics import Metrics
        from alae_rt.serve.server import WorkerPool
        from alae_rt.serve.service import AlaeService

        torch.set_num_threads(model.threads or max(1, int(cpus)))
        started = time.perf_counter()
        rt = model.load()
        cfg.check(rt.max_batch)
        self.pools = (WorkerPool(1, "alae-compute"), WorkerPool(cfg.workers, "alae-prep"),
                      WorkerPool(cfg.image_workers, "alae-images"))
        res = rt.config.resolution
        self.codec = CodecProcesses(cfg.codec_processes, max(cfg.max_pixels, res * res))
        self.service = service = AlaeService(rt, cfg, Metrics(), *self.pools, self.codec)
        loop = asyncio.get_running_loop()
        await service.start()
        if cfg.warmup:  # before Ray counts the replica as running: no caller pays for the warm-up
            codec = loop.run_in_executor(self.pools[1], self.codec.start)
            await loop.run_in_executor(self.pools[0], service.warm_up)
            await codec
        service.state = "serving"
        log.info("replica serving", extra={"fields": {"event": "serving", "model": repr(rt), "pid": os.getpid(),
                                                      "warmup_s": round(time.perf_counter() - started, 3)}})

    @staticmethod
    def _context(grpc_context) -> Any:
        from alae_rt.serve.service import CallContext

        return CallContext(grpc_context.peer() if grpc_context is not None else "ray")

    async def _unary(self, method: str, request: Any, grpc_context) -> Any:
        try:
            return await getattr(self.service, method)(PARSERS[method](request), self._context(grpc_context))
        except RequestError as err:
            refuse(grpc_context, err)
            return EMPTY.get(method, pb.ImagesResponse)()

    # The RPCs, by their names in the .proto: the proxy routes each gRPC method to the replica method of its name.
    async def Encode(self, request, grpc_context=None):
        return await self._unary("Encode", request, grpc_context)

    async def Decode(self, request, grpc_context=None):
        return await self._unary("Decode", request, grpc_context)

    async def Reconstruct(self, request, grpc_context=None):
        return await self._unary("Reconstruct", request, grpc_context)

    async def Generate(self, request, grpc_context=None):
        return await self._unary("Generate", request, grpc_context)

    async def Edit(self, request, grpc_context=None):
        return await self._unary("Edit", request, grpc_context)

    async def Mix(self, request, grpc_context=None):
        return await self._unary("Mix", request, grpc_context)

    async def GetModelInfo(self, request, grpc_context=None):
        return await self._unary("GetModelInfo", request, grpc_context)

    async def Interpolate(self, request, grpc_context=None) -> AsyncIterator[pb.InterpolateFrame]:
        try:
            async for frame in self.service.Interpolate(PARSERS["Interpolate"](request), self._context(grpc_context)):
                yield frame
        except RequestError as err:
            refuse(grpc_context, err)
            # A stream that ends without a frame takes its status from a raised error (Ray keeps the code and
            # details set on the context; a unary call's go back with its empty answer). A plain one: Ray pickles
            # it to the proxy, and RequestError's arguments do not survive that.
            raise RuntimeError(err.message) from None

    def check_health(self) -> None:
        """Ray restarts a replica whose check raises."""
        if self.service.state != "serving":
            raise RuntimeError(f"the replica is {self.service.state}")

    async def __del__(self):
        """A replica Ray stops (scaled down, or the application deleted): calls in flight have finished (Ray waits
        for them up to graceful_shutdown_timeout_s); free the model's threads and codec processes."""
        if not hasattr(self, "service"):  # the constructor failed before there was anything to free
            return
        self.service.state = "draining"
        await self.service.close()
        for pool in self.pools:
            pool.shutdown(wait=False, cancel_futures=True)
        self.codec.close()


def refuse(grpc_context, err: RequestError) -> None:
    """A refused call's status and message, as the gRPC server's context.abort would send them."""
    if grpc_context is None:  # called through a handle (Python), not the proxy
        raise err
    grpc_context.set_code(err.code)
    grpc_context.set_details(err.message)


# How Ray's proxy answers a call whose replica died under it (ray.kill, a lost node, an out-of-memory kill): INTERNAL
# with Ray's ActorDiedError or ActorUnavailableError text.
REPLICA_LOST = ("The actor died", "actor is dead", "ActorDiedError", "ActorUnavailableError")


def replica_lost(exc: grpc.RpcError) -> bool:
    """Whether a failed call's replica died under it (the call may not have run: try it again)."""
    details = exc.details() or ""
    return exc.code() == grpc.StatusCode.INTERNAL and any(text in details for text in REPLICA_LOST)


class _Unavailable:
    """A lost replica's error as the client's retry rule takes it: UNAVAILABLE."""

    def __init__(self, exc: grpc.RpcError):
        self._details = (exc.details() or "").splitlines()[0]

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return f"a Ray Serve replica died under the call ({self._details})"


class RayClient(AlaeClient):
    """AlaeClient for the Ray deployment: with retry_s, a call whose replica died under it is tried again (on
    another replica), as UNAVAILABLE is; every call is a pure function of its request, so a retry gives what the
    first try would have."""

    def _retry_wait(self, exc: grpc.RpcError, method: str, started: float, attempt: int) -> float:
        return super()._retry_wait(_Unavailable(exc) if replica_lost(exc) else exc, method, started, attempt)


def build_app(model: ModelSpec, cfg: ServeConfig, scaling: Scaling, cluster: dict[str, float] | None = None):
    """The Serve application: the deployment with its placement and autoscaling for this cluster."""
    import ray
    from ray import serve

    scaling.check()
    opts = scaling.options(model.max_batch, ray.cluster_resources() if cluster is None else cluster)
    deployment = serve.deployment(AlaeReplica, name=DEPLOYMENT, **opts)
    return deployment.bind(model, cfg, scaling.cpus_per_replica)


def start_serve(grpc_port: int = 50051, http_port: int = 8000,
                request_timeout_s: float | None = None) -> None:
    """Serve's controller and proxies on the connected cluster, with the gRPC proxy serving alae_rt.v1.Alae.
    The HTTP proxy, which this application does not use, listens on 127.0.0.1:http_port (Ray starts it with the
    gRPC one); Ray's gRPC proxy listens on every interface."""
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    serve.start(http_options=HTTPOptions(host="127.0.0.1", port=http_port),
                grpc_options=gRPCOptions(port=grpc_port, grpc_servicer_functions=[SERVICER],
                                         request_timeout_s=request_timeout_s))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def running_replicas() -> int:
    """Replicas of the deployment that are running now."""
    from ray import serve

    app = serve.status().applications.get(APP)
    if app is None or DEPLOYMENT not in app.deployments:
        return 0
    return app.deployments[DEPLOYMENT].replica_states.get("RUNNING", 0)


def wait_running(replicas: int, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while running_replicas() < replicas:
        if time.monotonic() > deadline:
            raise AlaeError(f"Ray Serve: {running_replicas()} of {replicas} replicas running after {timeout_s:g} s "
                            "(`ray status` shows whether the cluster has the CPUs or GPUs they ask for)")
        time.sleep(0.5)


def serve_on_ray(model: ModelSpec, cfg: ServeConfig, scaling: Scaling, address: str | None,
                 port_file: Path | None) -> int:
    """`alae-rt serve --ray`: connect to the cluster at `address` (None: start one on this machine), run the
    application, write the gRPC port, and serve until SIGTERM or Ctrl-C; then delete the application (and stop
    the local cluster this command started)."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise AlaeError("--ray needs Ray Serve: pip install 'alae-rt[ray]'") from None
    scaling.check()
    if model.checkpoint and not Path(model.checkpoint).exists():
        raise InputError(f"{model.checkpoint}: no such file")
    port = cfg.port
    # The proxy takes requests up to this size (Ray's own default is 2 GiB); read when the proxy starts.
    os.environ.setdefault("RAY_SERVE_GRPC_MAX_MESSAGE_SIZE", str(cfg.max_message_bytes))
    embedded = address is None
    # "local": a cluster of this command's own, never one that another `ray start` left running here
    ray.init(address=address or "local", include_dashboard=False, configure_logging=False, log_to_driver=False)
    stop = threading.Event()
    try:
        # the unused HTTP proxy on a free port of this machine's own cluster (Ray's 8000 may be taken); a cluster's
        # proxies on every node take Ray's default
        start_serve(port, free_port() if embedded else 8000)
        app = build_app(model, cfg, scaling)
        serve.run(app, name=APP, route_prefix=ROUTE, blocking=False)
        wait_running(scaling.min_replicas)
        log.info("listening", extra={"fields": {"event": "listening", "address": f"{cfg.host}:{port}", "ray": True,
                                                "cluster": ray.get_runtime_context().gcs_address,
                                                "replicas": running_replicas()}})
        if port_file is not None:
            port_file.write_text(f"{port}\n")
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        log.info("signal: deleting the application", extra={"fields": {"event": "signal"}})
    finally:
        if port_file is not None:
            port_file.unlink(missing_ok=True)
        try:
            serve.delete(APP) if not embedded else serve.shutdown()
        finally:
            ray.shutdown()
    return 0
