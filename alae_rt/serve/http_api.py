"""The HTTP API and the face editor's page, on the gRPC server's event loop (aiohttp).

The API mirrors the RPCs: POST /api/v1/<rpc> takes the request message in the proto3 JSON mapping (field names as
in the .proto, bytes as base64, enums by name) and answers the response message the same way. Every call goes
through the same AlaeService as gRPC - its batchers, limits, metrics, logs and error messages - with a CallContext
for a transport; only the status code is this module's (wire.HTTP_STATUS). The page (alae_rt/serve/editor) is
static files shipped in the package, served from memory; no endpoint reads a path the caller names.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import re
import socket
import ssl
import weakref
from collections.abc import Callable
from importlib import resources
from pathlib import Path, PurePath
from typing import Any

import grpc
from aiohttp import web, web_protocol
from aiohttp.http_exceptions import BadHttpMethod, InvalidHeader, InvalidURLError, LineTooLong
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from alae_rt.codecs import DEFAULT_MAX_PIXELS, JPEG_SIGNATURE, PNG_SIGNATURE, decode_image
from alae_rt.errors import AlaeError, InputError
from alae_rt.serve import alae_rt_pb2 as pb
from alae_rt.serve.auth import BearerAuth
from alae_rt.serve.logs import log
from alae_rt.serve.requests import BadMessage
from alae_rt.serve.service import AlaeService, CallContext
from alae_rt.serve.wire import HTTP_STATUS, RequestError, invalid, over_limit, quote

API = "/api/v1"
OPENAPI = "/api/openapi.json"
# The RPCs by their path under API; bodies of the first two may also be one image file (Content-Type: image/...).
RPCS = {"encode": "Encode", "reconstruct": "Reconstruct", "decode": "Decode", "generate": "Generate", "edit": "Edit",
        "mix": "Mix", "interpolate": "Interpolate"}
IMAGE_BODY = ("Encode", "Reconstruct")
ACCEPT_IMAGE = {"image/png": pb.IMAGE_FORMAT_PNG, "image/jpeg": pb.IMAGE_FORMAT_JPEG}
TIMEOUT_HEADER = "X-Timeout-Ms"  # the call's deadline, as gRPC's timeout: queued work past it is dropped (504)
PAGE = {"/": ("index.html", "text/html"), "/editor.js": ("editor.js", "text/javascript"),
        "/editor.css": ("editor.css", "text/css")}
SAMPLE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
# What a sample's bytes are (its Content-Type), by their signature: a name can say anything.
SAMPLE_SIGNATURES = ((re.escape(PNG_SIGNATURE), "image/png"), (re.escape(JPEG_SIGNATURE), "image/jpeg"),
                     (b"RIFF....WEBP", "image/webp"))
MAX_SAMPLES = 64
# The editor's faces without --sample-faces: a few made by the bundled model (their README says how; Apache-2.0).
BUNDLED_SAMPLES = resources.files("alae_rt.serve") / "editor" / "samples"
# The page loads nothing from another site, and no other site may frame it.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
SHUTDOWN_S = 1.0  # on stop, calls still running get this long before they are cancelled (drain has waited already)
# Names every server answers to besides its --host and --http-allowed-hosts: a browser reaches it through these
# without DNS, so no other site's name can be rebound to it.
LOCAL_NAMES = frozenset({"localhost"})
WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")  # --host values that listen on every address of the machine
HSTS = "max-age=31536000"  # HTTPS responses: a browser that saw one never calls this name over plain HTTP
# aiohttp's own parser errors, told without the bytes that caused them (its text echoes them)
PARSER_ERRORS = ((LineTooLong, "a request line or header is over the server's limit"),
                 (BadHttpMethod, "not an HTTP method this server knows"),
                 (InvalidURLError, "the request target is not a path"), (InvalidHeader, "a malformed header"))
# What a connection over --http-max-connections gets before it is closed.
REFUSED = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\nRetry-After: 1\r\n\r\n"


def read_samples(folder: str | Path | None, max_bytes: int,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, tuple[bytes, str]]:
    """The editor's sample faces: the image files of a folder (the first MAX_SAMPLES by name; None: the faces
    bundled with the package), read and decoded once at start; callers name a sample by its file name, never by a
    path. A file that is not a PNG, JPEG or WebP image the editor can open is skipped with a warning in the log, and
    each is served as the type its bytes say, whatever its name says."""
    folder = BUNDLED_SAMPLES if folder is None else Path(folder)
    if not folder.is_dir():
        raise AlaeError(f"{folder}: no such folder (--sample-faces)")
    files = sorted((p for p in folder.iterdir() if PurePath(p.name).suffix.lower() in SAMPLE_TYPES and p.is_file()),
                   key=lambda p: p.name)[:MAX_SAMPLES]
    samples = {}
    for p in files:
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise AlaeError(f"{p}: cannot read a sample face ({exc.strerror or exc})") from None
        if len(data) > max_bytes:
            raise AlaeError(f"{p}: {len(data)} bytes, over --max-message-mb; the editor could not send it back")
        kind = next((kind for signature, kind in SAMPLE_SIGNATURES if re.match(signature, data, re.DOTALL)), None)
        try:
            if kind is None:
                raise InputError(f"{p}: not a PNG, JPEG or WebP image")
            # Every pixel, once: a file that passes opens in the editor (its header alone may hide a truncated body).
            decode_image(data, max_pixels, str(p))
        except InputError as err:
            log.warning(f"sample face skipped: {err}", extra={"fields": {"event": "sample_skipped", "file": p.name}})
            continue
        samples[p.name] = (data, kind)
    if not samples:
        raise AlaeError(f"{folder}: holds no readable .png, .jpg or .webp image (--sample-faces)")
    return samples


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise AlaeError(f"cannot load --tls-cert {cert} / --tls-key {key} for HTTPS ({exc})") from None
    return ctx


class HttpApi:
    """The HTTP front end of one AlaeService: start(host, port) listens, stop() closes."""

    def __init__(self, service: AlaeService, auth: BearerAuth | None, health: Callable[[], str],
                 cors_origins: tuple[str, ...] = (), samples: dict[str, tuple[bytes, str]] | None = None):
        self.service = service
        self.cfg = service.cfg
        self.auth = auth
        self.host_allowed = host_check(self.cfg.host, self.cfg.http_allowed_hosts)
        self.health = health  # "SERVING" or "NOT_SERVING", as gRPC health says
        self.cors_origins = frozenset(cors_origins)
        self.samples = samples or {}
        folder = resources.files("alae_rt.serve") / "editor"
        self.page = {path: (folder.joinpath(name).read_bytes(), kind) for path, (name, kind) in PAGE.items()}
        self.openapi = json.dumps(openapi_description(), indent=1).encode()
        self._runner: web.AppRunner | None = None
        self._running: set[asyncio.Task] = set()  # the requests being handled (_cuttable)
        self._cut: set[asyncio.Task] = set()  # those that cut() cancelled: they answer 503

    def app(self) -> web.Application:
        # The body limit is the gRPC message limit; a declared length over it is refused before reading (_body).
        app = web.Application(middlewares=[self._guard, self._check_host, self._cuttable],
                              client_max_size=self.cfg.max_message_bytes)
        r = app.router
        for path in PAGE:
            r.add_get(path, self._page)
        r.add_get(OPENAPI, self._openapi)
        r.add_get(f"{API}/health", self._health)
        r.add_get(f"{API}/info", self._info)
        r.add_get(f"{API}/samples", self._sample_list)
        r.add_get(API + "/samples/{name}", self._sample)
        r.add_post(API + "/{rpc}", self._rpc)
        r.add_get(API + "/{rpc}", self._get_rpc)  # else aiohttp answers 405 for any path, since POST matches it
        r.add_route("OPTIONS", "/api/{tail:.*}", self._preflight)
        return app

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None,
                    reuse_port: bool = False) -> int:
        """Listen on host:port (0: any free port; reuse_port: shared with other server processes); returns the
        port."""
        # handler_cancellation: a caller who hangs up (the page cancels a stale slider request) cancels its call,
        # and the batchers drop its work, as gRPC's cancellation does.
        self._runner = GuardedRunner(self.app(), self.cfg, self.service.metrics, handler_cancellation=True,
                                     access_log=None, shutdown_timeout=SHUTDOWN_S,
                                     keepalive_timeout=self.cfg.http_idle_s)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context, reuse_port=reuse_port or None)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise AlaeError(f"cannot serve HTTP on {host}:{port}: {exc.strerror or exc} (is the port in use?)") \
                from None
        return self._runner.addresses[0][1]

    async def cut(self) -> None:
        """End the calls in flight (the grace period is over): each answers 503 (_cuttable), and is written before
        stop() closes its connection - not a connection dropped mid-call."""
        tasks = list(self._running)
        self._cut.update(tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=SHUTDOWN_S)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- around every request: JSON errors (never a traceback), CORS, headers ----------------------------------
    @web.middleware
    async def _guard(self, request: web.Request, handler) -> web.StreamResponse:
        guard = self._runner.guard if self._runner is not None else None
        if guard is not None:
            guard.request_started(request.transport)
        closing = False
        try:
            resp = await handler(request)
        except RequestError as err:
            resp = error_response(err)
            closing = isinstance(err, BodyTimeout)
        except web.HTTPException as exc:  # aiohttp's own: no such path or method, a body over client_max_size
            message = exc.reason if exc.status != 413 else (
                f"request: over this server's {self.cfg.max_message_mb:g} MiB (--max-message-mb)")
            resp = web.json_response({"code": http_error_code(exc.status, exc.reason), "message": message},
                                     status=exc.status)
            if exc.status == 405:
                resp.headers["Allow"] = exc.headers.get("Allow", "")
        except Exception as exc:  # noqa: BLE001 - the service answers its own errors; this is the rest
            log.error("internal error (HTTP)", exc_info=exc, extra={"fields": {"event": "internal_error"}})
            resp = error_response(RequestError(grpc.StatusCode.INTERNAL, "internal error; the server log has the "
                                                                         "details"))
        origin = request.headers.get("Origin")
        if origin and origin in self.cors_origins:
            resp.headers["Access-Control-Allow-Origin"] = origin
            resp.headers["Vary"] = "Origin"
        resp.headers["X-Content-Type-Options"] = "nosniff"
        if request.secure:
            resp.headers["Strict-Transport-Security"] = HSTS
        if guard is not None:
            guard.request_done(request.transport)
        if closing and request.transport is not None:
            # The rest of the body was never read: answer, then close now (aiohttp would read on for 10 s).
            await resp.prepare(request)
            await resp.write_eof()
            request.transport.close()
        return resp

    @web.middleware
    async def _cuttable(self, request: web.Request, handler) -> web.StreamResponse:
        """A request cancelled by cut() answers UNAVAILABLE (503); any other cancellation (the caller hung up) goes
        on as cancellation."""
        task = asyncio.current_task()
        self._running.add(task)
        try:
            return await handler(request)
        except asyncio.CancelledError:
            if task not in self._cut:
                raise
            if hasattr(task, "uncancel"):  # Python 3.11+ counts cancellations: this one is answered (3.10 does not)
                task.uncancel()
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down: the call was cut at the "
                               "end of its grace period (--grace-s); retry") from None
        finally:
            self._running.discard(task)
            self._cut.discard(task)

    @web.middleware
    async def _check_host(self, request: web.Request, handler) -> web.StreamResponse:
        """DNS rebinding: a page of another site whose name the attacker points at this machine would call the API
        as same-origin (auth off, CORS no help). Its Host header carries that name: only this server's own names
        and addresses pass, on every path but health (load balancers probe by any name)."""
        host = request.headers.get("Host")  # none: HTTP/1.0, which no browser sends
        if host is None or request.path == f"{API}/health" or self.host_allowed(host):
            return await handler(request)
        log.warning("host refused", extra={"fields": {"event": "host_refused", "host": host[:200],
                                                      "path": request.path[:200]}})
        raise RequestError(grpc.StatusCode.PERMISSION_DENIED, "the Host header names neither this server's address "
                           "nor localhost; start the server with --http-allowed-hosts NAME to serve a name",
                           http=421)

    async def _preflight(self, request: web.Request) -> web.Response:
        origin = request.headers.get("Origin", "")
        if origin not in self.cors_origins:
            raise RequestError(grpc.StatusCode.PERMISSION_DENIED, f"origin {quote(origin) if origin else '(none)'} may "
                               "not call this server from a browser (--http-cors-origin names the origins that may)",
                               http=403)
        return web.Response(status=204, headers={
            "Access-Control-Allow-Methods": "GET, POST", "Access-Control-Max-Age": "600",
            "Access-Control-Allow-Headers": f"Authorization, Content-Type, {TIMEOUT_HEADER}"})

    def _authorize(self, request: web.Request, method: str) -> None:
        if self.auth is None or self.auth.accepts(request.headers.get("Authorization", "")):
            return
        self.service.metrics.requests.labels(method, "UNAUTHENTICATED").inc()
        raise RequestError(grpc.StatusCode.UNAUTHENTICATED,
                           "missing or invalid bearer token (send the header 'Authorization: Bearer <token>')")

    @staticmethod
    def _context(request: web.Request) -> CallContext:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        caller = "unknown" if not peer else (f"ipv6:[{peer[0]}]:{peer[1]}" if ":" in peer[0] else
                                             f"ipv4:{peer[0]}:{peer[1]}")
        value = request.headers.get(TIMEOUT_HEADER)
        authorization = request.headers.get("Authorization", "")
        if value is None:
            return CallContext(caller, authorization=authorization)
        try:
            ms = float(value)
        except ValueError:
            ms = float("nan")
        if not 0 < ms < 1e9:
            raise invalid(TIMEOUT_HEADER, f"{quote(value)}; expected milliseconds > 0")
        return CallContext(caller, ms / 1000, authorization=authorization)

    # ---- the RPCs ------------------------------------------------------------------------------------------
    async def _get_rpc(self, request: web.Request) -> web.Response:
        """GET of a call (they take a POST body) or of no such path: say which."""
        if request.match_info["rpc"] in RPCS:
            raise RequestError(grpc.StatusCode.UNIMPLEMENTED,
                               f"{quote(request.path, marks=False)} takes a POST with a JSON body", http=405)
        raise self._no_such_call(request)

    @staticmethod
    def _no_such_call(request: web.Request) -> RequestError:
        return RequestError(grpc.StatusCode.NOT_FOUND, f"no such call {quote(request.path, marks=False)}; the calls "
                            f"are {', '.join(f'{API}/{p}' for p in RPCS)}")

    async def _rpc(self, request: web.Request) -> web.Response:
        method = RPCS.get(request.match_info["rpc"])
        if method is None:
            raise self._no_such_call(request)
        self._authorize(request, method)
        ctx = self._context(request)
        req = await self._body(request, method)
        accept = next((kind for kind in ACCEPT_IMAGE if kind in request.headers.get("Accept", "")), None)
        if accept and not isinstance(req, BadMessage):
            if method == "Encode":
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "Accept: Encode answers latents, not an "
                                   "image; ask for application/json", http=406)
            req.output.format = ACCEPT_IMAGE[accept]
            req.output.skip_images = False
        call = getattr(self.service, method)

        async def answer():
            if method == "Interpolate":  # a stream over gRPC; here all frames in one answer
                return None, [frame async for frame in call(req, ctx)]
            return await call(req, ctx), None

        try:
            # At the deadline the call is cancelled, as gRPC cancels it: work still queued is dropped.
            resp, frames = await asyncio.wait_for(answer(), ctx.timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, f"{TIMEOUT_HEADER}: the deadline "
                               f"({ctx.timeout_s * 1000:g} ms) passed before the call finished") from None
        if accept:
            images = resp.images if frames is None else frames[0].images
            # One image answers: the first (of the first frame); send one source to get exactly that one.
            return web.Response(body=images[0].encoded, content_type=accept)
        loop = asyncio.get_running_loop()
        body = await loop.run_in_executor(self.service.pool, functools.partial(to_json, resp, frames))
        return web.Response(body=body, content_type="application/json")

    async def _body(self, request: web.Request, method: str) -> Any:
        """The request message: one image file (Encode, Reconstruct), or JSON; JSON that is not a valid message
        becomes a BadMessage, which the service refuses (counted and logged as gRPC's are)."""
        message = getattr(pb, pb.DESCRIPTOR.services_by_name["Alae"].methods_by_name[method].input_type.name)
        limit = self.cfg.max_message_bytes
        if request.content_length is not None and request.content_length > limit:
            raise over_limit("request", f"{request.content_length} bytes, over this server's "
                                        f"{self.cfg.max_message_mb:g} MiB (--max-message-mb)")
        body = await self._read_body(request)
        kind = request.content_type
        if kind.startswith("image/") or kind == "application/octet-stream":
            if method not in IMAGE_BODY:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"Content-Type: {quote(kind)}: {method} takes "
                                   "JSON; an image file as the body is for encode and reconstruct", http=415)
            return message(images=[pb.Image(encoded=body)])
        if kind not in ("application/json", "application/octet-stream", ""):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Content-Type: {quote(kind)}: expected application/json", http=415)
        try:
            return json_format.Parse(body or b"{}", message())
        except Exception as exc:  # noqa: BLE001 - ParseError, and RecursionError for deeply nested JSON
            return BadMessage(f"{message.DESCRIPTOR.full_name} JSON", exc)

    async def _read_body(self, request: web.Request) -> bytes:
        """The body, within --http-body-timeout-s: a client dripping its body holds no handler (or memory) for
        longer; the connection is closed after the answer (408), since the rest of the body was never read."""
        try:
            return await asyncio.wait_for(request.read(), self.cfg.http_body_timeout_s)
        except asyncio.TimeoutError:
            raise BodyTimeout(grpc.StatusCode.DEADLINE_EXCEEDED, f"request: the body did not arrive within "
                              f"{self.cfg.http_body_timeout_s:g} s (--http-body-timeout-s)", http=408) from None

    # ---- what the page needs besides the RPCs ----------------------------------------------------------------
    async def _info(self, request: web.Request) -> web.Response:
        self._authorize(request, "GetModelInfo")
        info = await self.service.GetModelInfo(pb.GetModelInfoRequest(), self._context(request))
        return web.Response(body=to_json(info), content_type="application/json")

    async def _health(self, request: web.Request) -> web.Response:
        status = self.health()
        return web.json_response({"status": status}, status=200 if status == "SERVING" else 503)

    async def _sample_list(self, request: web.Request) -> web.Response:
        self._authorize(request, "Samples")
        return web.json_response({"samples": sorted(self.samples)})

    async def _sample(self, request: web.Request) -> web.Response:
        self._authorize(request, "Samples")
        name = request.match_info["name"]
        if name not in self.samples:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"name: no sample face {quote(name)}; see {API}/samples")
        data, kind = self.samples[name]
        return web.Response(body=data, content_type=kind)

    async def _page(self, request: web.Request) -> web.Response:
        data, kind = self.page[request.path]
        return web.Response(body=data, content_type=kind, charset="utf-8", headers={
            "Content-Security-Policy": CSP, "Cache-Control": "no-cache", "Referrer-Policy": "no-referrer"})

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self.openapi, content_type="application/json")


def error_response(err: RequestError) -> web.Response:
    headers = {}
    if err.http == 401:
        headers["WWW-Authenticate"] = "Bearer"
    elif err.http == 429:
        headers["Retry-After"] = "1"
    elif err.http == 405:  # only the calls' paths say 405 themselves (_get_rpc); aiohttp's come with their Allow
        headers["Allow"] = "POST, OPTIONS"
    resp = web.json_response({"code": err.code.name, "message": err.message}, status=err.http, headers=headers)
    if isinstance(err, BodyTimeout):
        resp.force_close()  # says Connection: close
    return resp


class BodyTimeout(RequestError):
    """A request whose body did not arrive in time (--http-body-timeout-s): its connection closes after the answer."""


# ---- connections: how many, and how long one may take to send a request ----------------------------------------


class GuardedRunner(web.AppRunner):
    """aiohttp's AppRunner whose server (the sites' protocol factory) is behind a ConnectionGuard."""

    def __init__(self, app: web.Application, cfg: Any, metrics: Any, **kwargs: Any):
        super().__init__(app, **kwargs)
        self._limits = (cfg.http_header_timeout_s, cfg.http_max_connections, metrics)
        self.guard: ConnectionGuard | None = None

    async def _make_server(self) -> Any:
        server = await super()._make_server()
        # aiohttp's Server makes one RequestHandler per connection and takes no class for it: this one answers the
        # parser's own errors in JSON (_JsonErrorsHandler)
        server.__class__ = _JsonErrorsServer
        self.guard = ConnectionGuard(server, *self._limits)
        return self.guard


class ConnectionGuard:
    """aiohttp's web.Server (a protocol factory) behind limits: at most `max_connections` open - one more gets a
    503 and is closed - and a request head must arrive within `header_s` of a connection's opening, or of the first
    byte of its next request: a socket that sends nothing, or drips its headers, is closed then. (Between requests
    aiohttp's keep-alive timer, --http-idle-s, closes a connection that sends nothing.) Everything else is the
    server's."""

    def __init__(self, server: Any, header_s: float, max_connections: int, metrics: Any):
        self.server = server
        self.header_s = header_s
        self.max_connections = max_connections
        self.metrics = metrics
        self.open: dict[Any, _Watched] = {}  # transport -> its connection
        # accepted, not yet connected (connection_made comes a loop turn later, or after the TLS handshake; one that
        # fails its handshake never connects, and is forgotten with its protocol)
        self.accepted: weakref.WeakSet[_Watched] = weakref.WeakSet()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.server, name)

    def __call__(self) -> asyncio.Protocol:
        if len(self.open) + len(self.accepted) >= self.max_connections:
            self.metrics.http_closed.labels("max_connections").inc()
            return _Refused()
        conn = _Watched(self, self.server())
        self.accepted.add(conn)
        return conn

    def request_started(self, transport: Any) -> None:
        conn = self.open.get(transport)
        if conn is not None:
            conn.head_arrived()

    def request_done(self, transport: Any) -> None:
        conn = self.open.get(transport)
        if conn is not None:
            conn.idle = True


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(REFUSED)
        transport.close()


class _Watched(asyncio.Protocol):
    """One connection: aiohttp's protocol, with a deadline for each request head."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol):
        self.guard = guard
        self.inner = inner
        self.transport: Any = None
        self.timer: asyncio.TimerHandle | None = None
        self.idle = False  # between requests: the next byte starts a request head

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.guard.accepted.discard(self)
        self.guard.open[transport] = self
        self.guard.metrics.http_connections.set(len(self.guard.open))
        self._arm()
        self.inner.connection_made(transport)

    def _arm(self) -> None:
        self.timer = asyncio.get_running_loop().call_later(self.guard.header_s, self._expired)

    def _expired(self) -> None:
        self.timer = None
        self.guard.metrics.http_closed.labels("header_timeout").inc()
        self.transport.close()

    def head_arrived(self) -> None:
        self.idle = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def data_received(self, data: bytes) -> None:
        if self.idle:
            self.idle = False
            self._arm()
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.guard.open.pop(self.transport, None)
        self.guard.metrics.http_connections.set(len(self.guard.open))
        self.inner.connection_lost(exc)


def http_error_code(status: int, reason: str) -> str:
    """The error's "code" for an HTTP status that aiohttp answers itself: the gRPC code the API's own errors of that
    status carry (413: RESOURCE_EXHAUSTED, as a Content-Length over the limit says), else the status's reason."""
    codes = {status: code.name for code, status in HTTP_STATUS.items()}
    codes[405] = grpc.StatusCode.UNIMPLEMENTED.name
    return codes.get(status) or reason.upper().replace(" ", "_")


def host_check(listen: str, allowed: tuple[str, ...]) -> Callable[[str], bool]:
    """Whether a Host header (name or address, with or without a port) names this server: localhost, a name of
    --http-allowed-hosts, or the --host address (listening on every address: any address literal, and this
    machine's host name; a name can be rebound to this machine, an address cannot)."""
    names = LOCAL_NAMES | {name.lower().rstrip(".") for name in allowed}
    listen = listen.strip("[]").lower()
    wildcard = listen in WILDCARD_HOSTS
    if wildcard:
        names |= {socket.gethostname().lower()}
    try:
        own = ipaddress.ip_address(listen)
    except ValueError:
        own = None
        if not wildcard:
            names |= {listen}  # --host given as a name
    if listen == "localhost":
        own = "loopback"

    def allowed_host(header: str) -> bool:
        name = header.strip().lower()
        if name.startswith("["):  # [v6]:port
            name = name[1:name.find("]")] if "]" in name else name
        elif name.count(":") == 1:
            name = name.partition(":")[0]
        name = name.rstrip(".")
        if name in names:
            return True
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return False
        return wildcard or address == own or (own == "loopback" and address.is_loopback)

    return allowed_host


class _JsonErrorsHandler(web_protocol.RequestHandler):
    """aiohttp's connection handler, answering a request its parser refuses (a bad method, a 10 KB URL, `GET *`)
    as the API's errors are: JSON that does not echo the request, nosniff, one log line (aiohttp's own writes the
    request's bytes as text/plain, and a traceback to the log)."""

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:  # the answer has begun: the connection can only be dropped
            raise ConnectionError("an error after the response began")
        if status >= 500:
            log.error("internal error (HTTP)", exc_info=exc, extra={"fields": {"event": "internal_error"}})
            text = "internal error; the server log has the details"
        else:
            text = next((why for kind, why in PARSER_ERRORS if isinstance(exc, kind)), "a malformed HTTP request")
            log.warning("bad HTTP request", extra={"fields": {"event": "bad_http_request", "status": status,
                                                              "error": text, "peer": request.remote}})
        code = http_error_code(status, "error") if status != 400 else grpc.StatusCode.INVALID_ARGUMENT.name
        resp = web.json_response({"code": code, "message": f"request: {text}"}, status=status,
                                 headers={"X-Content-Type-Options": "nosniff"})
        resp.force_close()
        return resp


class _JsonErrorsServer(web.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _JsonErrorsHandler(self, loop=self._loop, **self._kwargs)


def to_json(resp: Any, frames: list | None = None) -> bytes:
    """A response message (or Interpolate's frames, as {"frames": [...]}) in the proto3 JSON mapping."""
    def one(m):
        return json_format.MessageToDict(m, preserving_proto_field_name=True)

    return json.dumps({"frames": [one(f) for f in frames]} if frames is not None else one(resp)).encode()


# ---- the OpenAPI description, made from the .proto's messages: it cannot drift from them ------------------------

_SCALARS = {
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"}, FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte", "description": "base64"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"}, FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "minimum": 0}, FieldDescriptor.TYPE_INT32: {"type": "integer"},
    # proto3 JSON writes 64-bit integers as strings; it reads either
    FieldDescriptor.TYPE_UINT64: {"type": ["integer", "string"]}, FieldDescriptor.TYPE_INT64: {"type": ["integer",
                                                                                                          "string"]},
}
_SUMMARIES = {
    "Encode": "Images -> w [N, D]", "Decode": "w [N, D] or styles [N, 2L, D] -> images",
    "Reconstruct": "Images -> E -> G -> images (return_psnr: and their PSNR)",
    "Generate": "Seeds or z -> F -> truncation -> G -> images",
    "Edit": "Move latents along named or given W directions and decode them",
    "Mix": "Style mixing: style inputs < cutoff from a, the rest from b",
    "Interpolate": "Linear interpolation in W from a to b: {\"frames\": [InterpolateFrame, ...]}",
}


def _schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = {}

    def add(desc: Descriptor) -> None:
        if desc.name in schemas:
            return
        props = schemas.setdefault(desc.name, {"type": "object", "additionalProperties": False, "properties": {}})
        for f in desc.fields:
            if f.type == FieldDescriptor.TYPE_MESSAGE:
                add(f.message_type)
                item: dict[str, Any] = {"$ref": f"#/components/schemas/{f.message_type.name}"}
            elif f.type == FieldDescriptor.TYPE_ENUM:
                item = {"type": "string", "enum": [v.name for v in f.enum_type.values]}
            else:
                item = dict(_SCALARS[f.type])
            props["properties"][f.name] = {"type": "array", "items": item} if f.is_repeated else item

    for desc in pb.DESCRIPTOR.message_types_by_name.values():
        add(desc)
    schemas["InterpolateFrames"] = {"type": "object", "properties": {
        "frames": {"type": "array", "items": {"$ref": "#/components/schemas/InterpolateFrame"}}}}
    schemas["Error"] = {"type": "object", "properties": {
        "code": {"type": "string", "description": "the gRPC status code's name"},
        "message": {"type": "string", "description": "names the request field, as over gRPC"}}}
    schemas["Health"] = {"type": "object", "properties": {"status": {"enum": ["SERVING", "NOT_SERVING"]}}}
    return schemas


def openapi_description() -> dict[str, Any]:
    """OpenAPI 3.1 for the HTTP API: one path per RPC, schemas from the message descriptors."""
    from alae_rt import __version__

    def ref(name: str) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{name}"}

    def json_of(name: str) -> dict[str, Any]:
        return {"application/json": {"schema": ref(name)}}

    errors = {str(code): {"description": why, "content": json_of("Error")} for code, why in (
        (400, "bad input: the message names the field"), (401, "missing or invalid bearer token"),
        (421, "the Host header names neither this server nor localhost (--http-allowed-hosts)"),
        (408, "the body did not arrive within --http-body-timeout-s"),
        (413, "over a server limit (images, pixels, bytes)"), (429, "a queue is full: retry later"),
        (503, "warming up or shutting down"), (504, "the X-Timeout-Ms deadline passed before compute"))}
    service = pb.DESCRIPTOR.services_by_name["Alae"]
    paths: dict[str, Any] = {}
    for path, method in RPCS.items():
        rpc = service.methods_by_name[method]
        body = json_of(rpc.input_type.name)
        if method in IMAGE_BODY:
            body["image/*"] = {"schema": {"type": "string", "format": "binary"}}
        answer = json_of("InterpolateFrames" if method == "Interpolate" else rpc.output_type.name)
        if method != "Encode":
            answer.update({kind: {"schema": {"type": "string", "format": "binary"}} for kind in ACCEPT_IMAGE})
        paths[f"{API}/{path}"] = {"post": {
            "operationId": method, "summary": _SUMMARIES[method], "requestBody": {"required": True, "content": body},
            "parameters": [{"name": TIMEOUT_HEADER, "in": "header", "required": False, "schema": {"type": "number"},
                            "description": "deadline in milliseconds (gRPC's timeout)"}],
            "responses": {"200": {"description": "the response message (Accept: image/png or image/jpeg: the "
                                                 "first image as a file)", "content": answer}, **errors}}}
    paths[f"{API}/info"] = {"get": {"operationId": "GetModelInfo", "summary": "The model and the server's limits",
                                    "responses": {"200": {"description": "ModelInfo", "content": json_of("ModelInfo")},
                                                  "401": errors["401"], "421": errors["421"]}}}
    paths[f"{API}/health"] = {"get": {"operationId": "Health", "summary": "gRPC health's status (no token needed)",
                                      "security": [], "responses": {
                                          "200": {"description": "serving", "content": json_of("Health")},
                                          "503": {"description": "not serving", "content": json_of("Health")}}}}
    paths[f"{API}/samples"] = {"get": {"operationId": "Samples",
                                       "summary": "The sample faces' names (--sample-faces, else the bundled ones)",
                                       "responses": {"200": {"description": "{\"samples\": [name, ...]}"},
                                                     "401": errors["401"], "421": errors["421"]}}}
    paths[API + "/samples/{name}"] = {"get": {
        "operationId": "Sample", "summary": "One sample face's image file",
        "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": {"description": "the image file"}, "401": errors["401"], "421": errors["421"],
                      "404": {"description": "no such sample", "content": json_of("Error")}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "alae-rt HTTP API", "version": __version__, "description": (
            "The alae_rt.v1.Alae RPCs over HTTP: request and response messages in the proto3 JSON mapping (field "
            "names as in alae_rt.proto, bytes as base64, enums by name). Same batchers, limits and errors as gRPC.")},
        "paths": paths,
        "components": {"schemas": _schemas(),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
    }
