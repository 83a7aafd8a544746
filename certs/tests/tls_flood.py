#!/usr/bin/env python3
"""An anonymous TLS connection flood against the CA service: opens COUNT TLS connections to
HOST:PORT (no client certificate, the CA not verified: the attacker needs nothing), each from
its own loopback source address when --spread is given (127.1.x.y), else all from SOURCE, and
keeps every one it got idle. Stops early after 20 timeouts in a row (the CA accepts nothing
any more). Prints `held N refused M` once done, then holds them until stdin
closes. Used by certs/tests/ca_limits.rs."""
import argparse
import resource
import socket
import ssl
import sys

p = argparse.ArgumentParser()
p.add_argument("addr")
p.add_argument("count", type=int)
p.add_argument("--source", default="127.2.0.1")
p.add_argument("--spread", action="store_true")
a = p.parse_args()
host, port = a.addr.rsplit(":", 1)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, a.count + 256)), hard))
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["h2"])
held, refused, timeouts_in_a_row = [], 0, 0
for i in range(a.count):
    src = f"127.1.{i // 250}.{i % 250 + 1}" if a.spread else a.source
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.bind((src, 0))
        s.connect((host, int(port)))
        t = ctx.wrap_socket(s)
        # A connection refused at admission is closed right after accept: the handshake or
        # this first read sees the end.
        t.settimeout(0.05)
        try:
            if t.recv(1) == b"":
                raise ConnectionError("closed")
        except (TimeoutError, socket.timeout, ssl.SSLWantReadError):
            pass
        held.append(t)
        timeouts_in_a_row = 0
    except (TimeoutError, socket.timeout):
        # The CA no longer accepts at all (out of descriptors): stop after a while.
        s.close()
        refused += 1
        timeouts_in_a_row += 1
        if timeouts_in_a_row >= 20:
            break
    except (OSError, ssl.SSLError, ConnectionError):
        s.close()
        refused += 1
        timeouts_in_a_row = 0
print(f"held {len(held)} refused {refused}", flush=True)
sys.stdin.read()
