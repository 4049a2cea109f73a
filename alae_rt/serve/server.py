"""The gRPC server's lifecycle: listen (TLS, auth, health, reflection, metrics), warm up, serve (health follows the
load), drain, stop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from alae_rt.errors import AlaeError
from alae_rt.runtime import Runtime
from alae_rt.serve import alae_rt_pb2 as pb
from alae_rt.serve.auth import BearerAuth
from alae_rt.serve.codec_processes import CodecProcesses
from alae_rt.serve.config import ServeConfig
from alae_rt.serve.http_api import HttpApi, read_samples, tls_context
from alae_rt.serve.logs import log
from alae_rt.serve.metrics import Metrics
from alae_rt.serve.processes import refuse_port_in_use
from alae_rt.serve.service import AlaeService, add_to_server

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Alae"].full_name  # "alae_rt.v1.Alae"
LOAD_CHECK_S = 0.1  # how often health is brought in line with the queues


class WorkerPool(ThreadPoolExecutor):
    """A thread pool that knows how many of its jobs are running: what an interpreter exit would wait for."""

    def __init__(self, workers: int, name: str):
        super().__init__(workers, thread_name_prefix=name)
        self._running = 0
        self._lock = threading.Lock()

    @property
    def running(self) -> int:
        return self._running

    def submit(self, fn, /, *args, **kwargs):
        return super().submit(self._counted, fn, args, kwargs)

    def _counted(self, fn, args, kwargs):
        with self._lock:
            self._running += 1
        try:
            return fn(*args, **kwargs)
        finally:
            with self._lock:
                self._running -= 1


@dataclass
class _Listening:
    port: int = 0
    metrics_port: int | None = None
    http_port: int | None = None


def refuse_ports_in_use(cfg: ServeConfig) -> None:
    """The one-line error for a port of cfg's (gRPC, HTTP, metrics) that something listens on, checked before
    anything starts (no "stopped" line after it) and before gRPC's core, which logs its own bind failure around
    ours. A --processes child (reuse_port) binds beside its siblings: their parent checked the ports."""
    if not cfg.reuse_port:
        for host, port, what in ((cfg.host, cfg.port, "listen on"), (cfg.host, cfg.http_port, "serve HTTP on"),
                                 (cfg.metrics_host, cfg.metrics_port, "serve metrics on")):
            refuse_port_in_use(host, port or 0, what)


class AlaeServer:
    """A grpc.aio server for one Runtime: start(), wait_ready(), then drain() (what SIGTERM does) or stop().

    The executors exist from construction, so a caller can see them (tests hold the compute thread to make
    queues fill deterministically).
    """

    def __init__(self, rt: Runtime, cfg: ServeConfig | None = None):
        self.rt = rt
        self.cfg = cfg or ServeConfig()
        self.cfg.check(rt.max_batch)
        self.metrics = Metrics()
        self.compute = WorkerPool(1, "alae-compute")  # one Runtime, one device
        self.pool = WorkerPool(self.cfg.workers, "alae-prep")  # latents, noise, response images
        self.image_pool = WorkerPool(self.cfg.image_workers, "alae-images")  # request images, through the stage
        # PNG encode and decode: a slot per process holds the largest request image or response image
        res = rt.config.resolution
        self.codec = CodecProcesses(self.cfg.codec_processes, max(self.cfg.max_pixels, res * res))
        self.service: AlaeService | None = None
        self.health: HealthServicer | None = None
        self._server: grpc.aio.Server | None = None
        self._metrics_server = None
        self._http: HttpApi | None = None
        self.serving = False  # what health says (SERVING), for the HTTP API's health
        self._warm_task: asyncio.Task | None = None
        self._load_task: asyncio.Task | None = None
        self._stopped: asyncio.Event | None = None
        self.listening = _Listening()

    @property
    def port(self) -> int:
        return self.listening.port

    @property
    def metrics_port(self) -> int | None:
        return self.listening.metrics_port

    @property
    def http_port(self) -> int | None:
        return self.listening.http_port

    @property
    def address(self) -> str:
        return f"{self.cfg.host}:{self.port}"

    async def start(self) -> None:
        """Listen (health says NOT_SERVING), then warm up in the background (health then says SERVING)."""
        cfg = self.cfg
        refuse_ports_in_use(cfg)
        self._stopped = asyncio.Event()  # made here: it belongs to the loop that runs the server
        self.service = AlaeService(self.rt, cfg, self.metrics, self.compute, self.pool, self.image_pool, self.codec)
        interceptors = []
        auth = None
        if cfg.auth_tokens:
            reject = self.metrics.requests.labels
            auth = BearerAuth(cfg.auth_tokens,
                              on_reject=lambda m: reject(m.rsplit("/", 1)[-1], "UNAUTHENTICATED").inc())
            interceptors.append(auth)
        samples = read_samples(cfg.sample_faces, cfg.max_message_bytes, cfg.max_pixels) if cfg.http_port is not None \
            else None
        limit = cfg.max_message_bytes
        options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
                   ("grpc.so_reuseport", int(cfg.reuse_port)), *cfg.grpc_options]
        self._server = server = grpc.aio.server(interceptors=interceptors, options=options)
        add_to_server(self.service, server)
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            server)
        address = f"{cfg.host}:{cfg.port}"
        try:
            if cfg.tls_cert is not None:
                pair = (_read(cfg.tls_key, "--tls-key"), _read(cfg.tls_cert, "--tls-cert"))
                creds = grpc.ssl_server_credentials([pair])
                port = server.add_secure_port(address, creds)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:
            detail = str(exc).split("; set GRPC_VERBOSITY")[0]  # a hint to gRPC's developers, not to ours
            raise AlaeError(f"cannot listen on {address}: {detail} (is the port in use, or the address not one of "
                            "this machine's?)") from None
        if port == 0:
            raise AlaeError(f"cannot listen on {address} (is the port in use, or the address not one of this "
                            "machine's?)")
        self.listening.port = port
        await server.start()
        await self.service.start()
        if cfg.http_port is not None:
            self._http = HttpApi(self.service, auth, lambda: "SERVING" if self.serving else "NOT_SERVING",
                                 cfg.http_cors_origins, samples)
            try:
                self.listening.http_port = await self._http.start(
                    cfg.host, cfg.http_port, tls_context(cfg.tls_cert, cfg.tls_key) if cfg.tls_cert else None,
                    reuse_port=cfg.reuse_port)
            except AlaeError:
                await self.stop()
                raise
        if cfg.metrics_port is not None:
            from prometheus_client import start_http_server

            try:
                self._metrics_server, _ = start_http_server(cfg.metrics_port, cfg.metrics_host, self.metrics.registry)
            except OSError as exc:
                await self.stop()
                raise AlaeError(f"cannot serve metrics on {cfg.metrics_host}:{cfg.metrics_port}: "
                                f"{exc.strerror or exc}") from None
            self.listening.metrics_port = self._metrics_server.server_port
        log.info("listening", extra={"fields": {
            "event": "listening", "address": f"{cfg.host}:{port}", "tls": cfg.tls_cert is not None,
            "http": self.http_url,
            "auth": bool(cfg.auth_tokens), "metrics_port": self.listening.metrics_port, "model": repr(self.rt),
            "weights": self.rt.source, "max_batch": self.rt.max_batch, "max_delay_ms": cfg.max_delay_ms}})
        self._warm_task = asyncio.get_running_loop().create_task(self._warm_up())
        self._load_task = asyncio.get_running_loop().create_task(self._follow_load())

    async def _warm_up(self) -> None:
        started = time.perf_counter()
        if self.cfg.warmup:
            loop = asyncio.get_running_loop()
            codec = loop.run_in_executor(self.pool, self.codec.start)  # beside the model's warm-up
            await loop.run_in_executor(self.compute, self.service.warm_up)
            await codec
        if self.service.state == "warming":
            self.service.state = "serving"
            await self._set_health(True)
            log.info("serving", extra={"fields": {"event": "serving",
                                                  "warmup_s": round(time.perf_counter() - started, 3)}})

    async def _follow_load(self) -> None:
        """While serving, health says NOT_SERVING whenever a queue is over its threshold (AlaeService.overloaded), so
        that a load balancer sends new calls elsewhere; it says SERVING again once the queues are back under."""
        overloaded = False
        while True:
            await asyncio.sleep(LOAD_CHECK_S)
            if self.service.state != "serving":
                continue
            now = self.service.overloaded()
            if now != overloaded:
                overloaded = now
                self.metrics.overloaded.set(int(now))
                await self._set_health(not now)
                images = self.service.images
                log.log(logging.WARNING if now else logging.INFO, "overloaded" if now else "load back to normal",
                        extra={"fields": {"event": "overloaded" if now else "recovered",
                                          "images_waiting": images.waiting, "pixels_waiting": images.waiting_pixels,
                                          "encode_queued": self.service.encode_batcher.queued,
                                          "decode_queued": self.service.decode_batcher.queued}})

    async def _set_health(self, serving: bool) -> None:
        self.serving = serving
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    @property
    def http_url(self) -> str | None:
        """The editor's address (None without --http-port)."""
        if self.http_port is None:
            return None
        host = self.cfg.host if self.cfg.host not in ("0.0.0.0", "::", "[::]") else "127.0.0.1"
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return f"{'https' if self.cfg.tls_cert else 'http'}://{host}:{self.http_port}/"

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait for the warm-up; it raises what the warm-up raised."""
        await asyncio.wait_for(asyncio.shield(self._warm_task), timeout)

    async def drain(self, grace_s: float | None = None) -> None:
        """Graceful shutdown: health NOT_SERVING, new calls UNAVAILABLE, in-flight calls finish (within grace_s)."""
        if self._server is None or self._stopped.is_set():
            return
        grace = self.cfg.grace_s if grace_s is None else grace_s
        service = self.service
        service.state = "draining"
        self.serving = False
        await self.health.enter_graceful_shutdown()
        log.info("draining", extra={"fields": {"event": "draining", "inflight": service.inflight, "grace_s": grace}})
        try:
            await asyncio.wait_for(service.idle.wait(), grace)
        except asyncio.TimeoutError:
            log.warning("grace period over", extra={"fields": {"event": "grace_over", "cut": service.inflight}})
        await self._shutdown()

    async def stop(self) -> None:
        """Stop now: calls still running are cancelled."""
        if self._server is not None and not self._stopped.is_set():
            self.service.state = "draining"
            self.serving = False
            await self._shutdown()

    async def _shutdown(self) -> None:
        # HTTP calls still running answer 503 (gRPC's, UNAVAILABLE) as their connections close
        if self._http is not None:
            await asyncio.gather(self._server.stop(0), self._http.cut())
            await self._http.stop()
        else:
            await self._server.stop(0)
        for task in (self._warm_task, self._load_task):
            if task is not None and not task.done():
                task.cancel()
        await self.service.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        for pool in (self.compute, self.pool, self.image_pool):
            pool.shutdown(wait=False, cancel_futures=True)
        await asyncio.get_running_loop().run_in_executor(None, self.codec.close)
        self._stopped.set()
        if self.abandoned:
            log.warning("work abandoned", extra={"fields": {"event": "abandoned", "jobs": self.abandoned}})
        if self._warm_task is not None:  # it said "listening" (a start that failed leaves its error alone)
            log.info("stopped", extra={"fields": {"event": "stopped"}})

    @property
    def abandoned(self) -> int:
        """Jobs still running in the server's threads (after a stop: work whose calls were cut)."""
        return sum(pool.running for pool in (self.compute, self.pool, self.image_pool))

    def exit_if_abandoned(self) -> None:
        """After the server stopped (serve_until_signal returned): if cut work still runs in its threads, end the
        process now, with status 0 - the drain is done, and the interpreter's exit would otherwise wait for those
        threads (a batch of large images can take minutes) past --grace-s."""
        if self.abandoned:
            logging.shutdown()  # flush the log
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def serve_until_signal(self) -> None:
        """start(), then run until SIGTERM or SIGINT and drain; a second signal stops at once."""
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        await self.start()
        got = asyncio.Event()

        def on_signal(sig: signal.Signals) -> None:
            if got.is_set():
                log.warning("second signal: stopping now", extra={"fields": {"event": "signal", "signal": sig.name}})
                loop.create_task(self.stop())
            else:
                log.info("signal", extra={"fields": {"event": "signal", "signal": sig.name}})
                got.set()

        for sig in signals:
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            stop_wait = loop.create_task(self._stopped.wait())
            sig_wait = loop.create_task(got.wait())
            await asyncio.wait([self._warm_task, sig_wait], return_when=asyncio.FIRST_COMPLETED)
            if self._warm_task.done() and self._warm_task.exception() is not None:
                await self.stop()
                raise self._warm_task.exception()
            await asyncio.wait([stop_wait, sig_wait], return_when=asyncio.FIRST_COMPLETED)
            if not self._stopped.is_set():
                await self.drain()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)


def _read(path: Path | None, flag: str) -> bytes:
    """A PEM file's bytes, checked to be PEM (gRPC reports a bad one only as a failure to listen)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise AlaeError(f"{path}: cannot read {flag} ({exc.strerror or exc})") from None
    kind = "PRIVATE KEY" if flag == "--tls-key" else "CERTIFICATE"
    if b"-----BEGIN " not in data or kind.encode() not in data:
        raise AlaeError(f"{path}: {flag} is not a PEM {kind.lower()} (-----BEGIN ... {kind}-----)")
    return data
