"""PNG encoding and decoding in worker processes, so that PNG work scales with cores.

fpng (PNG encode) and pyspng (PNG decode) hold the GIL while they run (benchmarks/codecs.py, "GIL free" column):
in the server's threads, PNG work would be capped at about one core per server process whatever --workers says.
Here each of N processes (`python -m alae_rt.serve.codec_processes`, importing numpy and alae_rt.codecs only) runs
one job at a time for the thread that holds it:

- pixels and files travel through the worker's slot, a shared-memory file (memfd) both sides map, never through a
  pipe or a pickle: the server copies an image's pixels once, into the slot (encode) or out of it (decode), and the
  file once, the other way; the worker's pipes carry only a few bytes a job;
- a worker that dies (a codec crashing on a hostile file), or takes more than `job_timeout_s` over a job (it is
  killed: nothing hangs), is replaced; the job is tried once more in the new one, and a decode that kills two
  workers is that file's fault: InputError, the request's INVALID_ARGUMENT;
- workers start when first needed (or all at once through `start`, the server's warm-up) and stop with `close`.

Linux only (memfd); elsewhere, with 0 processes, or where no process can be started (logged), the same calls run
in the calling thread.
"""

from __future__ import annotations

import os
import queue
import select
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from alae_rt import codecs
from alae_rt.errors import InputError
from alae_rt.serve.logs import log

# A request: op, height, width, channels (encode: the pixels in the slot's pixel region), max pixels, the length of
# the name that follows on the pipe, the length of the file in the slot's file region (decode). A reply: status,
# height, width, channels (decode: the pixels in the pixel region), a length: of the PNG in the file region
# (encode), or of an error's message that follows on the pipe.
REQUEST = struct.Struct("<B3IQIQ")
REPLY = struct.Struct("<B3IQ")
ENCODE, DECODE = 1, 2
OK, INPUT_ERROR, FAILED = 0, 1, 2
# A job that takes longer has its worker killed: a 64-megapixel PNG decodes in about a second.
JOB_TIMEOUT_S = 60.0
AVAILABLE = hasattr(os, "memfd_create")


def _read_exact(fd: int, n: int) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if k == 0:
            raise EOFError("the other side closed the pipe")
        got += k
    return buf


def _readable(fd: int, timeout_s: float) -> bool:
    """Whether `fd` has data (or its end) within `timeout_s`; poll, not select: a busy server's descriptors pass
    select's limit of 1024."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout_s * 1000))))


def _write_all(fd: int, *parts) -> None:
    for part in parts:
        view = memoryview(part).cast("B")
        while view:
            view = view[os.write(fd, view):]


# ---- the worker process ------------------------------------------------------------------------------------------


def _regions(slot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A slot's pixel region and file region: half each (an fpng PNG is at most a little over its pixels' bytes)."""
    half = slot.size // 2
    return slot[:half], slot[half:]


def _serve(requests: int, replies: int, slot_fd: int, slot_bytes: int) -> None:
    import mmap

    pixels, files = _regions(np.frombuffer(mmap.mmap(slot_fd, slot_bytes), dtype=np.uint8))
    while True:
        try:
            op, h, w, c, max_pixels, name_len, data_len = REQUEST.unpack(_read_exact(requests, REQUEST.size))
            name = _read_exact(requests, name_len).decode("utf-8", "replace")
            reply = _job(pixels, files, op, (h, w, c), max_pixels, name, data_len)
            _write_all(replies, *reply)
        except (EOFError, OSError):
            return  # the server closed its ends of the pipes (it is stopping, or gone): stop


def _job(pixels: np.ndarray, files: np.ndarray, op: int, shape: tuple[int, int, int], max_pixels: int, name: str,
         data_len: int) -> tuple[bytes, ...]:
    """One job on the slot -> the reply's parts."""
    try:
        if op == ENCODE:
            h, w, c = shape
            png = codecs.encode_png(pixels[:h * w * c].reshape(h, w, c))
            if len(png) > files.size:
                raise RuntimeError(f"a {len(png)}-byte PNG is larger than the slot's {files.size}")
            files[:len(png)] = np.frombuffer(png, dtype=np.uint8)
            return (REPLY.pack(OK, *shape, len(png)),)
        arr = codecs.decode_image(files[:data_len].tobytes(), max_pixels, name)
        if arr.size > pixels.size:  # cannot happen within max_pixels (the region holds 4 channels of it)
            raise InputError(f"{name}: {arr.shape[0]}x{arr.shape[1]} pixels is over the limit of {max_pixels}")
        pixels[:arr.size] = arr.reshape(-1)
        return (REPLY.pack(OK, *arr.shape, 0),)
    except InputError as exc:
        message = str(exc).encode()
        return REPLY.pack(INPUT_ERROR, 0, 0, 0, len(message)), message
    except Exception as exc:  # noqa: BLE001 - reported to the server, which raises it there
        message = f"{type(exc).__name__}: {exc}".encode()
        return REPLY.pack(FAILED, 0, 0, 0, len(message)), message


# ---- the server's side -----------------------------------------------------------------------------------------


class WorkerDied(Exception):
    """The worker process ended during a job."""


class _Unavailable(Exception):
    """No worker process can run here (none could be started): the call runs in its thread."""


_NO_WORKERS = object()  # in the idle queue: none is left, nor can one start


@dataclass(eq=False)
class _Worker:
    proc: subprocess.Popen
    requests: int  # our end of its request pipe
    replies: int  # our end of its reply pipe
    pixels: np.ndarray  # uint8, the slot's pixel region
    files: np.ndarray  # uint8, the slot's file region

    @classmethod
    def start(cls, slot_bytes: int) -> _Worker:
        import mmap

        slot_fd = os.memfd_create("alae-rt-codec-slot", os.MFD_CLOEXEC)
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        try:
            os.ftruncate(slot_fd, slot_bytes)
            pixels, files = _regions(np.frombuffer(mmap.mmap(slot_fd, slot_bytes), dtype=np.uint8))
            proc = subprocess.Popen(
                [sys.executable, "-m", "alae_rt.serve.codec_processes", str(req_r), str(rep_w), str(slot_fd),
                 str(slot_bytes)],
                pass_fds=(req_r, rep_w, slot_fd), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                start_new_session=True)  # a Ctrl-C in the server's terminal is the server's to handle, not theirs
        except BaseException:
            for fd in (req_w, rep_r):
                os.close(fd)
            raise
        finally:
            for fd in (slot_fd, req_r, rep_w):
                os.close(fd)
        return cls(proc, req_w, rep_r, pixels, files)

    def call(self, op: int, shape: tuple[int, int, int] = (0, 0, 0), max_pixels: int = 0, name: bytes = b"",
             data_len: int = 0, timeout_s: float = JOB_TIMEOUT_S) -> tuple[int, tuple[int, int, int], bytes]:
        """One job (its pixels or file already in the slot) -> (status, shape, the PNG or the error message). A job
        that takes more than `timeout_s` has the worker killed (WorkerDied)."""
        try:
            _write_all(self.requests, REQUEST.pack(op, *shape, max_pixels, len(name), data_len), name)
            if not _readable(self.replies, timeout_s):
                self.proc.kill()
                raise WorkerDied(f"no answer within {timeout_s:g} s")
            status, h, w, c, n = REPLY.unpack(_read_exact(self.replies, REPLY.size))
            if status == OK:
                return status, (h, w, c), self.files[:n].tobytes()
            return status, (h, w, c), bytes(_read_exact(self.replies, n))
        except (OSError, EOFError) as exc:
            raise WorkerDied(str(exc)) from None

    def close(self, wait_s: float = 2.0) -> None:
        for fd in (self.requests, self.replies):
            try:
                os.close(fd)  # the worker reads the end of its requests and exits
            except OSError:
                pass
        try:
            self.proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class CodecProcesses:
    """PNG encode and decode in `processes` worker processes (0, or no memfd: in the calling thread).

    `max_pixels` bounds what a worker's slot holds: a decoded image of at most that many pixels (4 channels), an
    image to encode of at most that many, files of as many bytes; what is larger runs in the calling thread. Memory
    is committed as a slot is first written, up to 8 bytes a pixel per worker. Thread-safe: each call holds one
    worker, waiting for one when all are busy.
    """

    def __init__(self, processes: int, max_pixels: int, job_timeout_s: float = JOB_TIMEOUT_S):
        self.processes = processes if AVAILABLE else 0
        self.job_timeout_s = job_timeout_s
        self.region_bytes = 4 * max_pixels
        self.slot_bytes = 2 * self.region_bytes
        self._idle: queue.SimpleQueue = queue.SimpleQueue()  # idle workers; None: closed; _NO_WORKERS
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        self.jobs = 0  # jobs the workers finished
        self._fanout: ThreadPoolExecutor | None = None  # encode_png_many's threads, made at its first use

    @property
    def started(self) -> int:
        return len(self._workers)

    def start(self) -> None:
        """Start every worker now (the server's warm-up), instead of when first needed."""
        while True:
            with self._lock:
                if self._closed or len(self._workers) >= self.processes:
                    return
                worker = self._spawn()
            if worker is None:
                return
            self._idle.put(worker)

    def _spawn(self) -> _Worker | None:
        """A new worker (the lock held); None where this system cannot start one (no memfd, no subprocesses): the
        pool then keeps the workers it has, and with none the calls run in their threads."""
        try:
            worker = _Worker.start(self.slot_bytes)
        except OSError as exc:
            self.processes = len(self._workers)
            log.warning("codec processes unavailable", extra={"fields": {
                "event": "codec_processes_unavailable", "error": f"{type(exc).__name__}: {exc}",
                "processes": self.processes}})
            return None
        self._workers.append(worker)
        return worker

    def encode_png(self, image: np.ndarray) -> bytes:
        """uint8 [H, W, C] -> PNG bytes, as alae_rt.codecs.encode_png writes them."""
        image = np.asarray(image)
        if not self.processes or image.ndim != 3 or image.dtype != np.uint8 or image.size > self.region_bytes:
            return codecs.encode_png(image)

        def job(worker: _Worker):
            worker.pixels[:image.size].reshape(image.shape)[...] = image  # the one copy of the pixels
            return worker.call(ENCODE, image.shape, timeout_s=self.job_timeout_s)

        try:
            status, _, payload = self._run(job)
        except _Unavailable:
            return codecs.encode_png(image)
        except WorkerDied as exc:
            raise RuntimeError(f"PNG encoding failed: the codec process died twice ({exc})") from None
        if status == OK:
            return payload
        if status == INPUT_ERROR:
            raise InputError(payload.decode())
        raise RuntimeError(f"PNG encoding failed in a codec process: {payload.decode()}")

    def encode_png_many(self, images: Sequence[np.ndarray]) -> list[bytes]:
        """encode_png of each image, in order, on as many workers at once: a response of several PNG images costs
        about one image's time where the workers are free, not the sum. Threads of its own wait on the workers,
        never the caller's pool (whose threads might all be waiting here)."""
        if self.processes < 2 or len(images) < 2:
            return [self.encode_png(image) for image in images]
        with self._lock:
            if self._fanout is None:
                self._fanout = ThreadPoolExecutor(self.processes, thread_name_prefix="png-fanout")
            fanout = self._fanout
        return list(fanout.map(self.encode_png, images))

    def decode(self, data: bytes, max_pixels: int = codecs.DEFAULT_MAX_PIXELS, name: str = "image") -> np.ndarray:
        """Encoded bytes -> uint8 [H, W, C], as alae_rt.codecs.decode_image gives them: PNG in a worker, other
        formats (whose decoders release the GIL) in the calling thread."""
        if (not self.processes or data[:8] != codecs.PNG_SIGNATURE or 4 * max_pixels > self.region_bytes
                or len(data) > self.region_bytes):
            return codecs.decode_image(data, max_pixels, name)
        tag = name.encode()

        def job(worker: _Worker):
            worker.files[:len(data)] = np.frombuffer(data, dtype=np.uint8)
            status, shape, payload = worker.call(DECODE, max_pixels=max_pixels, name=tag, data_len=len(data),
                                                 timeout_s=self.job_timeout_s)
            if status == OK:  # the one copy of the pixels, out of the slot before the worker takes its next job
                return status, worker.pixels[:shape[0] * shape[1] * shape[2]].reshape(shape).copy()
            return status, payload

        try:
            status, result = self._run(job)
        except _Unavailable:
            return codecs.decode_image(data, max_pixels, name)
        except WorkerDied:
            raise InputError(f"{name}: corrupt image (the PNG decoder crashed on it, or did not finish within "
                             f"{self.job_timeout_s:g} s)") from None
        if status == OK:
            return result
        if status == INPUT_ERROR:
            raise InputError(result.decode())
        raise RuntimeError(f"PNG decoding failed in a codec process: {result.decode()}")

    def _run(self, job):
        """Run job(worker) on a worker; a worker that dies is replaced and the job tried once more (WorkerDied
        when the second worker dies too)."""
        for attempt in range(2):
            worker = self._take()
            try:
                result = job(worker)
            except WorkerDied:
                self._replace(worker)
                if attempt:
                    raise
                continue
            self._idle.put(worker)
            self.jobs += 1
            return result
        raise AssertionError("unreachable")

    def _take(self) -> _Worker:
        try:
            worker = self._idle.get_nowait()
        except queue.Empty:
            with self._lock:
                if not self._closed and len(self._workers) < self.processes:
                    worker = self._spawn()
                    if worker is not None:
                        return worker
                if not self._workers and not self._closed:
                    raise _Unavailable from None
            worker = self._idle.get()
        if worker is None:  # closed: pass the word on to the next waiting thread
            self._idle.put(None)
            raise RuntimeError("the codec processes are closed (the server is stopping)")
        if worker is _NO_WORKERS:
            self._idle.put(_NO_WORKERS)
            raise _Unavailable
        return worker

    def _replace(self, dead: _Worker) -> None:
        dead.close(wait_s=0.5)
        with self._lock:
            if dead in self._workers:
                self._workers.remove(dead)
            if self._closed:
                return
            worker = self._spawn()
            if worker is None and not self._workers:
                worker = _NO_WORKERS  # wakes the threads waiting for a worker: their calls run in their threads
        if worker is not None:
            self._idle.put(worker)

    def close(self) -> None:
        """Stop the workers (a job still running in one fails: the server is stopping)."""
        with self._lock:
            self._closed = True
            workers, self._workers = self._workers, []
            fanout, self._fanout = self._fanout, None
        self._idle.put(None)  # wakes a thread waiting for a worker
        for worker in workers:
            worker.close()
        if fanout is not None:
            fanout.shutdown(wait=False, cancel_futures=True)


def main(argv: list[str]) -> int:
    requests, replies, slot_fd, slot_bytes = map(int, argv)
    _serve(requests, replies, slot_fd, slot_bytes)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
