"""gRPC serving: the alae_rt.v1 service, the dynamic batcher, the server and its client.

config (ServeConfig, its checks, the token file), requests (request messages -> Runtime arguments), service (the
RPCs and the one wrapper around each), auth (bearer tokens), server (lifecycle), logs, wire (messages <-> arrays),
batcher, metrics, client. Every rule about a request's values is the Runtime's; these modules add transport.

Installed as `alae_rt.serve`: alae_rt/serve is a link to this folder (pyproject.toml lists the package).
"""
