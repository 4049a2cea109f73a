"""PNG in worker processes (alae_rt.serve.codec_processes): the same bytes and pixels as alae_rt.codecs in the
calling thread, the same errors, a worker killed mid-job replaced, closing wakes waiting threads; and a real server
that answers PNG in and out through them."""

from __future__ import annotations

import io
import os
import signal
import threading

import numpy as np
import pytest
from PIL import Image

from alae_rt import codecs
from alae_rt.errors import InputError
from alae_rt.serve import codec_processes as cp
from alae_rt.serve.codec_processes import CodecProcesses

pytestmark = pytest.mark.skipif(not cp.AVAILABLE, reason="codec processes need Linux (memfd)")

MAX_PIXELS = 512 * 512


def _image(h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    """A smooth gradient with noise: compressible, as a photo is, and different per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), (x + y) % 256, 255 - x % 256], -1)
    return np.clip(base[:, :, :c] + rng.integers(-8, 9, (h, w, c)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def codec():
    pool = CodecProcesses(2, MAX_PIXELS)
    pool.start()
    yield pool
    pool.close()


@pytest.mark.parametrize("shape", [(96, 128, 3), (64, 64, 4), (1, 1, 3), (300, 200, 3)])
def test_same_png_and_pixels_as_in_the_thread(codec, shape):
    image = _image(*shape, seed=sum(shape))
    png = codec.encode_png(image)
    assert png == codecs.encode_png(image)
    back = codec.decode(png, MAX_PIXELS, "x")
    assert back.dtype == np.uint8 and np.array_equal(back, image)


def test_other_png_flavours_and_formats(codec):
    """Grey, 16-bit and palette PNGs (Pillow's path, in the worker) and a JPEG (in the thread) decode as
    alae_rt.codecs decodes them."""
    files = []
    for arr in [_image(40, 30, 1)[:, :, 0], _image(20, 20, 1)[:, :, 0].astype(np.uint16) * 257]:  # grey, 16-bit
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        files.append(buf.getvalue())
    buf = io.BytesIO()
    Image.fromarray(_image(33, 17, 3)).convert("P").save(buf, format="PNG")
    files += [buf.getvalue(), codecs.encode_jpeg(_image(48, 48, 3))]
    for data in files:
        assert np.array_equal(codec.decode(data, MAX_PIXELS, "f"), codecs.decode_image(data, MAX_PIXELS, "f"))


def test_errors_are_the_codecs_own(codec):
    png = codec.encode_png(_image(64, 64, 3))
    with pytest.raises(InputError, match=r"^req\.images\[2\]\.encoded: corrupt or truncated image"):
        codec.decode(png[: len(png) // 2], MAX_PIXELS, "req.images[2].encoded")
    with pytest.raises(InputError, match=r"^big: 64x64 pixels is over the limit of 1000"):
        codec.decode(png, 1000, "big")
    with pytest.raises(InputError, match="expected a uint8 image"):
        codec.encode_png(np.zeros((4, 4, 2), np.uint8))  # two channels: refused as alae_rt.codecs refuses it
    # still serving after the errors
    assert np.array_equal(codec.decode(png, MAX_PIXELS, "x"), _image(64, 64, 3))


def test_larger_than_the_slot_runs_in_the_thread(codec):
    big = _image(600, 600, 3)  # 360,000 pixels: over MAX_PIXELS, not over the decode limit given
    png = codec.encode_png(big)
    assert np.array_equal(codec.decode(png, 600 * 600, "x"), big)


def test_a_killed_worker_is_replaced():
    pool = CodecProcesses(1, MAX_PIXELS)
    try:
        image = _image(50, 70, 3)
        png = pool.encode_png(image)
        (first,) = pool._workers
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait()
        assert np.array_equal(pool.decode(png, MAX_PIXELS, "x"), image)  # tried again in a new worker
        (second,) = pool._workers
        assert second is not first and second.proc.poll() is None and pool.started == 1
        # a worker that dies on every try: for a decode, the file's fault
        original = cp._Worker.call

        def dying(self, *args, **kwargs):
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            return original(self, *args, **kwargs)

        cp._Worker.call = dying
        try:
            with pytest.raises(InputError, match=r"^f: corrupt image \(the PNG decoder crashed on it, or did not"):
                pool.decode(png, MAX_PIXELS, "f")
        finally:
            cp._Worker.call = original
        assert np.array_equal(pool.decode(png, MAX_PIXELS, "x"), image)
    finally:
        pool.close()
    assert all(w.proc.poll() is not None for w in [first, second])


def test_threads_share_the_workers_and_close_wakes_waiters():
    pool = CodecProcesses(2, MAX_PIXELS)
    images = [_image(80, 80, 3, seed=k) for k in range(12)]
    results: dict[int, bytes] = {}

    def encode(k: int) -> None:
        results[k] = pool.encode_png(images[k])

    threads = [threading.Thread(target=encode, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert pool.started == 2
    assert all(results[k] == codecs.encode_png(images[k]) for k in range(12))
    # every worker busy (taken), then closed: a thread waiting for one is told, not left hanging
    taken = [pool._take(), pool._take()]
    errors = []
    waiter = threading.Thread(target=lambda: errors.append(pytest.raises(RuntimeError, pool.encode_png, images[0])))
    waiter.start()
    pool.close()
    waiter.join(10)
    assert not waiter.is_alive() and "closed" in str(errors[0].value)
    assert all(w.proc.wait(5) is not None for w in taken)


def test_no_processes_means_the_thread():
    pool = CodecProcesses(0, MAX_PIXELS)
    image = _image(30, 40, 3)
    assert pool.encode_png(image) == codecs.encode_png(image)
    assert np.array_equal(pool.decode(pool.encode_png(image), MAX_PIXELS), image)
    assert pool.started == 0


def test_a_worker_stopped_mid_job_exits_quietly(capfd):
    """The server stops while a worker encodes: the worker finds its reply pipe closed and exits, no traceback."""
    pool = CodecProcesses(1, MAX_PIXELS)
    pool.start()
    worker = pool._take()
    image = _image(512, 512, 3)
    worker.pixels[:image.size] = image.reshape(-1)
    cp._write_all(worker.requests, cp.REQUEST.pack(cp.ENCODE, *image.shape, 0, 0, 0))  # no wait for the reply
    worker.close()  # our ends of its pipes, while it works
    assert worker.proc.returncode == 0
    pool.close()
    assert "Traceback" not in capfd.readouterr().err


def test_a_job_past_its_time_has_its_worker_killed():
    """Nothing hangs: a worker that does not answer within job_timeout_s is killed and replaced; two in a row fail
    the call (a decode: the file's fault)."""
    pool = CodecProcesses(1, MAX_PIXELS, job_timeout_s=0.0)  # no job answers within no time
    try:
        image = _image(200, 200, 3)
        with pytest.raises(RuntimeError, match="died twice"):
            pool.encode_png(image)
        with pytest.raises(InputError, match=r"^f: corrupt image \(.*did not finish within 0 s\)"):
            pool.decode(codecs.encode_png(image), MAX_PIXELS, "f")
        assert pool.started == 1 and pool._workers[0].proc.poll() is None  # a fresh one waits
        pool.job_timeout_s = 30.0
        assert np.array_equal(pool.decode(codecs.encode_png(image), MAX_PIXELS, "x"), image)
    finally:
        pool.close()


def test_where_no_process_can_start_the_calls_run_in_their_threads(monkeypatch):
    """A system that refuses subprocesses or memfd: the pool says so in the log and codes in the calling thread; a
    pool whose last worker dies and cannot be replaced does the same, and no waiting thread hangs."""
    image = _image(60, 60, 3)
    png = codecs.encode_png(image)

    def refuse(slot_bytes):
        raise PermissionError("operation not permitted")

    pool = CodecProcesses(2, MAX_PIXELS)
    monkeypatch.setattr(cp._Worker, "start", staticmethod(refuse))
    pool.start()
    assert pool.processes == 0 and pool.started == 0
    assert pool.encode_png(image) == png and np.array_equal(pool.decode(png, MAX_PIXELS), image)
    monkeypatch.undo()

    pool = CodecProcesses(1, MAX_PIXELS)
    try:
        pool.start()
        (worker,) = pool._workers
        monkeypatch.setattr(cp._Worker, "start", staticmethod(refuse))
        os.kill(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait()
        assert np.array_equal(pool.decode(png, MAX_PIXELS, "x"), image)  # in this thread, after the retry failed
        assert pool.processes == 0 and pool.started == 0
        assert pool.encode_png(image) == png
    finally:
        pool.close()


def test_descriptors_past_1024_work():
    """A busy server holds many sockets: the pool's pipes may be numbered past select()'s limit of 1024."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        pytest.skip(f"the open-file limit ({soft}) is too low to test")
    held = []
    try:
        while len(held) < 1100:
            held.append(os.open(os.devnull, os.O_RDONLY))
        pool = CodecProcesses(1, MAX_PIXELS)
        try:
            image = _image(40, 40, 3)
            assert pool.encode_png(image) == codecs.encode_png(image)
            assert pool._workers[0].replies > 1024
        finally:
            pool.close()
    finally:
        for fd in held:
            os.close(fd)


def test_several_images_are_encoded_side_by_side_in_order():
    """A response's PNGs on several workers at once (each as encode_png writes it, in the images' order); one
    image, or one worker, takes the plain path."""
    pool = CodecProcesses(3, MAX_PIXELS)
    try:
        images = [_image(96, 96 + 8 * k, 3, seed=k) for k in range(7)]
        pngs = pool.encode_png_many(images)
        assert [codecs.decode_image(p).tolist() for p in pngs] == [im.tolist() for im in images]
        assert pngs == [pool.encode_png(im) for im in images]
        assert pool.started >= 2 and pool._fanout is not None  # the fan-out took more than one worker
        assert pool.encode_png_many(images[:1]) == pngs[:1] and pool.encode_png_many([]) == []
    finally:
        pool.close()
    assert pool._fanout is None
    single = CodecProcesses(1, MAX_PIXELS)
    try:
        assert single.encode_png_many(images[:2]) == pngs[:2] and single._fanout is None
    finally:
        single.close()
