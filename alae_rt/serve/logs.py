"""The server's structured logs: JSON lines (or text for a terminal) on stderr, with each record's `fields`."""

from __future__ import annotations

import json
import logging
import time

LOGGER = "alae_rt.serve"
log = logging.getLogger(LOGGER)


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
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """`time level [process] msg key=value ...` for people reading a terminal."""

    def __init__(self, process: str | None = None):
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in getattr(record, "fields", {}).items() if k != "event")
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

