"""gRPC serving: the alae_rt.v1 service, the dynamic batcher, the server and its client.

config (ServeConfig, its checks, the token file), requests (request messages -> Runtime arguments), service (the
RPCs and the one wrapper around each), auth (bearer tokens), server (lifecycle), logs, wire (messages <-> arrays,
responses in wire form), decoding (the request-image stage), codec_processes (PNG in worker processes), processes
(several server processes on one port), batcher, metrics, client, http_api (the HTTP API and the editor),
simulated (a stand-in model for benchmarks). Every rule about a request's values is the Runtime's; these modules
add transport.

The top-level `serve/` folder is a link to this one (pyproject.toml lists the package).
"""
