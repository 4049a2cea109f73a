"""Prometheus metrics of the server: requests, latency, batch sizes, queue depth, images per second, image decoding,
overload."""

from __future__ import annotations

import collections
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
RATE_WINDOW_S = 10.0


class Metrics:
    """The server's metrics, in their own registry (several servers can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("alae_rt_requests", "RPCs finished, by method and status code",
                                ["method", "code"], registry=r)
        self.latency = Histogram("alae_rt_request_latency_seconds", "RPC latency from arrival to response",
                                 ["method"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("alae_rt_batch_size", "images per forward pass, by operation (encode/decode)",
                                    ["op"], buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("alae_rt_batch_seconds", "compute time of one batch", ["op"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("alae_rt_queue_depth", "images waiting in the batcher's queue", ["op"], registry=r)
        self.images = Counter("alae_rt_images", "images run through the network, by operation", ["op"], registry=r)
        self.dropped = Counter("alae_rt_dropped_images", "images dropped before compute or before decoding (op "
                               "'image'), as the deadline passed or the caller cancelled", ["op", "reason"],
                               registry=r)
        self.decoded = Counter("alae_rt_decoded_images", "request images decoded and prepared for the encoder",
                               registry=r)
        self.decode_pixels = Gauge("alae_rt_decode_pixels", "request image pixels being decoded (running) or "
                                   "waiting for the decode budget (waiting)", ["state"], registry=r)
        self.overloaded = Gauge("alae_rt_overloaded", "1 while health says NOT_SERVING because a queue is over its "
                                "threshold", registry=r)
        self.inflight = Gauge("alae_rt_inflight_requests", "RPCs being handled", registry=r)
        self.http_connections = Gauge("alae_rt_http_connections", "open HTTP connections (--http-max-connections)",
                                      registry=r)
        self.http_closed = Counter("alae_rt_http_connections_closed", "HTTP connections the server closed: over "
                                   "--http-max-connections, or no request head within --http-header-timeout-s",
                                   ["reason"], registry=r)
        self.log_dropped = Counter("alae_rt_log_lines_dropped", "error log lines not written: over their caller's "
                                   "rate (alae_rt.serve.logs.LineLimit)", registry=r)
        self.images_per_second = Gauge("alae_rt_images_per_second",
                                       f"images run through the network per second over the last {RATE_WINDOW_S:g} s",
                                       ["op"], registry=r)
        self._events: dict[str, collections.deque[tuple[float, int]]] = collections.defaultdict(collections.deque)
        self._lock = threading.Lock()  # the scrape runs in the metrics server's thread

    def observe_batch(self, op: str, size: int, seconds: float) -> None:
        self.batch_size.labels(op).observe(size)
        self.batch_seconds.labels(op).observe(seconds)
        self.images.labels(op).inc(size)
        with self._lock:
            events = self._events[op]
            if not events:
                self.images_per_second.labels(op).set_function(lambda op=op: self._rate(op))
            events.append((time.monotonic(), size))

    def _rate(self, op: str) -> float:
        now = time.monotonic()
        with self._lock:
            events = self._events[op]
            while events and events[0][0] < now - RATE_WINDOW_S:
                events.popleft()
            return sum(n for _, n in events) / RATE_WINDOW_S

    def text(self) -> str:
        """The exposition text (what /metrics serves)."""
        return generate_latest(self.registry).decode()
