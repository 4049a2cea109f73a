"""Helpers and fixtures of the serving tests: real servers on 127.0.0.1 (ephemeral ports) on their own event loops.

Test modules import the fixtures they use (a conftest.py here would shadow the suite's own `conftest`)."""

from __future__ import annotations

import asyncio
import io
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from alae_rt import Runtime

pytest.importorskip("grpc", reason="the serve extra is not installed (make setup installs it)")

from alae_rt.serve.config import ServeConfig  # noqa: E402
from alae_rt.serve.server import AlaeServer  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: the suite shares two cores with the server's own threads, and OpenMP spinning on
    an oversubscribed machine makes small models a hundred times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class ServerThread:
    """An AlaeServer on its own event loop in a background thread, so tests can call it with blocking clients
    or with asyncio.run(...) from the test thread."""

    def __init__(self, rt: Runtime, cfg: ServeConfig | None = None, wait_ready: bool = True):
        self.server = AlaeServer(rt, cfg or ServeConfig(port=0))
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-server-loop", daemon=True)
        self._wait_ready = wait_ready

    def call(self, coro, timeout: float = 120):
        """Run a coroutine on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self.call(self.server.start())
        if self._wait_ready:
            self.call(self.server.wait_ready(120))
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.call(self.server.stop(), timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    @property
    def address(self) -> str:
        return self.server.address

    def metric(self, name: str, **labels) -> float:
        return self.server.metrics.registry.get_sample_value(name, labels) or 0.0

    def hold_compute(self) -> threading.Event:
        """Occupy the compute thread until the returned event is set: queues then fill deterministically."""
        return self.hold(self.server.compute, 1)

    def hold_images(self) -> threading.Event:
        """Occupy every image-decoding thread until the returned event is set."""
        return self.hold(self.server.image_pool, self.server.cfg.image_workers)

    @staticmethod
    def hold(pool, threads: int) -> threading.Event:
        gate = threading.Event()
        started = threading.Barrier(threads + 1)

        def wait():
            started.wait(10)
            gate.wait(60)

        for _ in range(threads):
            pool.submit(wait)
        started.wait(10)
        return gate


@pytest.fixture(scope="module")
def tiny_rt() -> Runtime:
    rt = Runtime.from_config("tiny", seed=3, max_batch=4)
    # Fresh models start with zero noise weights, and then the noise would change nothing: give it weight,
    # so that the tests see whether each caller got its own noise.
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in rt.model.named_parameters():
            if "noise_weight" in name:
                p.normal_(0.0, 0.5)
    gen = np.random.default_rng(0)
    rt.load_directions({"up": gen.standard_normal(32).astype(np.float32),
                        "layered": gen.standard_normal((6, 32)).astype(np.float32)})
    return rt


@pytest.fixture(scope="module")
def tiny_server(tiny_rt):
    """One shared server for the read-only tests; metrics assertions use differences."""
    cfg = ServeConfig(port=0, max_delay_ms=20, max_images=16, max_queue=512, metrics_port=0)
    with ServerThread(tiny_rt, cfg) as s:
        yield s


def until(cond, timeout: float = 30) -> None:
    """Wait until cond() holds (a server's state, seen from the test's thread), failing after `timeout` s."""
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "condition not reached"
        time.sleep(0.005)


# ---- inputs and comparisons ---------------------------------------------------------------------------------


def images(n: int, r: int = 16, seed: int = 0) -> np.ndarray:
    """n distinct uint8 images [n, r, r, 3] (smooth, so that they are not all alike to the encoder)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 4, 4, 3)).astype(np.uint8)
    return np.stack([np.array(Image.fromarray(b).resize((r, r), Image.BILINEAR)) for b in base])


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def latents(n: int, d: int = 32, seed: int = 0, styles: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (n, d) if styles is None else (n, styles, d)
    return rng.standard_normal(shape).astype(np.float32)


def same_images(got, ref: np.ndarray) -> None:
    """uint8 images equal up to 1 level: merged batches may round a float the other way."""
    got = np.stack(got).astype(int)
    assert got.shape == ref.shape
    assert np.abs(got - ref.astype(int)).max() <= 1


def u8(rt, x: torch.Tensor) -> np.ndarray:
    return rt.to_uint8(x)


class GenerateLoad:
    """Callers that each call Generate for their own seed in a loop (one client each, made by `client()`) until
    stop(); `done` collects (seed, images), `errors` the first failure of each caller."""

    def __init__(self, client, seeds):
        self.done, self.errors = [], []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(client, s)) for s in seeds]

    def _run(self, client, seed: int) -> None:
        with client() as c:
            while not self._stop.is_set():
                try:
                    self.done.append((seed, c.generate([seed], format="raw").images))
                except Exception as exc:  # noqa: BLE001 - the test reports it
                    self.errors.append(exc)
                    return

    def start(self) -> GenerateLoad:
        for t in self._threads:
            t.start()
        return self

    def wait_for(self, calls: int, timeout: float = 120) -> None:
        """Until `calls` answers in all (or a caller failed)."""
        deadline = time.monotonic() + timeout
        while len(self.done) < calls and not self.errors:
            assert time.monotonic() < deadline, f"{len(self.done)} of {calls} calls answered"
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(120)
