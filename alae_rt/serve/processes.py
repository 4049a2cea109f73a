"""`alae-rt serve --processes N`: N server processes on one port, for when one process's event loop is the limit.

Each process is a whole server (`alae-rt serve` with the same options): it loads the model, batches its own
callers, encodes its own responses. They listen on the same port with SO_REUSEPORT, so the kernel spreads
incoming connections over them (a connection stays with one process: a client with one channel uses one).
This parent starts them, writes the port files once every one listens, starts a process again when one dies
(at most RESTARTS times a minute; more means something is wrong with the setup, and the server stops), and on
SIGTERM or SIGINT passes one SIGTERM to each and waits --grace-s for them to drain. A process that dies resets
the connections still waiting in its accept queue (Linux hands them to no other process): clients retry
UNAVAILABLE, as they do for any restart.

Every process uses its own copy of the model (on a GPU: device memory for each) and its own metrics port
(--metrics-port P: process i of N serves on P + i - 1). Their log lines name them ("process": "2/4").
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from alae_rt.errors import AlaeError

log = logging.getLogger("alae_rt.serve")

RESTARTS = 5  # restarts of the processes together within RESTART_WINDOW_S before the server gives up
RESTART_WINDOW_S = 60.0
LISTEN_TIMEOUT_S = 600.0  # a process that has not listened by then (model loading included) counts as failed


def _bind_address(host: str, port: int) -> tuple:
    name = host.strip("[]") or "0.0.0.0"
    return socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]


def refuse_port_in_use(host: str, port: int, what: str = "listen on") -> None:
    """The one-line error for a port that something already listens on (0, any free port, passes): a probe bound as
    the servers bind, with SO_REUSEADDR (a closed server's TIME_WAIT is no owner), and closed at once. A host that
    does not resolve passes too: the listener itself reports it."""
    if not port:
        return
    try:
        family, kind, proto, _, address = _bind_address(host, port)
    except socket.gaierror:
        return
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise AlaeError(f"cannot {what} {host}:{port}: {exc.strerror or exc} (is the port in use?)") from None


@contextlib.contextmanager
def reserved_port(host: str, port: int) -> Iterator[int]:
    """`port`, or for 0 a free port, held by a bound socket with SO_REUSEPORT until the block ends: no other
    program takes it while the server processes start, and they can bind beside it. A port something already
    listens on is refused, even when that is another server's processes (SO_REUSEPORT would let these join
    them)."""
    refuse_port_in_use(host, port)
    family, kind, proto, _, address = _bind_address(host, port)
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        yield sock.getsockname()[1]


class ServerProcesses:
    """The N children and what they need to start again: the command line, each one's port files."""

    def __init__(self, argv: Sequence[str], n: int, folder: Path, module: str = "alae_rt.cli"):
        self.argv, self.n, self.folder, self.module = list(argv), n, folder, module
        self.procs: list[subprocess.Popen | None] = [None] * n
        self.restarts: list[float] = []

    def port_file(self, i: int, which: str) -> Path:
        return self.folder / f"{i}.{which}"

    def command(self, i: int, port: int, http_port: int | None, metrics_port: int | None) -> list[str]:
        # The user's options first; the overrides after them win (argparse keeps an option's last value).
        cmd = [sys.executable, "-m", self.module, *self.argv, "--processes", "1", "--reuse-port",
               "--process-label", f"{i + 1}/{self.n}", "--port", str(port),
               "--port-file", str(self.port_file(i, "port"))]
        if http_port is not None:
            cmd += ["--http-port", str(http_port), "--http-port-file", str(self.port_file(i, "http"))]
        if metrics_port is not None:
            cmd += ["--metrics-port", str(metrics_port + i if metrics_port else 0)]
        return cmd

    def start(self, i: int, cmd: list[str]) -> None:
        for which in ("port", "http"):
            self.port_file(i, which).unlink(missing_ok=True)
        # A session of its own: Ctrl-C reaches this parent only, which passes one SIGTERM on (a second signal
        # would make a child stop without draining).
        self.procs[i] = subprocess.Popen(cmd, start_new_session=True)

    def listening(self, i: int, http: bool) -> bool:
        return self.port_file(i, "port").exists() and (not http or self.port_file(i, "http").exists())

    def signal_all(self, sig: int) -> None:
        for p in self.procs:
            if p is not None and p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(sig)

    def wait_all(self, timeout: float) -> None:
        """Wait for every child to exit; kill those still running after `timeout` seconds."""
        end = time.monotonic() + timeout
        for p in self.procs:
            if p is None:
                continue
            try:
                p.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def serve_processes(argv: Sequence[str], n: int, host: str, port: int, http_port: int | None,
                    metrics_port: int | None, port_file: Path | None, http_port_file: Path | None,
                    grace_s: float, module: str = "alae_rt.cli") -> int:
    """Run `python -m <module> <argv>` (`alae-rt serve ...`, or the simulated model's server) as n processes
    sharing the port(s) until SIGTERM/SIGINT; the exit status."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    written: list[Path] = []
    try:
        with tempfile.TemporaryDirectory(prefix="alae-rt-serve-") as tmp, \
                reserved_port(host, port) as grpc_port, \
                (reserved_port(host, http_port) if http_port is not None else contextlib.nullcontext()) as web_port:
            children = ServerProcesses(argv, n, Path(tmp), module)
            commands = [children.command(i, grpc_port, web_port, metrics_port) for i in range(n)]
            for i in range(n):
                children.start(i, commands[i])
            try:
                code = _until_listening(children, web_port is not None, stop)
                if code is not None:
                    return code
                log.info("listening", extra={"fields": {  # before the port files: whoever reads them finds it
                    "event": "listening", "address": f"{host}:{grpc_port}", "processes": n,
                    "http_port": web_port, "pids": [p.pid for p in children.procs if p is not None]}})
                for path, value in ((port_file, grpc_port), (http_port_file, web_port)):
                    if path is not None and value is not None:
                        path.write_text(f"{value}\n")
                        written.append(path)
                return _supervise(children, commands, stop)
            finally:
                children.signal_all(signal.SIGTERM)
                children.wait_all(grace_s + 5.0)
    finally:
        for path in written:  # a stale port file would send clients to a closed port
            path.unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _until_listening(children: ServerProcesses, http: bool, stop: threading.Event) -> int | None:
    """None once every child listens; else the exit status to end with (a child failed to start, or a signal)."""
    end = time.monotonic() + LISTEN_TIMEOUT_S
    while not all(children.listening(i, http) for i in range(children.n)):
        for i, p in enumerate(children.procs):
            if p is not None and p.poll() is not None:
                # its own error is already on stderr; the others would only repeat it
                print(f"alae-rt: error: server process {i + 1} of {children.n} exited with status {p.returncode} "
                      "before it listened", file=sys.stderr)
                return p.returncode or 1
        if stop.is_set():
            return 0
        if time.monotonic() > end:
            raise AlaeError(f"the server processes did not listen within {LISTEN_TIMEOUT_S:.0f} s")
        time.sleep(0.05)
    return None


def _supervise(children: ServerProcesses, commands: list[list[str]], stop: threading.Event) -> int:
    """Until a signal: a child that exits is started again (the port stays served by the others meanwhile)."""
    while not stop.wait(0.2):
        for i, p in enumerate(children.procs):
            if p is None or p.poll() is None:
                continue
            now = time.monotonic()
            children.restarts = [t for t in children.restarts if now - t < RESTART_WINDOW_S] + [now]
            if len(children.restarts) > RESTARTS:
                log.error("server processes keep exiting: stopping", extra={"fields": {
                    "event": "processes_failing", "restarts": RESTARTS, "window_s": RESTART_WINDOW_S}})
                return 1
            log.error("server process exited: starting it again", extra={"fields": {
                "event": "process_restart", "process": f"{i + 1}/{children.n}", "pid": p.pid,
                "status": p.returncode}})
            children.start(i, commands[i])
    return 0


def exit_with_parent() -> None:
    """In a server process that --processes started: stop (SIGTERM: drain) if the parent disappears, so that a
    parent killed outright leaves no servers behind on the port."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="alae-parent-watch", daemon=True).start()
