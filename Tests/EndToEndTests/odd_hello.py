"""A TLS handshake the proxy cannot read, through a CONNECT tunnel: the proxy must not let a server name it could not
judge reach a server that can read it.

usage: odd_hello.py PROXY_PORT ORIGIN_PORT SNI MODE
  empty-record  an empty handshake record, then a real ClientHello (Python's OpenSSL, SNI as given): OpenSSL servers
                accept the empty record, RFC 8446 §5.1 forbids it, the proxy's parser refuses it
  too-large     a ClientHello of 70,000 bytes, in records of 16 KiB (past the proxy's 64 KiB limit)

Prints the CONNECT status line, then, after sending, "CLOSED" when the proxy closed the tunnel without a byte of
answer, or "ANSWERED <n> bytes" when something (the server's handshake) came back.
"""
import ssl
import sys

from proxy_tunnel import open_tunnel


def client_hello(sni):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=sni)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def too_large():
    body = b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00" * (70000 - 35)
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    records = b""
    for start in range(0, len(message), 16384):
        fragment = message[start:start + 16384]
        records += b"\x16\x03\x01" + len(fragment).to_bytes(2, "big") + fragment
    return records


def main():
    proxy_port, origin_port, sni, mode = sys.argv[1:5]
    sock, status = open_tunnel(proxy_port, "127.0.0.1", origin_port)
    print(status, flush=True)
    if sock is None:
        return
    if mode == "empty-record":
        payload = b"\x16\x03\x01\x00\x00" + client_hello(sni)
    elif mode == "too-large":
        payload = too_large()
    else:
        raise SystemExit(f"unknown mode {mode}")
    try:
        sock.sendall(payload)
        data = sock.recv(65536)
    except OSError as error:
        print(f"CLOSED {type(error).__name__}")
        return
    print("CLOSED" if not data else f"ANSWERED {len(data)} bytes")


if __name__ == "__main__":
    main()
