"""The server's settings (`alae-rt serve` flags), their checks, and the bearer-token file reader."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alae_rt.errors import AlaeError


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
    max_strength: float = 100.0
    max_steps: int = 256
    grace_s: float = 30.0
    metrics_port: int | None = None  # None: no metrics endpoint; 0: any free port
    metrics_host: str = "127.0.0.1"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    auth_tokens: tuple[str, ...] = ()
    workers: int = 2  # threads that decode/encode image files and prepare latents
    warmup: bool = True

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mb * 1024 * 1024)

    def check(self, max_batch: int) -> None:
        if self.max_images < 1 or self.max_queue < 1 or self.max_steps < 2 or self.workers < 1:
            raise AlaeError("--max-images, --max-queue and --workers must be >= 1, --max-steps >= 2")
        if self.max_queue < self.max_images:
            raise AlaeError(f"--max-queue ({self.max_queue}) must be >= --max-images ({self.max_images}), or a "
                            "full-size request could never be queued")
        if self.max_delay_ms < 0 or self.grace_s < 0 or self.max_strength <= 0 or self.max_pixels < 1:
            raise AlaeError("--max-delay-ms and --grace-s must be >= 0; --max-strength and --max-pixels > 0")
        if not 0 < self.max_message_mb <= 2047:
            raise AlaeError(f"--max-message-mb must be in (0, 2047], got {self.max_message_mb}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise AlaeError("TLS needs both --tls-cert and --tls-key")
        if max_batch < 1:
            raise AlaeError("--max-batch must be >= 1")


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
