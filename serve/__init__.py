"""gRPC serving: the alae_rt.v1 service, the dynamic batcher, the server and its client.

Installed as `alae_rt.serve`: alae_rt/serve is a link to this folder (pyproject.toml lists the package).
"""
