"""gRPC serving: the alae_rt.v1 service, the dynamic batcher, the server and its client."""
