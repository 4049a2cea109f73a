"""The server's settings (`alae-rt serve` flags), their checks, and the bearer-token file reader."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from alae_rt.errors import AlaeError

HOST_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                       r"[A-Za-z0-9])?)*\.?")
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class ServeConfig:
    """The server's settings; `alae-rt serve --help` explains each. The batch limit is the Runtime's max_batch."""

    host: str = "127.0.0.1"
    port: int = 50051  # 0: any free port (AlaeServer.port tells which)
    max_delay_ms: float = 5.0
    max_queue: int = 256  # images waiting per batcher
    max_images: int = 32  # images, seeds or latents per request
    max_message_mb: float = 64.0
    max_pixels: int = 4096 * 4096  # per input image, checked from its header before decoding
    max_request_pixels: int = 64 * 1024 * 1024  # summed over a request's input images, checked before decoding any
    max_decode_pixels: int = 32 * 1024 * 1024  # input image pixels being decoded at once, over all callers
    max_strength: float = 100.0
    max_steps: int = 256
    grace_s: float = 30.0
    metrics_port: int | None = None  # None: no metrics endpoint; 0: any free port
    metrics_host: str = "127.0.0.1"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    auth_tokens: tuple[str, ...] = ()
    http_port: int | None = None  # None: no HTTP API and editor; 0: any free port (AlaeServer.http_port tells which)
    http_cors_origins: tuple[str, ...] = ()  # origins whose pages may call the HTTP API (none: CORS off)
    # Host names the HTTP API answers to besides localhost and --host (others: 421, against DNS rebinding)
    http_allowed_hosts: tuple[str, ...] = ()
    sample_faces: Path | None = None  # a folder of face images the editor offers
    # Codec work scales with cores (the codecs release the GIL: benchmarks/codecs.py), so both pools default to them.
    workers: int = CORES  # threads that prepare latents and noise and encode output images
    image_workers: int = CORES  # threads that decode input images (their own pool: never in latent-only calls' way)
    # PNG's fast codecs hold the GIL: PNG is encoded and decoded in processes (alae_rt.serve.codec_processes), one
    # per core; on one core a process only adds the hand-off
    codec_processes: int = CORES if CORES > 1 else 0
    warmup: bool = True
    # One of several server processes on one port (alae-rt serve --processes): SO_REUSEPORT on the gRPC and HTTP
    # sockets. Off otherwise, so that a second server on a port in use fails instead of sharing it.
    reuse_port: bool = False
    # Connections that idle, drip or pile up (file descriptors): the HTTP API's, then gRPC's (HTTP/2). A gRPC setting
    # of 0 leaves gRPC's own default (handshake 120 s, keepalive ping every 2 h; idle and age: never).
    http_header_timeout_s: float = 10.0  # a request head must arrive within this of the connection's opening or of
    # the first byte of the request
    http_body_timeout_s: float = 60.0  # a request body must arrive within this once its head has
    http_idle_s: float = 60.0  # an idle keep-alive connection is closed after this
    http_max_connections: int = 1024  # open HTTP connections; one more gets 503 and is closed
    grpc_handshake_timeout_s: float = 10.0  # a connection must finish its TLS and HTTP/2 handshake within this
    grpc_keepalive_s: float = 60.0  # ping a connection idle this long (a dead peer's is closed)
    grpc_keepalive_timeout_s: float = 20.0  # ... if the ping is not answered within this
    grpc_max_connection_idle_s: float = 300.0  # close (GOAWAY) a connection without a call for this long
    grpc_max_connection_age_s: float = 0.0  # close a connection this old (spreads clients over replicas again)
    grpc_max_connection_age_grace_s: float = 30.0  # ... letting its calls in flight finish within this

    @property
    def grpc_options(self) -> list[tuple[str, int]]:
        """The gRPC server options for the connection settings (a 0 leaves gRPC's default)."""
        ms = {"grpc.server_handshake_timeout_ms": self.grpc_handshake_timeout_s,
              "grpc.keepalive_time_ms": self.grpc_keepalive_s,
              "grpc.keepalive_timeout_ms": self.grpc_keepalive_timeout_s,
              "grpc.max_connection_idle_ms": self.grpc_max_connection_idle_s,
              "grpc.max_connection_age_ms": self.grpc_max_connection_age_s,
              "grpc.max_connection_age_grace_ms": self.grpc_max_connection_age_grace_s}
        return [(name, round(s * 1000)) for name, s in ms.items() if s > 0]

    def check_connections(self) -> None:
        timeouts = {"--http-header-timeout-s": self.http_header_timeout_s,
                    "--http-body-timeout-s": self.http_body_timeout_s, "--http-idle-s": self.http_idle_s}
        for flag, value in timeouts.items():
            if not 0 < value <= 86400:
                raise AlaeError(f"{flag} must be in (0, 86400] seconds, got {value:g}")
        if self.http_max_connections < 1:
            raise AlaeError(f"--http-max-connections must be >= 1, got {self.http_max_connections}")
        grpc_settings = {"--grpc-handshake-timeout-s": self.grpc_handshake_timeout_s,
                         "--grpc-keepalive-s": self.grpc_keepalive_s,
                         "--grpc-keepalive-timeout-s": self.grpc_keepalive_timeout_s,
                         "--grpc-max-connection-idle-s": self.grpc_max_connection_idle_s,
                         "--grpc-max-connection-age-s": self.grpc_max_connection_age_s,
                         "--grpc-max-connection-age-grace-s": self.grpc_max_connection_age_grace_s}
        for flag, value in grpc_settings.items():
            if not 0 <= value <= 2**31 / 1000:
                raise AlaeError(f"{flag} must be in [0, {2**31 // 1000}] seconds (0: gRPC's default), got {value:g}")

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mb * 1024 * 1024)

    @property
    def overload_images(self) -> int:
        """Images waiting in a stage (image decoding, encoder, generator) from which health says NOT_SERVING."""
        return max(1, self.max_queue // 2)

    @property
    def overload_pixels(self) -> int:
        """Input pixels waiting to be decoded from which health says NOT_SERVING: two rounds of the decode budget."""
        return 2 * self.max_decode_pixels

    def check(self, max_batch: int) -> None:
        if min(self.max_images, self.max_queue, self.workers, self.image_workers) < 1 or self.max_steps < 2:
            raise AlaeError("--max-images, --max-queue, --workers and --image-workers must be >= 1, --max-steps >= 2")
        if self.codec_processes < 0:
            raise AlaeError(f"--codec-processes must be >= 0 (0: PNG in the worker threads), got "
                            f"{self.codec_processes}")
        if self.max_queue < self.max_images:
            raise AlaeError(f"--max-queue ({self.max_queue}) must be >= --max-images ({self.max_images}), or a "
                            "full-size request could never be queued")
        if self.max_delay_ms < 0 or self.grace_s < 0 or self.max_strength <= 0 or self.max_pixels < 1:
            raise AlaeError("--max-delay-ms and --grace-s must be >= 0; --max-strength and --max-pixels > 0")
        if min(self.max_request_pixels, self.max_decode_pixels) < self.max_pixels:
            raise AlaeError(f"--max-request-pixels ({self.max_request_pixels}) and --max-decode-pixels "
                            f"({self.max_decode_pixels}) must be >= --max-pixels ({self.max_pixels}), or an image "
                            "within the limit could never be decoded")
        if not 0 < self.max_message_mb <= 2047:
            raise AlaeError(f"--max-message-mb must be in (0, 2047], got {self.max_message_mb}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise AlaeError("TLS needs both --tls-cert and --tls-key")
        if max_batch < 1:
            raise AlaeError("--max-batch must be >= 1")
        if self.http_port is not None and (not 0 <= self.http_port <= 65535 or self.http_port == self.port != 0):
            raise AlaeError(f"--http-port must be in 0..65535 and differ from --port, got {self.http_port}")
        for origin in self.http_cors_origins:
            scheme, sep, rest = origin.partition("://")
            if scheme not in ("http", "https") or not sep or not rest or "/" in rest:
                raise AlaeError(f"--http-cors-origin {origin!r}: expected an origin, scheme://host[:port] "
                                "(e.g. https://tools.example.com), without a path")
        for name in self.http_allowed_hosts:
            if not HOST_NAME.fullmatch(name):
                raise AlaeError(f"--http-allowed-hosts {name!r}: expected a host name (e.g. editor.example.com), "
                                "without a scheme, port or path")
        self.check_connections()
        if self.http_port is None and (self.http_cors_origins or self.sample_faces or self.http_allowed_hosts):
            raise AlaeError("--http-cors-origin, --http-allowed-hosts and --sample-faces are for the HTTP API: add "
                            "--http-port")


def read_tokens(path: str | Path) -> tuple[str, ...]:
    """Bearer tokens from a file, one a line (several allow rotation); blank lines and # comments are skipped."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise AlaeError(f"{path}: cannot read the auth token file ({exc.strerror or exc})") from None
    tokens = tuple(t.strip() for t in lines if t.strip() and not t.strip().startswith("#"))
    if not tokens:
        raise AlaeError(f"{path}: the auth token file holds no token")
    if any(len(t) < 16 for t in tokens):
        raise AlaeError(f"{path}: a token is shorter than 16 characters; use a long random one")
    return tokens
