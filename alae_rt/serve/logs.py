"""The server's structured logs: JSON lines (or text for a terminal) on stderr, with each record's `fields`."""

from __future__ import annotations

import collections
import json
import logging
import time
from collections.abc import Hashable
from typing import Any

LOGGER = "alae_rt.serve"
log = logging.getLogger(LOGGER)
# A field's text is cut to this many characters (with the length): a line's size is bounded whatever a caller sent.
FIELD_CHARS = 1000
# Error lines (refused calls) per caller: a burst of this many, then this many a second; the rest are dropped and
# counted (alae_rt_log_lines_dropped_total), and the caller's next line says how many.
ERROR_BURST = 100
ERROR_LINES_PER_S = 1.0
MAX_TRACKED_CALLERS = 4096  # the limiter forgets the callers idle longest beyond this many


def bounded(value: Any, limit: int = FIELD_CHARS) -> Any:
    """A log field's value with its text cut to `limit` characters (an ellipsis and the length say so)."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]}... ({len(value)} characters)"
    return value


class LineLimit:
    """A token bucket per caller: whether a caller's next error line is written, and how many of its lines were
    dropped since the last one written. Bounded memory: at most `max_callers` callers are tracked."""

    def __init__(self, burst: int = ERROR_BURST, per_s: float = ERROR_LINES_PER_S,
                 max_callers: int = MAX_TRACKED_CALLERS, clock=time.monotonic):
        self.burst = burst
        self.per_s = per_s
        self.max_callers = max_callers
        self.clock = clock
        # caller -> [tokens, when last filled, lines dropped since the last written], the most recent caller last
        self._buckets: collections.OrderedDict[Hashable, list[float]] = collections.OrderedDict()

    def take(self, caller: Hashable) -> tuple[bool, int]:
        """(write the line?, lines of this caller dropped before it: 0 unless written)."""
        now = self.clock()
        bucket = self._buckets.pop(caller, None) or [float(self.burst), now, 0]
        self._buckets[caller] = bucket
        while len(self._buckets) > self.max_callers:
            self._buckets.popitem(last=False)
        bucket[0] = min(float(self.burst), bucket[0] + (now - bucket[1]) * self.per_s)
        bucket[1] = now
        if bucket[0] < 1:
            bucket[2] += 1
            return False, 0
        bucket[0] -= 1
        dropped, bucket[2] = int(bucket[2]), 0
        return True, dropped


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, msg (and process, for one of several server processes) and the record's
    `fields`."""

    def __init__(self, process: str | None = None):
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                 "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        if self.process:
            entry["process"] = self.process
        entry["msg"] = bounded(entry["msg"])
        entry.update({k: bounded(v) for k, v in getattr(record, "fields", {}).items()})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """`time level [process] msg key=value ...` for people reading a terminal."""

    def __init__(self, process: str | None = None):
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={bounded(v)}" for k, v in getattr(record, "fields", {}).items() if k != "event")
        process = f"[{self.process}] " if self.process else ""
        text = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname.lower():7s} " \
               f"{process}{record.getMessage()} {fields}".rstrip()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(fmt: str = "json", level: str = "info", process: str | None = None) -> None:
    """Logs of alae_rt.serve to stderr, as JSON lines or text; `process` ("2/4") names one of several server
    processes in each line."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(process) if fmt == "json" else TextFormatter(process))
    logger = logging.getLogger(LOGGER)
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False

