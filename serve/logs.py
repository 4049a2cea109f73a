"""The server's structured logs: JSON lines (or text for a terminal) on stderr, with each record's `fields`."""

from __future__ import annotations

import json
import logging
import time

LOGGER = "alae_rt.serve"
log = logging.getLogger(LOGGER)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, msg and the record's `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                 "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """`time level msg key=value ...` for people reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in getattr(record, "fields", {}).items() if k != "event")
        text = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname.lower():7s} " \
               f"{record.getMessage()} {fields}".rstrip()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(fmt: str = "json", level: str = "info") -> None:
    """Logs of alae_rt.serve to stderr, as JSON lines or text."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger = logging.getLogger(LOGGER)
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False

