"""gRPC peer for the l7 ingress test (grpcio from the project venv; no generated code).

usage:
  l7_grpc.py server [HOST [NAME]]        serve /echo.Echo/Say (reply "NAME:<request>", NAME
                                         default "echo") on HOST (default 127.0.0.1):<ephemeral>,
                                         print "PORT <n>", run until stdin closes
  l7_grpc.py client ADDR METHOD AUTHORITY [CA_PEM|- [N]]
                                         call METHOD (e.g. /echo.Echo/Say) on ADDR with
                                         :authority AUTHORITY, over TLS verifying the server
                                         certificate for AUTHORITY against CA_PEM when given,
                                         else plaintext (h2c); print
                                         "OK <reply>" or "ERR <status code name> <details>";
                                         with N, make N calls and also print "COUNT <reply> <n>"
"""
import sys
from concurrent import futures

import grpc


def ident(b):
    return b


def serve(host="127.0.0.1", name="echo"):
    def say(request, context):
        return name.encode() + b":" + request

    handler = grpc.method_handlers_generic_handler(
        "echo.Echo",
        {"Say": grpc.unary_unary_rpc_method_handler(say, request_deserializer=ident, response_serializer=ident)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"{host}:0")
    server.start()
    print(f"PORT {port}", flush=True)
    sys.stdin.read()
    server.stop(0)


def client(addr, method, server_name, ca=None, n="1"):
    if ca and ca != "-":
        with open(ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        channel = grpc.secure_channel(addr, creds, options=[("grpc.ssl_target_name_override", server_name)])
    else:
        channel = grpc.insecure_channel(addr, options=[("grpc.default_authority", server_name)])
    call = channel.unary_unary(method, request_serializer=ident, response_deserializer=ident)
    counts = {}
    for i in range(int(n)):
        try:
            reply = call(b"hello", timeout=10).decode()
            if i == 0:
                print("OK " + reply, flush=True)
        except grpc.RpcError as e:
            reply = f"ERR {e.code().name}"
            if i == 0:
                print(f"ERR {e.code().name} {e.details()}", flush=True)
        counts[reply] = counts.get(reply, 0) + 1
    if int(n) > 1:
        for reply, c in sorted(counts.items()):
            print(f"COUNT {reply} {c}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(*sys.argv[2:])
    else:
        client(*sys.argv[2:])
