"""gRPC's own xDS client resolves a service through identityd's xDS server.

usage: grpc_xds_client.py XDS_HOST:PORT SERVER_PORT TARGET
Starts a gRPC echo server on 127.0.0.1:SERVER_PORT, points a client at xds:///TARGET with a
GRPC_XDS_BOOTSTRAP naming the xDS server, makes a call and prints "OK <reply>".
"""
import json
import os
import sys
import tempfile
from concurrent import futures

xds, server_port, target = sys.argv[1], int(sys.argv[2]), sys.argv[3]
boot = {
    "xds_servers": [{"server_uri": xds, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
    "node": {"id": "grpc-client", "cluster": "identityd-test", "locality": {}},
}
fd, path = tempfile.mkstemp(suffix=".json")
with os.fdopen(fd, "w") as f:
    json.dump(boot, f)
os.environ["GRPC_XDS_BOOTSTRAP"] = path

import grpc  # noqa: E402  (after GRPC_XDS_BOOTSTRAP is set)

ident = lambda b: b  # noqa: E731
server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
server.add_generic_rpc_handlers(
    (
        grpc.method_handlers_generic_handler(
            "identityd.test.Echo",
            {"Say": grpc.unary_unary_rpc_method_handler(lambda req, ctx: b"echo:" + req, ident, ident)},
        ),
    )
)
server.add_insecure_port(f"127.0.0.1:{server_port}")
server.start()

channel = grpc.insecure_channel(f"xds:///{target}")
say = channel.unary_unary("/identityd.test.Echo/Say", request_serializer=ident, response_deserializer=ident)
try:
    reply = say(b"hello", timeout=20, wait_for_ready=True)
    print("OK " + reply.decode())
except grpc.RpcError as e:
    print(f"FAIL {e.code()} {e.details()}")
    sys.exit(1)
finally:
    server.stop(0)
    os.unlink(path)
