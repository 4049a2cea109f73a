"""Bearer-token authentication: a server interceptor that refuses calls without one of the tokens."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence

import grpc

HEALTH_EXEMPT = "/grpc.health.v1.Health/"  # load balancers probe health without credentials


class BearerAuth(grpc.aio.ServerInterceptor):
    """Lets a call through only with `authorization: Bearer <token>` for one of the tokens (health is exempt)."""

    def __init__(self, tokens: Sequence[str], on_reject: Callable[[str], None] | None = None):
        self._tokens = [t.encode() for t in tokens]
        self._on_reject = on_reject

    def _ok(self, metadata) -> bool:
        return self.accepts(next((v for k, v in metadata or () if k == "authorization"), ""))

    def accepts(self, value: str | bytes) -> bool:
        """Whether an authorization value ("Bearer <token>": gRPC metadata, or the HTTP API's header) is good."""
        return token_index(value, self._tokens) is not None

    async def intercept_service(self, continuation, details):
        if details.method.startswith(HEALTH_EXEMPT) or self._ok(details.invocation_metadata):
            return await continuation(details)
        handler = await continuation(details)
        if handler is None:
            return None
        if self._on_reject:
            self._on_reject(details.method)
        message = "missing or invalid bearer token (send metadata 'authorization: Bearer <token>')"

        async def deny(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        async def deny_stream(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
            yield  # an async generator, like the streaming handler it stands in for

        kinds = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }
        make = kinds[(handler.request_streaming, handler.response_streaming)]
        # gRPC has read the message by now (--max-message-mb bounds it); it is refused unparsed.
        return make(deny_stream if handler.response_streaming else deny, request_deserializer=_unread,
                    response_serializer=handler.response_serializer)


def token_index(value: str | bytes, tokens: Sequence[bytes]) -> int | None:
    """Which of `tokens` an authorization value ("Bearer <token>") presents, or None: the caller's identity."""
    scheme, _, token = (value if isinstance(value, str) else value.decode(errors="replace")).partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    given = token.strip().encode()
    # compare_digest against every token: the time taken does not tell which one (or how much) matched
    matches = [hmac.compare_digest(given, t) for t in tokens]
    return matches.index(True) if any(matches) else None


def _unread(data: bytes) -> None:
    return None
