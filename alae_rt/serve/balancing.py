"""gRPC's own client-side load balancing across several `alae-rt serve` processes (no proxy to install): round robin
over their addresses, health checking, and retries of UNAVAILABLE on another server.

A server that drains (SIGTERM) or is overloaded says NOT_SERVING on grpc.health.v1, and the channel stops sending it
new calls; a call that reached it while it was already refusing (UNAVAILABLE) is tried again by the channel itself,
on a server that is serving. Every call is a pure function of its request, so a retry gives what the first try
would have."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import grpc

from alae_rt.errors import AlaeError
from alae_rt.serve import alae_rt_pb2 as pb
from alae_rt.serve import alae_rt_pb2_grpc as pb_grpc
from alae_rt.serve.client import AlaeClient

SERVICE = pb.DESCRIPTOR.services_by_name["Alae"].full_name
# The channel's own retries of UNAVAILABLE: up to this many tries, waits from 0.1 s doubling to 1 s (gRPC caps tries
# at 5).
RETRY_POLICY = {"maxAttempts": 5, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"]}


def service_config(retries: bool = True) -> str:
    """The channel's service config: round robin over every address, each watched on grpc.health.v1 for
    alae_rt.v1.Alae (NOT_SERVING: no new calls), and retries of UNAVAILABLE."""
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}],
                              "healthCheckConfig": {"serviceName": SERVICE}}
    if retries:
        config["methodConfig"] = [{"name": [{"service": SERVICE}], "retryPolicy": RETRY_POLICY}]
    return json.dumps(config)


def balanced_target(servers: Sequence[str]) -> str:
    """HOST:PORT addresses -> one gRPC target over all of them ("ipv4:1.2.3.4:50051,1.2.3.5:50051"). A single
    DNS name whose records list every server is a target already: dns:///alae.internal:50051."""
    if not servers:
        raise AlaeError("no servers to balance over")
    hosts = [s.rpartition(":")[0].strip("[]") for s in servers]
    if all(h.count(".") == 3 and h.replace(".", "").isdigit() for h in hosts):
        return "ipv4:" + ",".join(servers)
    if all(":" in h for h in hosts):
        return "ipv6:" + ",".join(s if s.startswith("[") else f"[{h}]:{s.rpartition(':')[2]}"
                                  for s, h in zip(servers, hosts))
    raise AlaeError(f"{', '.join(servers)}: give IP addresses (one family), or one DNS name whose records list every "
                    "server (dns:///NAME:PORT)")


class BalancedClient(AlaeClient):
    """AlaeClient over several servers: `BalancedClient(["10.0.0.1:50051", "10.0.0.2:50051"])` (or one dns:///
    target). Calls go round robin to the servers whose health says SERVING; retry_s adds the client's own retries
    (for when every server is unavailable for a while) to the channel's."""

    def __init__(self, servers: Sequence[str] | str, **kwargs: Any):
        target = servers if isinstance(servers, str) else balanced_target(servers)
        super(AlaeClient, self).__init__(target, **kwargs)  # the settings; the channel is made here, balanced
        self._options.append(("grpc.service_config", service_config()))
        self.channel = (grpc.secure_channel(target, self._creds, options=self._options) if self._tls
                        else grpc.insecure_channel(target, options=self._options))
        self.stub = pb_grpc.AlaeStub(self.channel)
