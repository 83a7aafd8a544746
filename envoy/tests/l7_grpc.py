"""gRPC peer for the l7 ingress test (grpcio from the project venv; no generated code).

usage:
  l7_grpc.py server                      serve /echo.Echo/Say on 127.0.0.1:<ephemeral>, print
                                         "PORT <n>", run until stdin closes
  l7_grpc.py client ADDR METHOD AUTHORITY [CA_PEM]
                                         call METHOD (e.g. /echo.Echo/Say) on ADDR with
                                         :authority AUTHORITY, over TLS verifying the server
                                         certificate for AUTHORITY against CA_PEM when given,
                                         else plaintext (h2c); print
                                         "OK <reply>" or "ERR <status code name> <details>"
"""
import sys
from concurrent import futures

import grpc


def ident(b):
    return b


def serve():
    def say(request, context):
        return b"echo:" + request

    handler = grpc.method_handlers_generic_handler(
        "echo.Echo",
        {"Say": grpc.unary_unary_rpc_method_handler(say, request_deserializer=ident, response_serializer=ident)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    sys.stdin.read()
    server.stop(0)


def client(addr, method, server_name, ca=None):
    if ca:
        with open(ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        channel = grpc.secure_channel(addr, creds, options=[("grpc.ssl_target_name_override", server_name)])
    else:
        channel = grpc.insecure_channel(addr, options=[("grpc.default_authority", server_name)])
    call = channel.unary_unary(method, request_serializer=ident, response_deserializer=ident)
    try:
        reply = call(b"hello", timeout=10)
        print("OK " + reply.decode(), flush=True)
    except grpc.RpcError as e:
        print(f"ERR {e.code().name} {e.details()}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve()
    else:
        client(*sys.argv[2:])
